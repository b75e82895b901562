"""txt2img's "Hires. fix" accordion (A1111's labels, ranges and elem_ids) and its ✨ button on a finished picture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules import hires, infotext_utils, shared
from modules.models import registry
from modules.ui import params, paste, results
from modules.ui_components import InputAccordion

FIELDS = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_resize_x",
          "hr_resize_y", "hr_cfg", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
          "hr_negative_prompt")


def upscaler_names() -> list[str]:
    return [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]]


@dataclass
class HiresControls:
    enable_hr: InputAccordion
    hr_upscaler: gr.Dropdown
    hr_second_pass_steps: gr.Slider
    denoising_strength: gr.Slider
    hr_scale: gr.Slider
    hr_resize_x: gr.Slider
    hr_resize_y: gr.Slider
    hr_cfg: gr.Slider
    hr_checkpoint_name: gr.Dropdown
    hr_sampler_name: gr.Dropdown
    hr_scheduler: gr.Dropdown
    hr_prompt: gr.Textbox
    hr_negative_prompt: gr.Textbox

    @property
    def inputs(self) -> list[Any]:
        return [getattr(self, name) for name in FIELDS]


def build(tab: str = "txt2img") -> HiresControls:
    with InputAccordion(False, label="Hires. fix", elem_id=f"{tab}_hr") as enable:
        with gr.Row(elem_id=f"{tab}_hires_fix_row1"):
            upscaler = gr.Dropdown(label="Upscaler", elem_id=f"{tab}_hr_upscaler", choices=upscaler_names(),
                                   value=shared.latent_upscale_default_mode)
            steps = gr.Slider(minimum=0, maximum=150, step=1, label="Hires steps", value=0,
                              elem_id=f"{tab}_hires_steps")
            denoising = gr.Slider(minimum=0.0, maximum=1.0, step=0.01, label="Denoising strength", value=0.7,
                                  elem_id=f"{tab}_denoising_strength")
        with gr.Row(elem_id=f"{tab}_hires_fix_row2"):
            scale = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label="Upscale by", value=2.0,
                              elem_id=f"{tab}_hr_scale")
            resize_x = gr.Slider(minimum=0, maximum=2048, step=8, label="Resize width to", value=0,
                                 elem_id=f"{tab}_hr_resize_x")
            resize_y = gr.Slider(minimum=0, maximum=2048, step=8, label="Resize height to", value=0,
                                 elem_id=f"{tab}_hr_resize_y")
        with gr.Row(elem_id=f"{tab}_hires_fix_row_cfg"):
            cfg = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, label="Hires CFG Scale", value=7.0,
                            elem_id=f"{tab}_hr_cfg")
        with gr.Row(elem_id=f"{tab}_hires_fix_row3"):
            checkpoint = gr.Dropdown(label="Checkpoint", elem_id="hr_checkpoint",
                                     choices=[hires.SAME_CHECKPOINT, *registry.checkpoint_tiles(use_short=True)],
                                     value=hires.SAME_CHECKPOINT)
            sampler = gr.Dropdown(label="Hires sampling method", elem_id="hr_sampler",
                                  choices=[hires.SAME_SAMPLER, *params.sampler_names()], value=hires.SAME_SAMPLER)
            scheduler = gr.Dropdown(label="Hires schedule type", elem_id="hr_scheduler",
                                    choices=[hires.SAME_SCHEDULER, *params.scheduler_labels()],
                                    value=hires.SAME_SCHEDULER)
        with gr.Row(elem_id=f"{tab}_hires_fix_row4"):
            prompt = gr.Textbox(label="Hires prompt", elem_id="hires_prompt", show_label=False, lines=3,
                                placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt as in "
                                            "first pass.", elem_classes=["prompt"])
            negative = gr.Textbox(label="Hires negative prompt", elem_id="hires_neg_prompt", show_label=False,
                                  lines=3, placeholder="Negative prompt for hires fix pass.\nLeave empty to use the "
                                                       "same negative prompt as in first pass.",
                                  elem_classes=["prompt"])
    return HiresControls(enable, upscaler, steps, denoising, scale, resize_x, resize_y, cfg, checkpoint, sampler,
                         scheduler, prompt, negative)


def paste_fields(controls: HiresControls) -> list[paste.Field]:
    """A1111's paste table for the accordion (the same table the API's `infotext` field uses)."""
    return [(getattr(controls, name), getter) for name, getter in hires.PASTE_FIELDS]


def apply(p: Any, values: list[Any] | tuple[Any, ...], force: bool = False) -> None:
    """The accordion's values onto a txt2img request; with it closed (and not `force`), nothing changes."""
    given = dict(zip(FIELDS, values, strict=True))
    p.enable_hr = force or bool(given["enable_hr"])
    if not p.enable_hr:
        return
    p.hr_upscaler = given["hr_upscaler"] or None
    p.hr_second_pass_steps = int(given["hr_second_pass_steps"] or 0)
    p.denoising_strength = float(given["denoising_strength"])
    p.hr_scale = float(given["hr_scale"])
    p.hr_resize_x, p.hr_resize_y = int(given["hr_resize_x"] or 0), int(given["hr_resize_y"] or 0)
    p.hr_cfg = float(given["hr_cfg"])
    p.hr_checkpoint_name = given["hr_checkpoint_name"]
    p.hr_sampler_name = given["hr_sampler_name"]
    p.hr_scheduler = given["hr_scheduler"]
    p.hr_prompt, p.hr_negative_prompt = given["hr_prompt"] or "", given["hr_negative_prompt"] or ""


def for_finished_picture(p: Any, picture_path: str | None, infotext: str) -> None:
    """The ✨ button (A1111's txt2img_upscale): only the hires pass, on the selected picture, from its own seed and
    size, with the accordion's current settings (turned on even while it is closed)."""
    if not picture_path:
        raise ValueError("No image to upscale: generate a picture first")
    with Image.open(picture_path) as opened:
        picture = opened.convert("RGB")
    picture = picture.crop((0, 0, picture.width // 8 * 8, picture.height // 8 * 8))  # whole latent pixels
    found = infotext_utils.parse_generation_parameters(infotext or "")
    p.enable_hr = True
    p.txt2img_upscale = True
    p.firstpass_image = picture
    p.batch_size = p.n_iter = 1
    p.width, p.height = picture.size
    p.seed = int(found.get("Seed", -1))
    p.subseed = int(found.get("Variation seed", -1))
    p.override_settings["save_images_before_highres_fix"] = False


def upscale_button(tab: str = "txt2img") -> gr.Button:
    from modules.ui import common

    return common.tool_button("\u2728", f"{tab}_upscale", "Create an upscaled version of the current image using "
                                                          "hires fix settings.")


def _index_in(gallery: list[Any], index: int | None) -> int:
    return index if index is not None and 0 <= index < len(gallery) else 0


def _path_of(item: Any) -> Any:
    return item[0] if isinstance(item, list | tuple) else item


def put_in_place(finished: tuple[Any, ...], gallery: Any, index: int | None, info_json: str) -> tuple[Any, ...]:
    """A1111's ✨ result: the upscaled picture takes the selected one's place among the others, and its infotext
    (and saved file) that place in the generation info, so the other pictures keep theirs."""
    pictures, new_json, _html, log, progress = finished
    before = list(gallery or [])
    try:
        new_info = json.loads(new_json)
        info = json.loads(info_json or "{}")
    except ValueError:
        return finished
    if not pictures or not before or not isinstance(info, dict):
        return finished
    at = _index_in(before, index)
    merged = [_path_of(item) for item in before]
    merged[at] = pictures[0]
    for key in ("infotexts", "saved_files"):
        values = list(info.get(key) or [])
        values += [""] * (len(before) - len(values))
        values[at] = (new_info.get(key) or [""])[0]
        info[key] = values
    merged_json = json.dumps(info)
    return merged, merged_json, results.info_html(merged_json, at), log, progress


def wire_upscale_button(button: gr.Button, panel: Any, handler: Any, inputs: list[Any]) -> None:
    """The handler gets the selected picture's file and infotext, then the tab's inputs; its finished result
    replaces the selected picture in the gallery (`put_in_place`)."""

    def upscale(request: gr.Request, gallery: Any, index: int | None, info_json: str, *values: Any):
        items = list(gallery or [])
        at = _index_in(items, index)
        picture = results.image_at(items, at)
        for update in handler(request, picture, results.infotext_at(info_json, at), *values):
            yield put_in_place(update, items, at, info_json) if isinstance(update[0], list) else update

    button.click(upscale, inputs=[panel.gallery, panel.selected_index, panel.generation_info, *inputs],
                 outputs=panel.outputs, show_progress="hidden", concurrency_limit=None, concurrency_id="generate")
