"""The Checkpoint Merger tab (A1111's `modelmerger`): its fields, and the Merge button as one job on the queue.

The merge itself is `modules.models.merge`; here it is submitted through `tasks.run`, so it waits for (and never
runs beside) a generation, streams its progress into the result line, and ends with where the file went or why
it was refused. `finished` is the button's event: the page chains the checkpoint bar's refresh on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import shared
from modules.models import merge, registry, vae_registry
from modules.ui import common, tasks


@dataclass
class MergerTab:
    primary: gr.Dropdown
    secondary: gr.Dropdown
    tertiary: gr.Dropdown
    custom_name: gr.Textbox
    interp_amount: gr.Slider
    interp_method: gr.Radio
    checkpoint_format: gr.Radio
    save_as_half: gr.Checkbox
    config_method: gr.Radio
    bake_in_vae: gr.Dropdown
    discard_weights: gr.Textbox
    save_metadata: gr.Checkbox
    add_recipe: gr.Checkbox
    copy_metadata: gr.Checkbox
    button: gr.Button
    result: gr.HTML
    finished: Any = None  # the Merge click's event, for `.then`

    @property
    def inputs(self) -> list[Any]:
        return [self.primary, self.secondary, self.tertiary, self.interp_method, self.interp_amount,
                self.save_as_half, self.custom_name, self.checkpoint_format, self.config_method, self.bake_in_vae,
                self.discard_weights, self.save_metadata, self.add_recipe, self.copy_metadata]


def _model_box(label: str, elem_id: str) -> gr.Dropdown:
    return gr.Dropdown(registry.checkpoint_tiles(), label=label, elem_id=elem_id, value=None)


def build() -> MergerTab:
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            gr.HTML("<p>A merger of the selected checkpoints. The result is saved in the checkpoint folder.</p>")
            with gr.Row():
                primary = _model_box("Primary model (A)", "modelmerger_primary_model_name")
                secondary = _model_box("Secondary model (B)", "modelmerger_secondary_model_name")
                tertiary = _model_box("Tertiary model (C)", "modelmerger_tertiary_model_name")
                refresh = common.tool_button(common.REFRESH, "refresh_checkpoint_Z",  # A1111's id: one for all three
                                             "Look for new checkpoints in the model folders")
            custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
            interp_amount = gr.Slider(minimum=0.0, maximum=1.0, step=0.05, value=0.3,
                                      label="Multiplier (M) - set to 0 to get model A",
                                      elem_id="modelmerger_interp_amount")
            interp_method = gr.Radio(list(merge.METHODS), value=merge.WEIGHTED_SUM, label="Interpolation Method",
                                     elem_id="modelmerger_interp_method")
            with gr.Row():
                checkpoint_format = gr.Radio(list(merge.FORMATS), value="safetensors", label="Checkpoint format",
                                             elem_id="modelmerger_checkpoint_format")
                save_as_half = gr.Checkbox(value=False, label="Save as float16", elem_id="modelmerger_save_as_half")
            config_method = gr.Radio(list(merge.CONFIG_SOURCES), value=merge.CONFIG_SOURCES[0],
                                     label="Copy config from", elem_id="modelmerger_config_method")
            with gr.Row():
                bake_in_vae = gr.Dropdown([merge.NO_VAE, *vae_registry.vae_dict], value=merge.NO_VAE,
                                          label="Bake in VAE", elem_id="modelmerger_bake_in_vae")
                refresh_vae = common.tool_button(common.REFRESH, "modelmerger_refresh_bake_in_vae",
                                                 "Look for new VAEs in the model folders")
            discard_weights = gr.Textbox(label="Discard weights with matching name",
                                         elem_id="modelmerger_discard_weights")
            with gr.Accordion("Metadata", open=False):
                save_metadata = gr.Checkbox(value=True, label="Save metadata", elem_id="modelmerger_save_metadata")
                add_recipe = gr.Checkbox(value=True, label="Add merge recipe metadata",
                                         elem_id="modelmerger_add_recipe")
                copy_metadata = gr.Checkbox(value=True, label="Copy metadata from merged models",
                                            elem_id="modelmerger_copy_metadata")
            button = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        with gr.Column():
            result = gr.HTML(elem_id="modelmerger_result")
    tab = MergerTab(primary, secondary, tertiary, custom_name, interp_amount, interp_method, checkpoint_format,
                    save_as_half, config_method, bake_in_vae, discard_weights, save_metadata, add_recipe,
                    copy_metadata, button, result)
    boxes = [primary, secondary, tertiary]
    refresh.click(rescan_checkpoints, outputs=boxes, show_progress="hidden")
    refresh_vae.click(rescan_vaes, outputs=[bake_in_vae], show_progress="hidden")
    tab.finished = button.click(run, inputs=tab.inputs, outputs=[result], show_progress="hidden",
                                concurrency_limit=None)
    tab.finished.then(checkpoint_choices, outputs=boxes, show_progress="hidden")  # the job rescanned already
    return tab


def checkpoint_choices() -> tuple[Any, ...]:
    tiles = registry.checkpoint_tiles()
    return tuple(gr.Dropdown(choices=tiles) for _ in range(3))


def rescan_checkpoints() -> tuple[Any, ...]:
    registry.list_models()
    return checkpoint_choices()


def rescan_vaes() -> Any:
    vae_registry.refresh_vae_list()
    return gr.Dropdown(choices=[merge.NO_VAE, *vae_registry.vae_dict])


def job(req: merge.MergeRequest) -> merge.MergeResult:
    """The queued work: the merge, its phases shown in the progress bar; the tab going away stops it."""
    state = shared.state
    state.job_count = 1

    def report(what: str, done: int, total: int) -> None:
        state.textinfo = what
        state.sampling_steps = total
        state.sampling_step = done

    return merge.merge(req, progress=report, should_stop=lambda: bool(state.interrupted))


def done_html(result: merge.MergeResult) -> str:
    hidden = getattr(shared.cmd_opts, "hide_ui_dir_config", False)
    where = os.path.basename(result.path) if hidden else result.path
    text = f"Checkpoint saved to {where}. It is in the checkpoint list as {result.title}."
    if result.config:
        text += f" Its config was copied to {os.path.basename(result.config)}."
    return common.notice_html(text)


def run(primary: str | None, secondary: str | None, tertiary: str | None, interp_method: str, multiplier: float,
        save_as_half: bool, custom_name: str, checkpoint_format: str, config_method: str, bake_in_vae: str | None,
        discard_weights: str, save_metadata: bool, add_recipe: bool, copy_metadata: bool,
        request: gr.Request) -> Iterator[str]:
    """The Merge button: check the fields, queue the merge, stream its progress, then where it went or why not."""
    req = merge.MergeRequest(
        primary=primary or None, secondary=secondary or None, tertiary=tertiary or None,
        interp_method=interp_method, multiplier=float(multiplier), save_as_half=bool(save_as_half),
        custom_name=custom_name or "", checkpoint_format=checkpoint_format, config_source=config_method,
        bake_in_vae=bake_in_vae or merge.NO_VAE, discard_weights=discard_weights or "",
        save_metadata=bool(save_metadata), add_merge_recipe=bool(add_recipe),
        copy_metadata_fields=bool(copy_metadata))
    try:
        merge.check_request(req)  # a missing model or a bad regex is said at once, without waiting in the queue
    except merge.MergeError as e:
        yield common.error_html(f"Merge refused: {e}")
        return
    yield from tasks.stream_html("modelmerger", lambda: job(req), request, done_html,
                                 lambda error: common.error_html(f"Merge failed: {error}"))
