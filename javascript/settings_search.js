// Settings' search box (modules/ui/settings.py): typing shows the settings whose label, info line or key holds the
// text, from every section at once, in the page (no request per keystroke); clearing it shows the sections again.
// gradio renders a tab's contents only once it is opened, so the first search opens every section's tab (in one
// go, then the one that was open again) and filters again as they render. Marks are data attributes, which
// style.css shows and hides by: gradio sets the elements' classes, never these.
(() => {
    "use strict";
    let query = "";
    let observed = null;  // the #settings element the observer watches (gradio renders it when Settings opens)
    let pending = false;

    function filter() {
        pending = false;
        const tabs = document.getElementById("settings");
        if (tabs === null) return;
        let found = 0;
        for (const section of tabs.querySelectorAll(":scope > .settings-section")) {
            let matches = 0;
            for (const item of section.querySelectorAll(".settings-item")) {
                const key = item.id.replace(/^setting_/, "");
                const match = (item.textContent + "\n" + key).toLowerCase().includes(query);
                item.toggleAttribute("data-nomatch", !match);
                matches += match ? 1 : 0;
            }
            section.toggleAttribute("data-nomatch", matches === 0);
            found += matches;
        }
        tabs.toggleAttribute("data-searching", query !== "");
        document.getElementById("settings_search_none")?.toggleAttribute("data-shown", query !== "" && found === 0);
    }

    function schedule() {
        if (!pending) {
            pending = true;
            requestAnimationFrame(filter);
        }
    }

    function renderEverySection(tabs) {
        const wrapper = tabs.querySelector(":scope > .tab-wrapper");
        if (wrapper === null) return;
        const buttons = wrapper.querySelectorAll("[role=tablist] button, .overflow-dropdown button");
        if (tabs.querySelectorAll(":scope > .tabitem").length >= buttons.length) return;  // all rendered already
        const open = wrapper.querySelector("[role=tablist] button[aria-selected=true]");
        // gradio updates the page after this loop: each click selects its own tab, the last one the open tab again
        for (const button of buttons) button.click();
        open?.click();
    }

    document.addEventListener("input", (event) => {
        const box = event.target;
        if (!(box instanceof HTMLInputElement || box instanceof HTMLTextAreaElement)) return;
        if (box.closest("#settings_search") === null) return;
        const tabs = document.getElementById("settings");
        if (tabs === null) return;
        query = box.value.trim().toLowerCase();
        if (observed !== tabs) {  // sections rendering after the first search are filtered as they come
            observed = tabs;
            new MutationObserver(() => { if (query !== "") schedule(); })
                .observe(tabs, { childList: true, subtree: true });
        }
        if (query !== "") renderEverySection(tabs);
        filter();
    });
})();
