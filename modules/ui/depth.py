"""The Depth tab (`tab_depth`): a picture in, its depth map out (coloured preview, 8-bit grey, 16-bit PNG saved to
outputs/depth-images with infotext); estimator, processing resolution, invert, near/far clip; send the map to
img2img as the depth source; generate with an SD2 depth checkpoint (depth2img) from the tab.

Also the img2img tab's "Depth" accordion (estimator and an optional depth map for SD2 depth models).
Estimating and generating are jobs on the one queue; the work itself is `modules.depth.work`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.depth import estimators, maps, work
from modules.depth.weights import display_path
from modules.ui import common, generation, results, tasks, uploads


@dataclass
class DepthTab:
    image: gr.Image
    estimator: gr.Dropdown
    resolution: gr.Slider
    invert: gr.Checkbox
    near: gr.Slider
    far: gr.Slider
    estimate: gr.Button
    preview: gr.Image
    grey: gr.Image
    html_info: gr.HTML
    html_log: gr.HTML
    progress: gr.HTML
    state: gr.State  # the adjusted map (float32 HxW) of the picture shown, or None
    send_to_img2img: gr.Button
    send_to_controlnet: gr.Button
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    steps: gr.Slider
    denoising_strength: gr.Slider
    seed: gr.Number
    generate: gr.Button
    results: results.Results


@dataclass
class Img2ImgDepth:
    """The img2img tab's depth controls (they matter only with an SD2 depth checkpoint)."""

    estimator: gr.Dropdown
    depth_map: gr.Image


def estimator_choices() -> list[str]:
    return estimators.names()


def build() -> DepthTab:
    state = gr.State(None)
    with gr.Row(equal_height=False, elem_id="depth_row"):
        with gr.Column(elem_id="depth_settings"):
            image = uploads.checked_image(label="Picture", elem_id="depth_image", type="pil", image_mode="RGB",
                                          sources=["upload", "clipboard"], height=400)
            estimator = gr.Dropdown(label="Depth estimator", choices=estimator_choices(), value=estimators.DEFAULT,
                                    elem_id="depth_estimator")
            resolution = gr.Slider(label="Processing resolution", minimum=64, maximum=2048, step=8, value=512,
                                   elem_id="depth_resolution")
            with gr.Row():
                invert = gr.Checkbox(label="Invert (near is black)", value=False, elem_id="depth_invert")
            with gr.Row():
                near = gr.Slider(label="Near clip", minimum=0.0, maximum=1.0, step=0.01, value=1.0,
                                 elem_id="depth_near")
                far = gr.Slider(label="Far clip", minimum=0.0, maximum=1.0, step=0.01, value=0.0,
                                elem_id="depth_far")
            estimate = gr.Button("Estimate depth", variant="primary", elem_id="depth_estimate")
            with gr.Accordion("Generate with depth2img (SD2 depth checkpoint)", open=False,
                              elem_id="depth_generate_accordion"):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="depth_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="depth_negative_prompt")
                with gr.Row():
                    steps = gr.Slider(label="Sampling steps", minimum=1, maximum=150, step=1, value=20,
                                      elem_id="depth_steps")
                    strength = gr.Slider(label="Denoising strength", minimum=0.0, maximum=1.0, step=0.01,
                                         value=0.8, elem_id="depth_denoising_strength")
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="depth_seed")
                generate_button = gr.Button("Generate", variant="primary", elem_id="depth2img_generate")
        with gr.Column(elem_id="depth_output"):
            progress = gr.HTML("", elem_id="depth_progress", elem_classes=["progress-area"], padding=False)
            preview = gr.Image(label="Depth map", type="pil", interactive=False, format="png",
                               elem_id="depth_preview", height=400)
            grey = gr.Image(label="Depth map (grey)", type="pil", interactive=False, format="png",
                            elem_id="depth_grey", height=240)
            html_info = gr.HTML("", elem_id="html_info_depth", elem_classes=["infotext"])
            html_log = gr.HTML("", elem_id="html_log_depth", elem_classes=["html-log"])
            with gr.Row(elem_id="depth_send_buttons"):
                send = gr.Button("Send to img2img as depth", elem_id="depth_send_to_img2img", size="sm")
                send_cn = gr.Button("Send to ControlNet (txt2img, unit 0)", elem_id="depth_send_to_controlnet",
                                    size="sm")
            panel = results.build("depth2img")
    tab = DepthTab(image, estimator, resolution, invert, near, far, estimate, preview, grey, html_info, html_log,
                   progress, state, send, send_cn, prompt, negative, steps, strength, seed, generate_button, panel)
    image.upload(upload_check, inputs=[image], outputs=[html_log], show_progress="hidden")
    image.change(lambda: None, outputs=[state], show_progress="hidden", queue=False)  # a new picture: no map yet
    estimate.click(run_estimate, inputs=[image, estimator, resolution, invert, near, far],
                   outputs=[preview, grey, html_info, html_log, progress, state], show_progress="hidden",
                   concurrency_limit=None, concurrency_id="generate")
    generation_event = generate_button.click(
        run_generate, inputs=[image, estimator, state, invert, near, far, prompt, negative, steps, strength, seed],
        outputs=panel.outputs, show_progress="hidden", concurrency_limit=None, concurrency_id="generate")
    generation_event.then(None, js="() => window.studioAfterGenerate && window.studioAfterGenerate('depth2img')")
    return tab


def upload_check(value: Any) -> Any:
    if isinstance(value, uploads.UnreadableUpload):
        return common.error_html(value.message)
    return gr.skip()


def _adjust(invert: bool, near: float, far: float) -> maps.Adjust:
    return maps.Adjust(bool(invert), float(near), float(far)).check()


def estimate_work(image: Any, estimator: str, resolution: float, invert: bool, near: float, far: float):
    """Widget values -> the job (refusals now, as ValueErrors): estimate, adjust, save the three files."""
    picture = work.check_image(uploads.readable(image), "image")
    adjust = _adjust(invert, near, far)

    def job() -> work.DepthResult:
        result = work.make_depth(picture, str(estimator), int(resolution), adjust)
        work.save(result)
        return result
    return job


def result_html(result: work.DepthResult) -> str:
    saved = "".join(f"<li><code>{common.escape_multiline(display_path(p))}</code></li>" for p in result.saved)
    where = f"<p class='output-path'>Saved to:</p><ul class='depth-saved'>{saved}</ul>" if saved else ""
    return f"<div class='infotext-text'><p>{common.escape_multiline(result.info)}</p></div>{where}"


def run_estimate(request: gr.Request, image: Any, estimator: str, resolution: float, invert: bool, near: float,
                 far: float) -> Iterator[tuple[Any, ...]]:
    skip = gr.skip()
    started = time.perf_counter()
    yield skip, skip, skip, "", tasks.progress_html({"queued": True}, None), skip
    try:
        job = estimate_work(image, estimator, resolution, invert, near, far)
    except ValueError as e:
        yield skip, skip, skip, common.error_html(str(e)), "", skip
        return
    session = getattr(request, "session_hash", None)
    for update in tasks.run("depth", job, session, getattr(request, "username", None)):
        if not update.finished:
            yield skip, skip, skip, skip, update.progress_html, skip
        elif update.error is not None:
            yield skip, skip, skip, common.error_html(update.error), "", skip
        else:
            result: work.DepthResult = update.result
            log = f"<p class='time'>Time taken: {time.perf_counter() - started:.1f} sec.</p>"
            yield result.preview, result.grey, result_html(result), log, "", result.depth


def generate_work(image: Any, estimator: str, depth: np.ndarray | None, invert: bool, near: float, far: float,
                  prompt: str, negative: str, steps: float, strength: float, seed: float):
    """The tab's depth2img job: the map shown (when it was adjusted, or when there is one and no estimator
    is wanted) or else the estimator's raw prediction, as the model was trained."""
    from modules import processing, sd_models, shared

    picture = work.check_image(uploads.readable(image), "image")
    adjusted = depth is not None and not _adjust(invert, near, far).is_identity
    depth_map = maps.to_16bit(depth) if adjusted else None
    p = work.depth2img_request(picture, prompt, negative, int(steps), float(strength), int(seed), str(estimator),
                               depth_map)

    def job() -> processing.Processed:
        model = shared.sd_model or sd_models.load_model()
        if model.spec.variant != "depth":
            raise ValueError(f"Load an SD2 depth checkpoint first (the loaded model is {model.spec.display_name})")
        return processing.process_images(p)
    return job


def run_generate(request: gr.Request, image: Any, estimator: str, depth: Any, invert: bool, near: float, far: float,
                 prompt: str, negative: str, steps: float, strength: float, seed: float):
    yield from generation.stream("img2img", lambda: generate_work(image, estimator, depth, invert, near, far, prompt,
                                                                  negative, steps, strength, seed), request)


# --- the img2img tab's depth controls (the built-in always-on script scripts/depth2img.py) ---------------------

_img2img_controls: Img2ImgDepth | None = None  # those of the page being built, for the send button


def img2img_controls(automatic: str) -> Img2ImgDepth:
    global _img2img_controls
    with gr.Accordion("Depth (SD2 depth checkpoints)", open=False, elem_id="img2img_depth_accordion"):
        estimator = gr.Dropdown(label="Depth estimator", choices=[automatic, *estimator_choices()], value=automatic,
                                elem_id="img2img_depth_estimator")
        depth_map = gr.Image(label="Depth map (near = bright; replaces the estimate)", type="filepath",
                             image_mode=None, sources=["upload", "clipboard"], height=240, format="png",
                             elem_id="img2img_depth_map")
    _img2img_controls = Img2ImgDepth(estimator, depth_map)
    return _img2img_controls


def open_depth_map(path: Any) -> Image.Image | None:
    """The uploaded depth map (16-bit kept), or None; an unreadable file is a ValueError naming the problem."""
    if not path:
        return None
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"Could not read the depth map: {uploads.reason(e)}") from None


def wire_send(tab: DepthTab, tabs: gr.Tabs, i2i: Any) -> None:
    """"Send to img2img as depth": the picture becomes img2img's image and the map its depth source."""
    controls = _img2img_controls
    if controls is None:  # the img2img scripts were not built (no depth script): nothing to send to
        tab.send_to_img2img.visible = False
        return
    outputs = [i2i.init_img, controls.depth_map, tabs, i2i.mode_tabs, i2i.mode]

    def send(image: Any, depth: Any) -> list[Any]:
        if depth is None or image is None or isinstance(image, uploads.UnreadableUpload):
            return [gr.skip()] * len(outputs)
        return [image, maps.to_16bit(depth), gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img"), 0]

    tab.send_to_img2img.click(send, inputs=[tab.image, tab.state], outputs=outputs, show_progress="hidden")
    wire_send_to_controlnet(tab, tabs)


def controlnet_depth_values(depth: np.ndarray | None) -> tuple[np.ndarray, str] | None:
    """(the map as an 8-bit grey RGB picture, the depth model to pick or "") for a ControlNet unit: the map is
    already a depth map, so the unit's preprocessor is "none"."""
    from modules.controlnet.control_types import NO_MODEL, control_types

    if depth is None:
        return None
    grey = np.asarray(maps.to_8bit(depth).convert("RGB"))
    entry = control_types().get("Depth") or {}
    model = entry.get("default_model") or NO_MODEL
    return grey, "" if model == NO_MODEL else model


def wire_send_to_controlnet(tab: DepthTab, tabs: gr.Tabs) -> None:
    """"Send to ControlNet": txt2img's unit 0 gets the map (preprocessor none, the first depth model if there is
    one), enabled, its accordion opened, and the txt2img tab shown."""
    from modules.controlnet import ui as control_ui

    accordion = control_ui.built.get("txt2img")
    if accordion is None or not accordion.units:  # the ControlNet script is not on this page
        tab.send_to_controlnet.visible = False
        return
    unit = accordion.units[0]
    outputs = [unit.image, unit.enabled, unit.module, unit.model, accordion.accordion, tabs, tab.html_log]

    def send(depth: Any) -> list[Any]:
        values = controlnet_depth_values(depth)
        if values is None:
            return [gr.skip()] * (len(outputs) - 1) + ["<p class='error'>Estimate a depth map first.</p>"]
        grey, model = values
        return [grey, True, "none", model or gr.skip(), gr.Accordion(open=True), gr.Tabs(selected="txt2img"), ""]

    tab.send_to_controlnet.click(send, inputs=[tab.state], outputs=outputs, show_progress="hidden")
