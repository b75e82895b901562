// A number typed beyond a slider's range is clamped by the page (width 100000 becomes 2048). Say so next to the
// field, in one line, so the person knows the picture will not be the size they typed.
(() => {
    "use strict";

    function fieldName(input) {
        const block = input.closest(".block");
        const label = block && block.querySelector("[data-testid=block-info], label span, .label");
        return label ? label.textContent.trim() : "This value";
    }

    function noteFor(input) {
        const block = input.closest(".block");
        if (block === null) return null;
        let note = block.querySelector(".clamp-note");
        if (note === null) {
            note = document.createElement("div");
            note.className = "clamp-note";
            note.setAttribute("role", "status");
            block.appendChild(note);
        }
        return note;
    }

    function check(input) {
        const typed = Number(input.value);
        const min = input.min === "" ? -Infinity : Number(input.min);
        const max = input.max === "" ? Infinity : Number(input.max);
        const note = noteFor(input);
        if (note === null) return;
        if (input.value === "" || Number.isNaN(typed) || (typed >= min && typed <= max)) {
            note.textContent = "";
            return;
        }
        const limit = typed > max ? max : min;
        const which = typed > max ? "more than the largest allowed" : "less than the smallest allowed";
        note.textContent = `${fieldName(input)}: ${input.value} is ${which}, ${limit}; ${limit} is used instead.`;
    }

    // Capture phase: runs before gradio clamps the box on the same event.
    for (const type of ["change", "keydown"]) {
        document.addEventListener(type, (event) => {
            const input = event.target;
            if (!(input instanceof HTMLInputElement) || input.type !== "number") return;
            if (type === "keydown" && event.key !== "Enter") return;
            check(input);
        }, true);
    }
    document.addEventListener("input", (event) => {
        const input = event.target;
        if (input instanceof HTMLInputElement && input.type === "number") {
            const note = input.closest(".block")?.querySelector(".clamp-note");
            if (note) note.textContent = "";  // a new value is being typed: the old note no longer applies
        }
    }, true);
})();
