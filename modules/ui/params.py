"""Generation parameter widgets shared by txt2img and img2img, with A1111's labels, ranges and element ids."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from modules.models import registry
from modules.ui import common

DEFAULT_SAMPLER = "DPM++ 2M"  # A1111's UI default (the API's is Euler)


def sampler_names() -> list[str]:
    from modules.engine.sampling.registry import visible_sampler_names

    return visible_sampler_names()


def scheduler_labels() -> list[str]:
    from modules.engine.sampling.schedules import schedulers

    return [s.label for s in schedulers]


@dataclass
class SamplerControls:
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider


def sampler_controls(tab: str) -> SamplerControls:
    names = sampler_names()
    with gr.Row(elem_id=f"{tab}_sampler_row"):
        sampler = gr.Dropdown(label="Sampling method", elem_id=f"{tab}_sampling", choices=names,
                              value=DEFAULT_SAMPLER if DEFAULT_SAMPLER in names else names[0])
        scheduler = gr.Dropdown(label="Schedule type", elem_id=f"{tab}_scheduler", choices=scheduler_labels(),
                                value="Automatic")
        steps = gr.Slider(minimum=1, maximum=150, step=1, value=20, label="Sampling steps", elem_id=f"{tab}_steps")
    return SamplerControls(sampler, scheduler, steps)


@dataclass
class SizeControls:
    width: gr.Slider
    height: gr.Slider
    swap: gr.Button


def default_size() -> int:
    """A1111's 512, or 256 when the model that starts is the bundled one: it was trained at 256 and draws each
    object several times over at 512, which is not what a first-time user should see."""
    from modules import paths, shared

    info = registry.select_checkpoint(getattr(shared.opts, "sd_model_checkpoint", None))
    return 256 if info is not None and info.filename == paths.bundled_checkpoint else 512


def size_controls(tab: str) -> SizeControls:
    size = default_size()
    with gr.Row(elem_id=f"{tab}_dimensions_row"):
        with gr.Column(scale=4):
            width = gr.Slider(minimum=64, maximum=2048, step=8, value=size, label="Width", elem_id=f"{tab}_width")
            height = gr.Slider(minimum=64, maximum=2048, step=8, value=size, label="Height", elem_id=f"{tab}_height")
        swap = common.tool_button(common.SWITCH_SIZE, f"{tab}_res_switch_btn", "Swap width and height")
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], show_progress="hidden",
               queue=False)
    return SizeControls(width, height, swap)


@dataclass
class BatchControls:
    batch_count: gr.Slider
    batch_size: gr.Slider
    cfg_scale: gr.Slider


def batch_controls(tab: str) -> BatchControls:
    with gr.Row(elem_id=f"{tab}_column_batch"):
        batch_count = gr.Slider(minimum=1, maximum=100, step=1, value=1, label="Batch count",
                                elem_id=f"{tab}_batch_count")
        batch_size = gr.Slider(minimum=1, maximum=8, step=1, value=1, label="Batch size", elem_id=f"{tab}_batch_size")
    cfg_scale = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, value=7.0, label="CFG Scale", elem_id=f"{tab}_cfg_scale")
    return BatchControls(batch_count, batch_size, cfg_scale)


@dataclass
class SeedControls:
    seed: gr.Number
    random: gr.Button
    reuse: gr.Button
    extra: gr.Checkbox
    subseed: gr.Number
    subseed_strength: gr.Slider
    seed_resize_from_w: gr.Slider
    seed_resize_from_h: gr.Slider


def seed_controls(tab: str) -> SeedControls:
    with gr.Row(elem_id=f"{tab}_seed_row"):
        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{tab}_seed", scale=4)
        random_seed = common.tool_button(common.RANDOM_SEED, f"{tab}_random_seed", "Set seed to -1 (a new random seed each time)")
        reuse_seed = common.tool_button(common.REUSE_SEED, f"{tab}_reuse_seed", "Reuse the seed of the last (or selected) image")
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=1)
    with gr.Group(visible=False, elem_id=f"{tab}_seed_extras") as extras:
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{tab}_subseed")
            subseed_strength = gr.Slider(label="Variation strength", minimum=0, maximum=1, step=0.01, value=0,
                                         elem_id=f"{tab}_subseed_strength")
        with gr.Row():
            resize_w = gr.Slider(minimum=0, maximum=2048, step=8, value=0, label="Resize seed from width",
                                 elem_id=f"{tab}_seed_resize_from_w")
            resize_h = gr.Slider(minimum=0, maximum=2048, step=8, value=0, label="Resize seed from height",
                                 elem_id=f"{tab}_seed_resize_from_h")
    random_seed.click(lambda: -1, outputs=[seed], show_progress="hidden", queue=False)
    extra.change(lambda show: gr.Group(visible=bool(show)), inputs=[extra], outputs=[extras], show_progress="hidden",
                 queue=False)
    return SeedControls(seed, random_seed, reuse_seed, extra, subseed, subseed_strength, resize_w, resize_h)


def wire_reuse_seed(seeds: SeedControls, generation_info: gr.Textbox, selected_index: gr.State) -> None:
    def reuse(info_json: str, index: int | None):
        try:
            info = json.loads(info_json or "{}")
        except ValueError:
            return gr.skip()
        all_seeds = info.get("all_seeds") or []
        if not all_seeds:
            return gr.skip()
        i = (index or 0) - int(info.get("index_of_first_image", 0))
        return all_seeds[i] if 0 <= i < len(all_seeds) else all_seeds[0]

    seeds.reuse.click(reuse, inputs=[generation_info, selected_index], outputs=[seeds.seed], show_progress="hidden")


@dataclass
class RefinerControls:
    enabled: gr.Checkbox
    checkpoint: gr.Dropdown
    switch_at: gr.Slider


def refiner_controls(tab: str) -> RefinerControls:
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        enabled = gr.Checkbox(label="Use a refiner", value=False, elem_id=f"{tab}_enable_refiner")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", elem_id=f"{tab}_refiner_checkpoint",
                                     choices=registry.checkpoint_tiles(use_short=True), value=None,
                                     allow_custom_value=True)
            switch_at = gr.Slider(minimum=0.01, maximum=1.0, step=0.01, value=0.8, label="Switch at",
                                  elem_id=f"{tab}_refiner_switch_at")
    return RefinerControls(enabled, checkpoint, switch_at)


def tiling_checkbox(tab: str) -> gr.Checkbox:
    return gr.Checkbox(label="Tiling", value=False, elem_id=f"{tab}_tiling")
