"""The top row of txt2img and img2img: prompts with token counters, Generate / Interrupt / Skip, A1111's tool
buttons (↙️ paste parameters, 🗑️ clear prompt, 📋 apply styles), styles and A1111's 🖌️ styles editor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import extra_networks, script_callbacks, shared
from modules.ui import common, styles_store


@dataclass
class Toprow:
    tabname: str
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    token_counter: gr.HTML
    negative_token_counter: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    styles: gr.Dropdown
    style_name: gr.Textbox
    style_save: gr.Button
    style_result: gr.HTML
    paste: gr.Button  # wired by modules.ui.sendto, which holds each tab's paste fields
    clear_prompt: gr.Button
    style_apply: gr.Button
    paste_result: gr.HTML  # why ↙️ changed nothing
    editor: StylesEditor


@dataclass
class StylesEditor:
    """A1111's styles dialog (ui_prompt_styles.py), with its element ids: pick or type a style, edit its prompts."""
    open: gr.Button  # 🖌️
    dialog: gr.Group
    selection: gr.Dropdown  # an existing style, or a new name typed in
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    save: gr.Button
    delete: gr.Button
    close: gr.Button
    result: gr.HTML
    changed: list[Any] = field(default_factory=list)  # the events after which the styles files may have changed


def build(tabname: str) -> Toprow:
    with gr.Row(elem_id=f"{tabname}_toprow", elem_classes=["toprow"]):
        with gr.Column(scale=6, elem_classes=["prompts"]):
            prompt = gr.Textbox(label="Prompt", elem_id=f"{tabname}_prompt", lines=3, max_lines=20,
                                placeholder="Prompt (press Ctrl+Enter to generate, Alt+Enter to skip, "
                                            "Esc to interrupt)")
            counter = gr.HTML(counter_html(0, 75), elem_id=f"{tabname}_token_counter",
                              elem_classes=["token-counter"], padding=False)
            negative = gr.Textbox(label="Negative prompt", elem_id=f"{tabname}_neg_prompt", lines=2, max_lines=20,
                                  placeholder="Negative prompt")
            negative_counter = gr.HTML(counter_html(0, 75), elem_id=f"{tabname}_negative_token_counter",
                                       elem_classes=["token-counter"], padding=False)
        with gr.Column(scale=2, elem_classes=["actions"]):
            with gr.Row(elem_id=f"{tabname}_generate_box"):
                interrupt = gr.Button("Interrupt", elem_id=f"{tabname}_interrupt", variant="stop", min_width=60)
                skip = gr.Button("Skip", elem_id=f"{tabname}_skip", min_width=60)
                generate = gr.Button("Generate", elem_id=f"{tabname}_generate", variant="primary", min_width=120)
            # A1111's ids are `paste` on both tabs; ids must be unique here, so the tab prefix, and its class.
            with gr.Row(elem_id=f"{tabname}_tools"):
                paste = common.tool_button(common.PASTE, f"{tabname}_paste",
                                           "Read generation parameters from prompt or last generation if prompt is "
                                           "empty into user interface.", elem_classes=["paste"])
                clear_prompt = common.tool_button(common.CLEAR_PROMPT, f"{tabname}_clear_prompt", "Clear prompt")
                style_apply = common.tool_button(common.APPLY_STYLES, f"{tabname}_style_apply",
                                                 "Apply all selected styles to prompts")
            paste_result = gr.HTML("", elem_id=f"{tabname}_paste_result", elem_classes=["toprow-message"],
                                   padding=False)
            with gr.Row(elem_id=f"{tabname}_styles_row"):
                styles = gr.Dropdown(label="Styles", elem_id=f"{tabname}_styles", choices=styles_store.names(),
                                     value=[], multiselect=True, scale=4)
                edit = common.tool_button(common.EDIT_STYLES, f"{tabname}_styles_edit_button", "Edit styles")
            with gr.Row(elem_id=f"{tabname}_style_save_row"):
                style_name = gr.Textbox(label="Save prompts as style", elem_id=f"{tabname}_style_name",
                                        placeholder="style name", scale=4)
                style_save = common.tool_button(common.SAVE_STYLE, f"{tabname}_style_create",
                                                "Save the current prompt and negative prompt as a style")
            style_result = gr.HTML("", elem_id=f"{tabname}_style_result", elem_classes=["toprow-message"],
                                   padding=False)
    return Toprow(tabname, prompt, negative, counter, negative_counter, generate, interrupt, skip, styles,
                  style_name, style_save, style_result, paste, clear_prompt, style_apply, paste_result,
                  _build_editor(tabname, edit))


def _build_editor(tabname: str, edit: gr.Button) -> StylesEditor:
    with gr.Group(visible=False, elem_id=f"{tabname}_styles_dialog", elem_classes=["styles-dialog"]) as dialog:
        selection = gr.Dropdown(label="Style", elem_id=f"{tabname}_styles_edit_select", choices=styles_store.names(),
                                value=None, allow_custom_value=True,
                                info="Pick a style or type a new name. A {prompt} in a style's text is replaced "
                                     "by the prompt when the style is applied; otherwise the text is added at "
                                     "its end.")
        prompt = gr.Textbox(label="Prompt", elem_id=f"{tabname}_edit_style_prompt", lines=3)
        negative = gr.Textbox(label="Negative prompt", elem_id=f"{tabname}_edit_style_neg_prompt", lines=3)
        with gr.Row():
            save = gr.Button("Save", variant="primary", elem_id=f"{tabname}_edit_style_save")
            delete = gr.Button("Delete", variant="stop", elem_id=f"{tabname}_edit_style_delete")
            close = gr.Button("Close", elem_id=f"{tabname}_edit_style_close")
        result = gr.HTML("", elem_id=f"{tabname}_edit_style_result", elem_classes=["toprow-message"], padding=False)
    return StylesEditor(edit, dialog, selection, prompt, negative, save, delete, close, result)


def counter_html(count: int, limit: int) -> str:
    over = " over" if count > limit else ""
    return f"<span class='token-count{over}'>{count}/{limit}</span>"


def count_tokens(text: str, steps: float | None = 20) -> str:
    """The counter's text, `tokens/limit` with limit in 75-token chunks, as A1111 shows it.

    It runs on every keystroke, outside the queue, so it keeps the API's bounds: a prompt longer than the
    api_max_prompt_chars setting is not counted, and steps are capped at api_max_steps."""
    model = shared.sd_model
    if model is None:
        return "<span class='token-count'>?/75</span>"
    text = text or ""
    most = int(getattr(shared.opts, "api_max_prompt_chars", 20000))
    if len(text) > most:
        return (f"<span class='token-count over' title='longer than {most} characters "
                "(setting api_max_prompt_chars): not counted'>?/75</span>")
    from modules.engine.conditioning import PromptEncoder

    try:
        steps = min(max(int(steps or 20), 1), int(getattr(shared.opts, "api_max_steps", 500)))
        params = script_callbacks.BeforeTokenCounterParams(text, steps, [])
        script_callbacks.before_token_counter_callback(params)  # extensions may change what is counted
        # Extra-network tags are not encoded, so they are not counted (as in A1111).
        text = extra_networks.parse_prompt(params.prompt)[0]
        count, limit = PromptEncoder(model).token_count(text, steps)
    except Exception:  # a half-typed prompt must never break typing
        return "<span class='token-count'>?/75</span>"
    return counter_html(count, limit)


def count_both(prompt: str, negative: str, steps: float | None = 20) -> tuple[str, str]:
    return count_tokens(prompt, steps), count_tokens(negative, steps)


def wire(toprow: Toprow, steps: gr.Slider) -> None:
    """Token counters follow the prompts (and steps, which prompt-editing schedules depend on). A changed steps
    value recounts both prompts in one event (each event costs the page a walk over all its components); it is
    `change`, not the slider's `release`, which typing a number into the box never fires, nor pasted parameters."""
    counting = dict(show_progress="hidden", trigger_mode="always_last", concurrency_limit=None, queue=False)
    for box, counter in ((toprow.prompt, toprow.token_counter), (toprow.negative_prompt, toprow.negative_token_counter)):
        box.change(count_tokens, inputs=[box, steps], outputs=[counter], **counting)
    steps.change(count_both, inputs=[toprow.prompt, toprow.negative_prompt, steps],
                  outputs=[toprow.token_counter, toprow.negative_token_counter], **counting)

    hidden: dict[str, Any] = dict(show_progress="hidden")
    editor = toprow.editor
    # 💾 and the editor's Save are one function; both lists of this tab's styles follow, the other tab's in
    # _share_style_changes.
    editor.changed.append(toprow.style_save.click(
        save_style, inputs=[toprow.style_name, toprow.prompt, toprow.negative_prompt],
        outputs=[toprow.styles, editor.selection, toprow.style_result], **hidden))
    editor.changed.append(editor.save.click(
        save_style, inputs=[editor.selection, editor.prompt, editor.negative_prompt],
        outputs=[toprow.styles, editor.selection, editor.result], **hidden))
    # javascript/ui.js asks "Delete style X?" first; a cancelled question sends no name (None), which changes nothing
    editor.changed.append(editor.delete.click(
        delete_style, inputs=[editor.selection], outputs=[toprow.styles, editor.selection, editor.result],
        js="confirm_delete_style", **hidden))
    editor.open.click(lambda: (gr.Group(visible=True), gr.Dropdown(choices=styles_store.names()), ""),
                      outputs=[editor.dialog, editor.selection, editor.result], **hidden)
    editor.close.click(lambda: gr.Group(visible=False), outputs=[editor.dialog], **hidden)
    editor.selection.change(select_style, inputs=[editor.selection],
                            outputs=[editor.prompt, editor.negative_prompt], **hidden)

    # In the page only, no server round trip: A1111's JS asks "Delete prompt?" first (javascript/ui.js).
    toprow.clear_prompt.click(None, inputs=[toprow.prompt, toprow.negative_prompt],
                              outputs=[toprow.prompt, toprow.negative_prompt], js="confirm_clear_prompt")
    toprow.style_apply.click(apply_styles, inputs=[toprow.prompt, toprow.negative_prompt, toprow.styles],
                             outputs=[toprow.prompt, toprow.negative_prompt, toprow.styles], show_progress="hidden")


def save_style(name: str, prompt: str, negative: str) -> tuple[Any, Any, str]:
    """💾 and the editor's Save: (this tab's Styles list, the editor's list with the saved name, the message)."""
    try:
        saved = styles_store.save(name, prompt, negative)
    except ValueError as e:
        return gr.skip(), gr.skip(), common.error_html(str(e))
    style = styles_store.find(saved)
    path = style.path if style is not None else None
    choices = styles_store.names()
    return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices, value=saved), \
        common.notice_html(f"Saved style {saved!r} to {styles_store.file_name(path)}.")


def delete_style(name: str | None) -> tuple[Any, Any, Any]:
    """The editor's Delete, after the page's question; `None` is a cancelled question."""
    if name is None:
        return gr.skip(), gr.skip(), gr.skip()
    try:
        file = styles_store.delete(name)
    except ValueError as e:
        return gr.skip(), gr.skip(), common.error_html(str(e))
    choices = styles_store.names()
    return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices, value=None), \
        common.notice_html(f"Deleted style {name.strip()!r} from {file}.")


def select_style(name: str | None) -> tuple[Any, Any]:
    """Choosing an existing style in the editor shows its prompts; a new name keeps what is typed."""
    style = styles_store.find(name)
    if style is None:
        return gr.skip(), gr.skip()
    return style.prompt or "", style.negative_prompt or ""


def link_style_lists(rows: list[Toprow]) -> None:
    """A style saved or deleted on one tab shows in every tab's lists (the page calls this with its top rows)."""
    outputs = [box for row in rows for box in (row.styles, row.editor.selection)]

    def refresh() -> tuple[Any, ...]:
        return tuple(gr.Dropdown(choices=styles_store.names()) for _ in outputs)

    for row in rows:
        for event in row.editor.changed:
            event.then(refresh, outputs=outputs, show_progress="hidden")


def apply_styles(prompt: str, negative: str, selected: list[str] | None) -> tuple[str, str, list[str]]:
    """📋: the selected styles written into the prompts (A1111's rules: `{prompt}` or ", "), selection cleared so
    Generate does not apply them a second time."""
    db = styles_store.database()
    selected = list(selected or [])
    return (db.apply_styles_to_prompt(prompt or "", selected),
            db.apply_negative_styles_to_prompt(negative or "", selected), [])


__all__ = ["StylesEditor", "Toprow", "apply_styles", "build", "count_both", "count_tokens", "counter_html",
           "delete_style", "link_style_lists", "save_style", "select_style", "wire"]
