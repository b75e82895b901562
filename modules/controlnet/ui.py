"""The ControlNet accordion of txt2img and img2img (the sd-webui-controlnet extension's, built in): one tab per
unit with its control image (and optional mask), Enable / Low VRAM / Pixel Perfect / Allow Preview, Control
Type, Preprocessor with 💥 preview, Model with 🔄 refresh, weight and guidance window, the preprocessor's own
sliders, Control Mode, Resize Mode and (txt2img, with Hires. fix on) the hires option.

`build(script, is_img2img)` returns one gr.State per unit, the script's arguments (scripts/controlnet.py): a
ControlNetUnit, None for a unit left off, or the unit's fields when the job must refuse them by name. One
`.change` listener per unit keeps that state in step with its controls. Elem ids are the extension's
(`txt2img_controlnet_ControlNet-0_controlnet_enable_checkbox`, ...), so its users' scripts and styles find them.

Infotext paste: `ControlNet N: "Module: canny, Model: name [hash], ..."` goes into a hidden box per unit
(registered in `script.infotext_fields`); its `.change` sets the unit's controls (ui_values.pasted_values).
What the functions mean lives in modules/controlnet/ui_values.py; this module lays out and wires.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import get_blocks_context

from modules import shared
from modules.controlnet import ui_values
from modules.controlnet.units import ControlMode, HiResFixOption, ResizeMode
from modules.ui import common, tasks, uploads

TRIGGER = "\U0001f4a5"  # 💥: run the preprocessor (the extension's symbol)


def unit_count() -> int:
    try:
        return max(1, min(10, int(shared.opts.data.get("control_net_unit_count", 3))))
    except (TypeError, ValueError):
        return 3


@dataclass
class UnitControls:
    index: int
    elem_prefix: str  # "txt2img_controlnet_ControlNet-0": the extension's id prefix of this unit
    image: gr.Image
    mask: gr.Image
    independent: Any  # img2img: "Upload independent control image" checkbox; txt2img: a State holding True
    image_panel: gr.Group
    preview: gr.Image
    preview_panel: gr.Column
    enabled: gr.Checkbox
    low_vram: gr.Checkbox
    pixel_perfect: gr.Checkbox
    allow_preview: gr.Checkbox
    control_type: gr.Radio
    module: gr.Dropdown
    trigger: gr.Button
    model: gr.Dropdown
    refresh: gr.Button
    weight: gr.Slider
    guidance_start: gr.Slider
    guidance_end: gr.Slider
    processor_res: gr.Slider
    threshold_a: gr.Slider
    threshold_b: gr.Slider
    control_mode: gr.Radio
    resize_mode: gr.Radio
    hr_option: gr.Radio
    message: gr.HTML  # what is wrong with the unit as it stands ("" when nothing)
    notice: gr.HTML  # how the last paste or preview went
    paste_box: gr.Textbox
    state: gr.State

    def value_inputs(self) -> list[Any]:
        """The controls behind the unit's state, in ui_values.CONTROL_NAMES order."""
        return [getattr(self, name) for name in ui_values.CONTROL_NAMES]

    def pasted_outputs(self) -> list[Any]:
        return [getattr(self, name) for name in ui_values.PASTED_NAMES]


def unit_prefix(tab: str, index: int, count: int) -> str:
    """The extension's per-unit id prefix: "ControlNet-N" with several units, "ControlNet" with one."""
    return f"{tab}_controlnet_ControlNet-{index}" if count > 1 else f"{tab}_controlnet_ControlNet"


def _page_component(elem_id: str) -> Any:
    """A component already on the page being built (the tab's width, the Hires. fix switch), or None."""
    context = get_blocks_context()
    if context is None:
        return None
    return next((b for b in context.blocks.values() if getattr(b, "elem_id", None) == elem_id), None)


@dataclass
class BuiltAccordion:
    accordion: gr.Accordion
    units: list[UnitControls]


# The accordions of the page being built, by tab: other tabs send pictures to their units (the Depth tab's map).
built: dict[str, BuiltAccordion] = {}


def build(script: Any, is_img2img: bool) -> list[Any]:
    """The accordion; returns one gr.State per unit (the script's arguments)."""
    tab = "img2img" if is_img2img else "txt2img"
    count = unit_count()
    units: list[UnitControls] = []
    with gr.Accordion("ControlNet", open=False, elem_id=f"{tab}_controlnet") as accordion:
        if count > 1:
            with gr.Tabs(elem_id=f"{tab}_controlnet_tabs"):
                for i in range(count):
                    with gr.Tab(f"ControlNet Unit {i}", elem_classes=["cnet-unit-tab"]):
                        units.append(_unit(tab, i, count, is_img2img))
        else:
            with gr.Column():
                units.append(_unit(tab, 0, count, is_img2img))
    size = [_page_component(f"{tab}_width"), _page_component(f"{tab}_height")]
    hires_switch = None if is_img2img else _page_component(f"{tab}_hr-checkbox")
    for unit in units:
        _wire(unit, accordion, size)
    if hires_switch is not None:  # the hires option matters only with Hires. fix on
        hires_switch.change(lambda on: [gr.update(visible=bool(on))] * len(units), inputs=[hires_switch],
                            outputs=[u.hr_option for u in units], show_progress="hidden", queue=False)
    built[tab] = BuiltAccordion(accordion, units)
    script.infotext_fields = [(u.paste_box, f"ControlNet {u.index}") for u in units]
    script.paste_field_names = [f"ControlNet {u.index}" for u in units]
    return [u.state for u in units]


def _unit(tab: str, index: int, count: int, is_img2img: bool) -> UnitControls:
    prefix = unit_prefix(tab, index, count)
    state = gr.State(None)
    if is_img2img:
        independent: Any = gr.Checkbox(label="Upload independent control image", value=False,
                                       elem_id=f"{prefix}_controlnet_same_img2img_checkbox",
                                       elem_classes=["cnet-unit-same_img2img"])
    else:
        independent = gr.State(True)
    with gr.Group(visible=not is_img2img, elem_classes=["cnet-image-panel"]) as image_panel:
        with gr.Row(elem_classes=["cnet-image-row"], equal_height=True):
            image = uploads.checked_image(label="Control image", elem_id=f"{prefix}_input_image", type="numpy",
                                          image_mode="RGB", sources=["upload", "clipboard"], height=256,
                                          elem_classes=["cnet-image"])
            with gr.Column(visible=False, elem_classes=["cnet-generated-image-group"]) as preview_panel:
                preview = gr.Image(label="Preprocessor Preview", elem_id=f"{prefix}_generated_image",
                                   type="numpy", format="png", interactive=False, height=256,
                                   elem_classes=["cnet-image"])
        with gr.Accordion("Mask (optional, white = masked; used by the inpaint preprocessors)", open=False,
                          elem_id=f"{prefix}_mask_accordion"):
            mask = uploads.checked_image(label="Mask", elem_id=f"{prefix}_mask_image", type="numpy",
                                         image_mode="L", sources=["upload", "clipboard"], height=200)
    message = gr.HTML("", elem_id=f"{prefix}_controlnet_message", padding=False)
    notice = gr.HTML("", elem_id=f"{prefix}_controlnet_notice", padding=False)
    with gr.Row(elem_classes=["controlnet_main_options"]):
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_controlnet_enable_checkbox",
                              elem_classes=["cnet-unit-enabled"])
        low_vram = gr.Checkbox(label="Low VRAM", value=False, elem_id=f"{prefix}_controlnet_low_vram_checkbox")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False,
                                    elem_id=f"{prefix}_controlnet_pixel_perfect_checkbox")
        allow_preview = gr.Checkbox(label="Allow Preview", value=False, visible=not is_img2img,
                                    elem_id=f"{prefix}_controlnet_preprocessor_preview_checkbox")
    with gr.Row(elem_classes=["controlnet_control_type", "controlnet_row"]):
        control_type = gr.Radio(ui_values.control_type_names(), value=ui_values.ALL_TYPES, label="Control Type",
                                elem_id=f"{prefix}_controlnet_type_filter_radio",
                                elem_classes=["controlnet_control_type_filter_group"])
    modules, models, _, _ = ui_values.choices_for(ui_values.ALL_TYPES)
    with gr.Row(elem_classes=["controlnet_preprocessor_model", "controlnet_row"]):
        module = gr.Dropdown(modules, value=ui_values.NO_MODULE, label="Preprocessor",
                             elem_id=f"{prefix}_controlnet_preprocessor_dropdown")
        trigger = common.tool_button(TRIGGER, f"{prefix}_controlnet_trigger_preprocessor",
                                     "Run the preprocessor on the control image and show its map",
                                     visible=not is_img2img)
        model = gr.Dropdown(models, value=ui_values.NO_MODEL, label="Model",
                            elem_id=f"{prefix}_controlnet_model_dropdown")
        refresh = common.tool_button(common.REFRESH, f"{prefix}_controlnet_refresh_models",
                                     "Scan the ControlNet model folders again")
    with gr.Row(elem_classes=["controlnet_weight_steps", "controlnet_row"]):
        weight = gr.Slider(label="Control Weight", value=1.0, minimum=0.0, maximum=2.0, step=0.05,
                           elem_id=f"{prefix}_controlnet_control_weight_slider")
        start = gr.Slider(label="Starting Control Step", value=0.0, minimum=0.0, maximum=1.0, step=0.01,
                          elem_id=f"{prefix}_controlnet_start_control_step_slider")
        end = gr.Slider(label="Ending Control Step", value=1.0, minimum=0.0, maximum=1.0, step=0.01,
                        elem_id=f"{prefix}_controlnet_ending_control_step_slider")
    with gr.Row(elem_classes=["controlnet_row"]):  # the "none" preprocessor has no sliders: hidden at first
        processor_res = gr.Slider(label="Preprocessor Resolution", value=512, minimum=64, maximum=2048, step=8,
                                  visible=False, elem_id=f"{prefix}_controlnet_preprocessor_resolution_slider")
        threshold_a = gr.Slider(label="Threshold A", value=64, minimum=64, maximum=1024, step=1, visible=False,
                                elem_id=f"{prefix}_controlnet_threshold_A_slider")
        threshold_b = gr.Slider(label="Threshold B", value=64, minimum=64, maximum=1024, step=1, visible=False,
                                elem_id=f"{prefix}_controlnet_threshold_B_slider")
    control_mode = gr.Radio([m.value for m in ControlMode], value=ControlMode.BALANCED.value, label="Control Mode",
                            elem_id=f"{prefix}_controlnet_control_mode_radio")
    resize_mode = gr.Radio([m.value for m in ResizeMode], value=ResizeMode.INNER_FIT.value, label="Resize Mode",
                           elem_id=f"{prefix}_controlnet_resize_mode_radio")
    hr_option = gr.Radio([m.value for m in HiResFixOption], value=HiResFixOption.BOTH.value,
                         label="Hires-Fix Option", visible=False, elem_id=f"{prefix}_controlnet_hr_option_radio")
    paste_box = gr.Textbox(visible="hidden", elem_id=f"{prefix}_controlnet_pasted")
    return UnitControls(index, prefix, image, mask, independent, image_panel, preview, preview_panel, enabled,
                        low_vram, pixel_perfect, allow_preview, control_type, module, trigger, model, refresh, weight,
                        start, end, processor_res, threshold_a, threshold_b, control_mode, resize_mode, hr_option,
                        message, notice, paste_box, state)


def _wire(unit: UnitControls, accordion: gr.Accordion, size: list[Any]) -> None:
    quiet: dict[str, Any] = {"show_progress": "hidden", "queue": False}
    sliders = [unit.processor_res, unit.threshold_a, unit.threshold_b]
    model_outputs = [unit.model, unit.refresh]

    # the unit's state follows every control; "always_last" so the final value of a drag is never lost
    controls = [c for c in unit.value_inputs() if not isinstance(c, gr.State)]
    gr.on([c.change for c in controls], lambda *values: ui_values.unit_value(unit.index, *values),
          inputs=unit.value_inputs(), outputs=[unit.state, unit.message], trigger_mode="always_last", **quiet)

    # a person's choices reset what depends on them; pasted values set those themselves (no `.input` fires)
    unit.control_type.input(ui_values.on_control_type, inputs=[unit.control_type, unit.pixel_perfect],
                            outputs=[unit.module, unit.model, *sliders, *model_outputs], **quiet)
    unit.module.input(ui_values.on_module, inputs=[unit.module, unit.pixel_perfect],
                      outputs=[*sliders, *model_outputs], **quiet)
    unit.pixel_perfect.change(ui_values.resolution_visibility, inputs=[unit.module, unit.pixel_perfect],
                              outputs=[unit.processor_res], **quiet)
    unit.refresh.click(ui_values.refreshed_models, inputs=[unit.control_type, unit.model], outputs=[unit.model],
                       show_progress="hidden")

    unit.allow_preview.change(lambda on: gr.update(visible=bool(on)), inputs=[unit.allow_preview],
                              outputs=[unit.preview_panel], **quiet)
    width, height = size
    size_inputs = [c if c is not None else gr.State(None) for c in (width, height)]
    unit.trigger.click(run_preview, inputs=[unit.image, unit.mask, unit.module, unit.processor_res,
                                            unit.threshold_a, unit.threshold_b, unit.pixel_perfect,
                                            unit.resize_mode, *size_inputs],
                       outputs=[unit.preview, unit.allow_preview, unit.notice], show_progress="hidden",
                       concurrency_limit=None, concurrency_id="generate")
    unit.image.upload(_upload_check, inputs=[unit.image], outputs=[unit.notice], **quiet)
    unit.mask.upload(_upload_check, inputs=[unit.mask], outputs=[unit.notice], **quiet)

    if isinstance(unit.independent, gr.Checkbox):  # img2img: the unit's own picture only when asked for
        unit.independent.change(lambda on: [gr.update(visible=bool(on))] * 3, inputs=[unit.independent],
                                outputs=[unit.image_panel, unit.trigger, unit.allow_preview], **quiet)

    def paste(text: str) -> list[Any]:
        if not text:  # the box emptied after a paste (or an infotext without this unit): nothing to do
            return [gr.skip()] * (len(ui_values.PASTED_NAMES) + 3)
        values, note = ui_values.pasted_values(text)
        return [*values, "", common.notice_html(note) if note else "", gr.update(open=True)]

    unit.paste_box.change(paste, inputs=[unit.paste_box],
                          outputs=[*unit.pasted_outputs(), unit.paste_box, unit.notice, accordion], **quiet)


def _upload_check(value: Any) -> Any:
    if isinstance(value, uploads.UnreadableUpload):
        return common.error_html(value.message)
    return ""


def run_preview(request: gr.Request, image: Any, mask: Any, module: str, processor_res: float, threshold_a: float,
                threshold_b: float, pixel_perfect: bool, resize_mode: str, width: float | None,
                height: float | None) -> Iterator[tuple[Any, Any, Any]]:
    """💥: the preprocessor on the unit's picture, as a job on the shared queue; the map is shown (Allow Preview
    turned on), or the reason it could not be made."""
    skip = gr.skip()
    try:
        job = ui_values.preview_work(image, mask, module, processor_res, threshold_a, threshold_b, pixel_perfect,
                                     resize_mode, width, height)
    except ValueError as e:
        yield skip, skip, common.error_html(str(e))
        return
    yield skip, skip, common.notice_html("Running the preprocessor...")
    session = getattr(request, "session_hash", None)
    for update in tasks.run("controlnet-detect", job, session, getattr(request, "username", None)):
        if not update.finished:
            continue
        if update.error is not None:
            yield skip, skip, common.error_html(update.error)
        else:
            yield update.result, True, ""
