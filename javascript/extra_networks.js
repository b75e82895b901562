// The Extra Networks cards (modules/ui/extra_networks*.py): a click on a card adds its text to the prompt of
// its tab, or removes it when it is there already (A1111's toggle); its edit button opens the edit dialog.
// Event delegation on document: the cards are re-rendered by the server on every search, sort and refresh.
(() => {
    "use strict";
    const lastPromptBox = {};  // tabname -> "prompt" | "neg_prompt": the box a negative-capable card fills
    // `<type:name:args>`; the key of a tag is "type:name", whatever its weight
    const TAG = /<([^:<>]+:[^:<>]+)(?::[^<>]*)?>/;
    const TAGS = new RegExp(TAG.source, "g");

    function separator() {
        const value = typeof opts === "object" && opts !== null ? opts.extra_networks_add_text_separator : undefined;
        return typeof value === "string" ? value : " ";
    }

    function promptArea(tab, which) {
        return document.querySelector(`#${tab}_${which} textarea`);
    }

    function setValue(area, value) {
        area.value = value;
        area.dispatchEvent(new Event("input", { bubbles: true }));  // gradio reads the box's value on input
    }

    // `value` without value[start:end], and without the separator or comma that joined it to the rest:
    // "a, X, b" -> "a, b"; "a X b" -> "a b"; "a, X" -> "a"; "X, b" -> "b".
    function cut(value, start, end, sep) {
        let left = value.slice(0, start);
        let right = value.slice(end);
        if (/^\s*,\s*/.test(right)) right = right.replace(/^\s*,\s*/, "");
        else if (right === "") left = left.replace(/[\s,]+$/, "");
        else if (sep && left.endsWith(sep)) left = left.slice(0, left.length - sep.length);
        if (left === "") right = right.replace(/^[\s,]+/, "");
        return left + right;
    }

    // Remove every `<type:name:...>` with the key of `text`'s tag, with the activation text after it and the
    // separator before it. Returns the new value, or null when the tag was not there.
    function removeTag(value, text, sep) {
        const head = TAG.exec(text);
        if (head === null || head.index !== 0) return null;
        const after = text.slice(head[0].length);
        let removed = false;
        for (;;) {
            let match = null;
            for (const m of value.matchAll(TAGS)) {
                if (m[1] === head[1]) { match = m; break; }
            }
            if (match === null) break;
            let end = match.index + match[0].length;
            if (after && value.startsWith(after, end)) end += after.length;
            value = cut(value, match.index, end, sep);
            removed = true;
        }
        return removed ? value : null;
    }

    // Remove `text` where it stands as a whole (between separators, commas or brackets), with the separator
    // before it. Returns the new value, or null when it was not there.
    function removePlain(value, text, sep) {
        if (!text) return null;
        let removed = false;
        let index = value.indexOf(text);
        while (index >= 0) {
            const end = index + text.length;
            const startsClean = index === 0 || /[\s,([{|]/.test(value[index - 1]);
            const endsClean = end === value.length || /[\s,)\]}|:]/.test(value[end]);
            if (startsClean && endsClean) {
                value = cut(value, index, end, sep);
                removed = true;
                index = value.indexOf(text);
            } else {
                index = value.indexOf(text, index + 1);
            }
        }
        return removed ? value : null;
    }

    function toggle(area, text) {
        if (area === null || !text) return;
        const sep = separator();
        const value = area.value;
        const without = TAG.test(text) && TAG.exec(text).index === 0 ? removeTag(value, text, sep)
            : removePlain(value, text, sep);
        if (without !== null) {
            setValue(area, without);
        } else {
            setValue(area, value === "" || /\s$/.test(value) ? value + text : value + sep + text);
        }
    }

    function cardClicked(tab, card) {
        const prompt = card.dataset.prompt || "";
        const negative = card.dataset.neg || "";
        if (negative) {
            toggle(promptArea(tab, "prompt"), prompt);
            toggle(promptArea(tab, "neg_prompt"), negative);
            return;
        }
        const which = card.dataset.allowNeg === "true" && lastPromptBox[tab] === "neg_prompt" ? "neg_prompt" : "prompt";
        toggle(promptArea(tab, which), prompt);
    }

    // The edit dialog is gradio's: hand it the item's name through its hidden box, then press its hidden button.
    function openEditor(tab, page, item) {
        const id = `${tab}_${page}_edit_user_metadata`;
        const box = document.querySelector(`#${id}_name textarea, #${id}_name input`);
        const button = document.getElementById(`${id}_button`);
        if (box === null || button === null) return;
        setValue(box, item);
        setTimeout(() => button.click(), 0);  // after gradio took the new value
    }

    document.addEventListener("focusin", (event) => {
        const target = event.target;
        if (!(target instanceof Element)) return;
        for (const tab of ["txt2img", "img2img"]) {
            if (target.closest(`#${tab}_prompt`)) lastPromptBox[tab] = "prompt";
            else if (target.closest(`#${tab}_neg_prompt`)) lastPromptBox[tab] = "neg_prompt";
        }
    });

    document.addEventListener("click", (event) => {
        const target = event.target;
        if (!(target instanceof Element)) return;
        const card = target.closest(".extra-network-cards .card");
        if (card === null) return;
        const cards = card.closest(".extra-network-cards");
        const tab = cards.dataset.tabname;
        if (target.closest(".edit-button")) {
            event.stopPropagation();
            openEditor(tab, cards.dataset.page, card.dataset.item);
            return;
        }
        cardClicked(tab, card);
    });

    window.extraNetworksToggle = { removeTag, removePlain };  // for tests and extensions
})();
