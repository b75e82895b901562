"""The txt2img tab: prompts and parameters -> StableDiffusionProcessingTxt2Img -> the shared queue."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules import processing, scripts, shared
from modules.ui import extra_networks, generation, hires_fix, override_settings, params, results, scripts_ui, toprow


@dataclass
class Txt2ImgTab:
    toprow: toprow.Toprow
    sampler: params.SamplerControls
    size: params.SizeControls
    batch: params.BatchControls
    seeds: params.SeedControls
    tiling: gr.Checkbox
    refiner: params.RefinerControls
    results: results.Results
    restore_faces: gr.Checkbox | None = None  # A1111's txt2img_restore_faces; its paste key is "Face restoration"
    hires: hires_fix.HiresControls | None = None
    override_settings: gr.Dropdown | None = None  # filled by pastes (modules.ui.sendto)


def build() -> Txt2ImgTab:
    top = toprow.build("txt2img")
    with extra_networks.generation_tabs("txt2img"):
        with gr.Row(elem_id="txt2img_settings_row", equal_height=False):
            with gr.Column(elem_id="txt2img_settings", scale=1):
                sampler = params.sampler_controls("txt2img")
                size = params.size_controls("txt2img")
                batch = params.batch_controls("txt2img")
                seeds = params.seed_controls("txt2img")
                overrides = override_settings.build("txt2img")
                hr = hires_fix.build("txt2img")
                tiling = params.tiling_checkbox("txt2img")
                restore_faces = gr.Checkbox(label="Restore faces", elem_id="txt2img_restore_faces",
                                            value=bool(shared.opts.data.get("face_restoration", False)))
                refiner = params.refiner_controls("txt2img")
                script_inputs = scripts_ui.build(scripts.scripts_txt2img)
            with gr.Column(scale=1):
                panel = results.build("txt2img")
                upscale = hires_fix.upscale_button("txt2img")
    tab = Txt2ImgTab(top, sampler, size, batch, seeds, tiling, refiner, panel, restore_faces,
                     override_settings=overrides)
    toprow.wire(top, sampler.steps)
    params.wire_reuse_seed(seeds, panel.generation_info, panel.selected_index)
    inputs = [top.prompt, top.negative_prompt, top.styles, sampler.steps, sampler.sampler, sampler.scheduler,
              size.width, size.height, batch.batch_count, batch.batch_size, batch.cfg_scale, seeds.seed, seeds.extra,
              seeds.subseed, seeds.subseed_strength, seeds.seed_resize_from_w, seeds.seed_resize_from_h, tiling,
              refiner.enabled, refiner.checkpoint, refiner.switch_at, restore_faces]
    # the box goes first: the hires values are read from the end and the scripts' from FIELD_COUNT on
    generation.wire_buttons(top, panel, generate, [overrides] + inputs + script_inputs + hr.inputs)
    hires_fix.wire_upscale_button(upscale, panel, upscale_picture,
                                  [overrides] + inputs + script_inputs + hr.inputs)
    tab.hires = hr
    return tab


def make_request(prompt: str, negative_prompt: str, styles: list[str] | None, steps: float, sampler_name: str,
                 scheduler: str, width: float, height: float, batch_count: float, batch_size: float,
                 cfg_scale: float, seed: float | None, seed_extras: bool, subseed: float | None,
                 subseed_strength: float, resize_w: float, resize_h: float, tiling: bool, use_refiner: bool,
                 refiner_checkpoint: str | None, refiner_switch_at: float, restore_faces: bool = False
                 ) -> processing.StableDiffusionProcessingTxt2Img:
    """Widget values -> A1111's request object, with A1111's UI rules (variation seeds only with "Extra")."""
    return processing.StableDiffusionProcessingTxt2Img(
        prompt=prompt or "", negative_prompt=negative_prompt or "", styles=list(styles or []), steps=int(steps),
        sampler_name=sampler_name, scheduler=scheduler, width=int(width), height=int(height),
        n_iter=int(batch_count), batch_size=int(batch_size), cfg_scale=float(cfg_scale),
        seed=int(seed if seed is not None else -1),
        subseed=int(subseed if subseed is not None and seed_extras else -1),
        subseed_strength=float(subseed_strength) if seed_extras else 0.0,
        seed_resize_from_w=int(resize_w) if seed_extras and resize_w else -1,
        seed_resize_from_h=int(resize_h) if seed_extras and resize_h else -1,
        tiling=bool(tiling),
        refiner_checkpoint=refiner_checkpoint if use_refiner and refiner_checkpoint else None,
        refiner_switch_at=float(refiner_switch_at) if use_refiner and refiner_checkpoint else None,
        restore_faces=bool(restore_faces),
    )


FIELD_COUNT = 22  # the values make_request takes; the scripts' values follow them


def _request(overrides: list[str] | None, values: tuple) -> processing.StableDiffusionProcessingTxt2Img:
    try:
        p = make_request(*values[:FIELD_COUNT])
    except (TypeError, ValueError) as e:  # a widget left empty or holding text where a number belongs
        raise ValueError(f"Check the parameters: {e}") from e
    p.override_settings.update(override_settings.checked(overrides))
    scripts_ui.attach(p, scripts.scripts_txt2img, list(values[FIELD_COUNT:-len(hires_fix.FIELDS)]))
    return p


def generate(request: gr.Request, overrides: list[str] | None, *values):
    def make_work():
        p = _request(overrides, values)
        hires_fix.apply(p, values[-len(hires_fix.FIELDS):])
        return lambda: scripts.process_request(p)

    yield from generation.stream("txt2img", make_work, request)


def upscale_picture(request: gr.Request, picture: str | None, infotext: str, overrides: list[str] | None, *values):
    """The ✨ button: the hires pass alone on the selected picture, with the current settings."""
    def make_work():
        p = _request(overrides, values)
        hires_fix.apply(p, values[-len(hires_fix.FIELDS):], force=True)
        hires_fix.for_finished_picture(p, picture, infotext)
        return lambda: scripts.process_request(p)

    yield from generation.stream("txt2img", make_work, request)
