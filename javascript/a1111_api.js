// The page API that A1111 extensions' scripts use (A1111's script.js and the `opts` part of its ui.js).
// Loaded before any extension script. These are globals on purpose: extension code calls them by bare name.
//   gradioApp()                 the element the page lives in (querySelector/getElementById work on it)
//   onUiLoaded(cb)              once, after the page is built and `opts` is filled (late registrations run too)
//   onUiUpdate(cb)              after every batch of DOM changes, with the MutationRecords
//   onAfterUiUpdate(cb)         once the DOM has stopped changing for 200 ms
//   onUiTabChange(cb)           when the top-level tab changes
//   onOptionsChanged(cb)        when the settings changed on the server (after Apply settings / quicksettings)
//   onOptionsAvailable(cb)      once `opts` is filled (now, when it already is)
//   opts                        the server's settings, by key, read when the page loads
//   get_uiCurrentTab()          the selected top-level tab's button
//   get_uiCurrentTabContent()   the selected top-level tab's content element

/* eslint-disable no-unused-vars, no-var */
var opts = {};
var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiTabChangeCallbacks = [];
var optionsChangedCallbacks = [];
var optionsAvailableCallbacks = [];
var uiAfterUpdateTimeout = null;
var uiCurrentTab = null;
var executedOnLoaded = false;

function gradioApp() {
    const elems = document.getElementsByTagName("gradio-app");
    const elem = elems.length === 0 ? document : elems[0];
    if (elem !== document) {
        elem.getElementById = (id) => document.getElementById(id);
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

function executeCallbacks(queue, arg) {
    for (const callback of queue) {
        try {
            callback(arg);
        } catch (e) {
            console.error("error running callback", callback, ":", e);
        }
    }
}

function onUiUpdate(callback) {
    uiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
    uiAfterUpdateCallbacks.push(callback);
}

function onUiLoaded(callback) {
    // A script injected after the page was built (they load in parallel with it) still gets its call, once.
    if (executedOnLoaded) {
        setTimeout(() => executeCallbacks([callback]), 0);
        return;
    }
    uiLoadedCallbacks.push(callback);
}

function onUiTabChange(callback) {
    uiTabChangeCallbacks.push(callback);
}

function onOptionsChanged(callback) {
    optionsChangedCallbacks.push(callback);
}

function onOptionsAvailable(callback) {
    if (Object.keys(opts).length !== 0) {
        callback();
        return;
    }
    optionsAvailableCallbacks.push(callback);
}

// The top-level tabs are the gradio Tabs with elem_id "tabs"; nested tabs (img2img's, Settings') are not.
function topTabs() {
    return gradioApp().querySelector("#tabs");
}

function get_uiCurrentTab() {
    const tabs = topTabs();
    if (tabs === null) return null;
    for (const button of tabs.querySelectorAll("button[role='tab']")) {
        if (button.closest(".tabs") === tabs && button.getAttribute("aria-selected") === "true"
            && button.offsetParent !== null) {
            return button;
        }
    }
    return null;
}

function get_uiCurrentTabContent() {
    const tabs = topTabs();
    if (tabs === null) return null;
    for (const item of tabs.querySelectorAll(".tabitem[id^='tab_']")) {
        if (item.closest(".tabs") === tabs && item.offsetParent !== null) return item;
    }
    return null;
}

(() => {
    "use strict";
    const AFTER_UPDATE_DELAY = 200; // ms, as in A1111
    let optsSettled = false;
    let optsText = null;
    let optsCheckPending = 0; // how many more UI updates may still show the result of a settings change
    let optsTimers = [];
    const OPTS_RECHECK_AFTER = [300, 1000, 2500, 5000, 10000]; // ms after a settings control was used

    function fillOpts(data) {
        for (const key of Object.keys(opts)) delete opts[key]; // in place: scripts may hold the object
        Object.assign(opts, data);
    }

    async function fetchOpts() {
        const response = await fetch("internal/opts", {credentials: "same-origin", cache: "no-store"});
        if (!response.ok) throw new Error(`settings: HTTP ${response.status}`);
        return response.text();
    }

    function loadOpts() {
        fetchOpts().then((text) => {
            optsText = text;
            fillOpts(JSON.parse(text));
            executeCallbacks(optionsAvailableCallbacks);
            optionsAvailableCallbacks = [];
        }).catch((e) => {
            console.error("could not read the settings for `opts`:", e);
        }).finally(() => {
            optsSettled = true;
            checkLoaded();
        });
    }

    function recheckOpts() {
        fetchOpts().then((text) => {
            if (text === optsText) return;
            optsText = text;
            optsCheckPending = 0;
            optsTimers.forEach(clearTimeout);
            optsTimers = [];
            fillOpts(JSON.parse(text));
            executeCallbacks(optionsChangedCallbacks);
        }).catch((e) => console.error("could not re-read the settings:", e));
    }

    // A settings control was used: the server may save now or after a model load. Look again after the next
    // few quiet moments of the page and at a few fixed times (a save may change nothing on the page).
    function expectOptsChange() {
        optsCheckPending = 3;
        optsTimers.forEach(clearTimeout);
        optsTimers = OPTS_RECHECK_AFTER.map((ms) => setTimeout(recheckOpts, ms));
    }

    function checkLoaded() {
        if (executedOnLoaded || !optsSettled || gradioApp().querySelector("#txt2img_prompt") === null) return;
        executedOnLoaded = true;
        const callbacks = uiLoadedCallbacks;
        uiLoadedCallbacks = [];
        executeCallbacks(callbacks);
    }

    function scheduleAfterUiUpdateCallbacks() {
        clearTimeout(uiAfterUpdateTimeout);
        uiAfterUpdateTimeout = setTimeout(() => {
            executeCallbacks(uiAfterUpdateCallbacks);
            if (optsCheckPending > 0) {
                optsCheckPending -= 1;
                recheckOpts();
            }
        }, AFTER_UPDATE_DELAY);
    }

    // Settings change through the Settings tab's Apply and the quicksettings bar; scripts hear of it when the
    // server's settings differ from `opts`.
    const SETTINGS_CONTROLS = "#settings_submit, #quicksettings";
    for (const type of ["click", "change", "pointerup", "keyup"]) {
        document.addEventListener(type, (event) => {
            if (event.target instanceof Element && event.target.closest(SETTINGS_CONTROLS)) expectOptsChange();
        }, true);
    }

    function checkTab() {
        const newTab = get_uiCurrentTab();
        if (newTab && newTab !== uiCurrentTab) {
            uiCurrentTab = newTab;
            executeCallbacks(uiTabChangeCallbacks);
        }
    }

    function start() {
        const root = gradioApp();
        const observed = root === document ? document.body : root;
        new MutationObserver((mutations) => {
            checkLoaded();
            executeCallbacks(uiUpdateCallbacks, mutations);
            scheduleAfterUiUpdateCallbacks();
            checkTab();
        }).observe(observed, {childList: true, subtree: true});
        // Switching to a tab that is already rendered may change attributes only: watch the selection itself.
        new MutationObserver(checkTab).observe(observed, {attributes: true, attributeFilter: ["aria-selected"],
                                                          subtree: true});
        checkLoaded();
    }

    loadOpts();
    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
