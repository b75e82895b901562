// Page behaviour gradio has no widget for: keyboard shortcuts, "generate forever", button hints.
// Everything is event delegation on document, so it works whenever gradio (re)renders the elements.
(() => {
    "use strict";
    const TABS = ["txt2img", "img2img"];
    const forever = {};
    window.studioForever = forever;

    const visible = (el) => el !== null && el.offsetParent !== null;
    const byId = (id) => document.getElementById(id);

    function activeTab() {
        for (const tab of TABS) {
            if (visible(byId(`${tab}_generate`))) return tab;
        }
        return null;
    }

    function click(id) {
        const button = byId(id);
        if (button !== null) button.click();
    }

    // Ctrl+Enter (Cmd+Enter) generates, Alt+Enter skips, Esc interrupts: on the tab that is showing.
    document.addEventListener("keydown", (event) => {
        const tab = activeTab();
        if (tab === null) return;
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
            event.preventDefault();
            click(`${tab}_generate`);
        } else if (event.key === "Enter" && event.altKey) {
            event.preventDefault();
            click(`${tab}_skip`);
        } else if (event.key === "Escape" && document.querySelector(`#${tab}_progress .progressDiv`) !== null) {
            click(`${tab}_interrupt`);
        }
    });

    // Called by gradio after each generation ends (see modules/ui/generation.py).
    window.studioAfterGenerate = (tab) => {
        if (forever[tab]) setTimeout(() => { if (forever[tab]) click(`${tab}_generate`); }, 0);
    };

    let menu = null;
    function closeMenu() {
        if (menu !== null) { menu.remove(); menu = null; }
    }

    function openMenu(tab, x, y) {
        closeMenu();
        menu = document.createElement("div");
        menu.id = "context-menu";
        menu.className = "context-menu";
        const entries = [
            ["Generate forever", () => { forever[tab] = true; updateMarker(tab); click(`${tab}_generate`); }],
            ["Cancel generate forever", () => { forever[tab] = false; updateMarker(tab); }],
        ];
        for (const [label, action] of entries) {
            const item = document.createElement("button");
            item.type = "button";
            item.textContent = label;
            item.addEventListener("click", () => { closeMenu(); action(); });
            menu.appendChild(item);
        }
        menu.style.left = `${x}px`;
        menu.style.top = `${y}px`;
        document.body.appendChild(menu);
    }

    function updateMarker(tab) {
        const button = byId(`${tab}_generate`);
        if (button !== null) button.classList.toggle("forever", Boolean(forever[tab]));
    }

    // Right-click on Generate or Interrupt opens A1111's menu with "Generate forever" / "Cancel ...".
    document.addEventListener("contextmenu", (event) => {
        for (const tab of TABS) {
            const target = event.target.closest(`#${tab}_generate, #${tab}_interrupt`);
            if (target !== null) {
                event.preventDefault();
                openMenu(tab, event.pageX, event.pageY);
                return;
            }
        }
    });
    document.addEventListener("click", (event) => {
        if (menu !== null && !menu.contains(event.target)) closeMenu();
    });

    // The 🗑️ button's event (modules/ui/toprow.py), under A1111's global name: empties both prompts if confirmed.
    window.confirm_clear_prompt = (prompt, negative) => (
        window.confirm("Delete prompt?") ? ["", ""] : [prompt, negative]);
    // The styles editor's Delete (modules/ui/toprow.py): no name (null) when the question is cancelled.
    window.confirm_delete_style = (name) => (
        !name || !name.trim() || window.confirm(`Delete style ${name.trim()}?`) ? [name] : [null]);

    // Hover hints for the icon buttons.
    const hints = window.studioHints || {};
    new MutationObserver(() => {
        for (const [id, text] of Object.entries(hints)) {
            const el = byId(id);
            if (el !== null && !el.title) el.title = text;
        }
    }).observe(document.documentElement, { childList: true, subtree: true });
})();
