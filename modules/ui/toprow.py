"""The top row of txt2img and img2img: prompts with token counters, Generate / Interrupt / Skip, A1111's tool
buttons (↙️ paste parameters, 🗑️ clear prompt, 📋 apply styles), styles."""

from __future__ import annotations

from dataclasses import dataclass

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
            styles = gr.Dropdown(label="Styles", elem_id=f"{tabname}_styles", choices=styles_store.names(),
                                 value=[], multiselect=True)
            with gr.Row(elem_id=f"{tabname}_style_save_row"):
                style_name = gr.Textbox(label="Save prompts as style", elem_id=f"{tabname}_style_name",
                                        placeholder="style name", scale=4)
                style_save = common.tool_button(common.SAVE_STYLE, f"{tabname}_style_create",
                                                "Save the current prompt and negative prompt as a style")
            style_result = gr.HTML("", elem_id=f"{tabname}_style_result", elem_classes=["toprow-message"],
                                   padding=False)
    return Toprow(tabname, prompt, negative, counter, negative_counter, generate, interrupt, skip, styles,
                  style_name, style_save, style_result, paste, clear_prompt, style_apply, paste_result)


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

    def save_style(name: str, prompt: str, negative: str):
        try:
            saved = styles_store.save(name, prompt, negative)
        except ValueError as e:
            return gr.skip(), common.error_html(str(e))
        return gr.Dropdown(choices=styles_store.names()), \
            common.notice_html(f"Saved style {saved!r} to {styles_store.file_name()}.")

    toprow.style_save.click(save_style, inputs=[toprow.style_name, toprow.prompt, toprow.negative_prompt],
                            outputs=[toprow.styles, toprow.style_result], show_progress="hidden")

    # In the page only, no server round trip: A1111's JS asks "Delete prompt?" first (javascript/ui.js).
    toprow.clear_prompt.click(None, inputs=[toprow.prompt, toprow.negative_prompt],
                              outputs=[toprow.prompt, toprow.negative_prompt], js="confirm_clear_prompt")
    toprow.style_apply.click(apply_styles, inputs=[toprow.prompt, toprow.negative_prompt, toprow.styles],
                             outputs=[toprow.prompt, toprow.negative_prompt, toprow.styles], show_progress="hidden")


def apply_styles(prompt: str, negative: str, selected: list[str] | None) -> tuple[str, str, list[str]]:
    """📋: the selected styles written into the prompts (A1111's rules: `{prompt}` or ", "), selection cleared so
    Generate does not apply them a second time."""
    db = styles_store.database()
    selected = list(selected or [])
    return (db.apply_styles_to_prompt(prompt or "", selected),
            db.apply_negative_styles_to_prompt(negative or "", selected), [])


__all__ = ["Toprow", "apply_styles", "build", "count_both", "count_tokens", "counter_html", "wire"]
