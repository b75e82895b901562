// The Extensions tab's "Available" table (modules/ui/extensions_tab.py, modules/extension_index.py): a row's
// Install button hands its URL to gradio through a hidden box, then presses the hidden Install button; the server
// checks that URL as it checks one typed into "Install from URL". Event delegation on document: the table is
// re-rendered by the server on every load, filter and search.
(() => {
    "use strict";
    document.addEventListener("click", (event) => {
        const target = event.target;
        if (!(target instanceof Element)) return;
        const row = target.closest("#extensions_available_html button.extension-install[data-url]");
        if (row === null) return;
        const box = document.querySelector(
            "#extensions_available_install_url textarea, #extensions_available_install_url input");
        const button = document.getElementById("extensions_available_install_button");
        if (box === null || button === null) return;
        box.value = row.dataset.url;
        box.dispatchEvent(new Event("input", { bubbles: true }));  // gradio reads the box's value on input
        row.disabled = true;  // one install per press; the re-rendered table says "Installed" when it is done
        row.textContent = "Installing…";
        setTimeout(() => button.click(), 0);  // after gradio took the new value
    });
})();
