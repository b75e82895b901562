"""The img2img tab with A1111's sub-tabs: img2img, sketch, inpaint (mask painted in the page), inpaint upload
and batch (uploads or a server folder, with A1111's PNG info options; modules/img2img_batch.py). Each becomes
StableDiffusionProcessingImg2Img requests on the shared queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules import batch_folders, img2img_batch, processing, scripts, shared
from modules.ui import (
    common,
    extra_networks,
    generation,
    masks,
    override_settings,
    params,
    results,
    scripts_ui,
    toprow,
    uploads,
)

MODES = ("img2img", "sketch", "inpaint", "inpaint_upload", "batch")
RESIZE_MODES = ["Just resize", "Crop and resize", "Resize and fill"]
MASK_MODES = ["Inpaint masked", "Inpaint not masked"]
MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]
INPAINT_AREAS = ["Whole picture", "Only masked"]
INPAINT_MODES = ("inpaint", "inpaint_upload", "batch")
BATCH_SOURCES = ("upload", "from dir")  # A1111's img2img_batch_source_type values


@dataclass
class Img2ImgTab:
    toprow: toprow.Toprow
    mode_tabs: gr.Tabs
    mode: gr.State
    init_img: gr.Image
    sketch: gr.ImageEditor
    inpaint: gr.ImageEditor
    inpaint_base: gr.Image
    inpaint_mask: gr.Image
    batch_input_dir: gr.Textbox
    batch_output_dir: gr.Textbox
    batch_mask_dir: gr.Textbox
    resize_mode: gr.Radio
    resize_by: gr.State
    scale_by: gr.Slider
    sampler: params.SamplerControls
    size: params.SizeControls
    batch: params.BatchControls
    denoising_strength: gr.Slider
    seeds: params.SeedControls
    tiling: gr.Checkbox
    refiner: params.RefinerControls
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    inpainting_fill: gr.Radio
    inpaint_full_res: gr.Radio
    inpaint_padding: gr.Slider
    inpaint_controls: gr.Group
    results: results.Results
    restore_faces: gr.Checkbox | None = None  # A1111's img2img_restore_faces; its paste key is "Face restoration"
    batch_source: gr.State | None = None
    batch_files: gr.File | None = None
    batch_use_png_info: gr.Checkbox | None = None
    batch_png_info_props: gr.CheckboxGroup | None = None
    batch_png_info_dir: gr.Textbox | None = None
    override_settings: gr.Dropdown | None = None  # filled by pastes (modules.ui.sendto)


def _editor(elem_id: str, label: str, brush: gr.Brush) -> gr.ImageEditor:
    return gr.ImageEditor(label=label, elem_id=elem_id, type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                          brush=brush, eraser=gr.Eraser(), layers=False, transforms=(), height=480,
                          format="png")


def build() -> Img2ImgTab:
    top = toprow.build("img2img")
    mode = gr.State(0)
    resize_by = gr.State(False)
    with extra_networks.generation_tabs("img2img"):
        with gr.Row(elem_id="img2img_settings_row", equal_height=False):
            with gr.Column(elem_id="img2img_settings", scale=1):
                with gr.Tabs(elem_id="mode_img2img") as mode_tabs:
                    with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tab0:
                        init_img = uploads.checked_image(label="Image for img2img", elem_id="img2img_image", type="pil",
                                            image_mode="RGBA", sources=["upload", "clipboard"], height=480)
                    with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as tab1:
                        sketch = _editor("img2img_sketch", "Image for img2img (draw on it)",
                                         gr.Brush(color_mode="defaults", default_color="#ff0000"))
                    with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tab2:
                        inpaint = _editor("img2maskimg", "Image for inpainting (paint the mask)",
                                          gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed",
                                                   default_size=24))
                    with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab3:
                        inpaint_base = uploads.checked_image(label="Image", elem_id="img_inpaint_base", type="pil", image_mode="RGBA",
                                                sources=["upload", "clipboard"], height=320)
                        inpaint_mask = uploads.checked_image(label="Mask (white = repaint)", elem_id="img_inpaint_mask", type="pil",
                                                image_mode="RGBA", sources=["upload", "clipboard"], height=320)
                    with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as tab4:
                        # no elem_id: ui-config.json could then select a sub-tab that batch_source does not follow
                        with gr.Tabs():
                            with gr.Tab("Upload", id="batch_upload", elem_id="img2img_batch_upload_tab") as up_tab:
                                # no file_types: gradio would refuse the whole event; a non-picture is named instead
                                batch_files = gr.File(label="Batch Process", file_count="multiple", type="filepath",
                                                      elem_id="img2img_image_batch")
                            with gr.Tab("From directory", id="batch_from_dir",
                                        elem_id="img2img_batch_from_dir_tab") as dir_tab:
                                gr.Markdown("Process every image in a folder on the server. Results go to the output "
                                            "folder (or the usual img2img folder when empty). Masks are matched by "
                                            "file name. Folders must be inside the data dir or a folder the server "
                                            "allows with --batch-dirs.")
                                batch_input = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                                batch_output = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
                                batch_mask = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                                        elem_id="img2img_batch_inpaint_mask_dir")
                        with gr.Accordion("PNG info", open=False, elem_id="img2img_batch_png_info"):
                            use_png_info = gr.Checkbox(label="Append png info to prompts",
                                                       elem_id="img2img_batch_use_png_info")
                            png_info_dir = gr.Textbox(label="PNG info directory",
                                                      placeholder="Leave empty to use the input pictures",
                                                      elem_id="img2img_batch_png_info_dir")
                            png_info_props = gr.CheckboxGroup(
                                list(img2img_batch.PNG_INFO_PROPS), label="Parameters to take from png info",
                                info="Prompts from png info are appended to the prompts set in the page.",
                                elem_id="img2img_batch_png_info_props")
                batch_source = gr.State(BATCH_SOURCES[0])
                for source, source_tab in zip(BATCH_SOURCES, (up_tab, dir_tab), strict=True):
                    source_tab.select(lambda s=source: s, outputs=[batch_source], show_progress="hidden", queue=False)
                resize_mode = gr.Radio(label="Resize mode", elem_id="resize_mode", choices=RESIZE_MODES,
                                       value=RESIZE_MODES[0], type="index")
                with gr.Group(elem_id="img2img_inpaint_controls", visible=False) as inpaint_controls:
                    mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4,
                                          elem_id="img2img_mask_blur")
                    mask_mode = gr.Radio(label="Mask mode", choices=MASK_MODES, value=MASK_MODES[0], type="index",
                                         elem_id="img2img_mask_mode")
                    inpainting_fill = gr.Radio(label="Masked content", choices=MASKED_CONTENT, value="original",
                                               type="index", elem_id="img2img_inpainting_fill")
                    with gr.Row():
                        inpaint_full_res = gr.Radio(label="Inpaint area", choices=INPAINT_AREAS, value=INPAINT_AREAS[0],
                                                    type="index", elem_id="img2img_inpaint_full_res")
                        inpaint_padding = gr.Slider(label="Only masked padding, pixels", minimum=0, maximum=256, step=4,
                                                    value=32, elem_id="img2img_inpaint_full_res_padding")
                for index, tab in enumerate((tab0, tab1, tab2, tab3, tab4)):
                    # Mask settings matter only where there is a mask (inpaint, inpaint upload, batch with masks).
                    tab.select(lambda i=index: (i, gr.Group(visible=MODES[i] in INPAINT_MODES)), outputs=[mode, inpaint_controls],
                               show_progress="hidden", queue=False)
                sampler = params.sampler_controls("img2img")
                with gr.Tabs(elem_id="img2img_tabs_resize"):
                    with gr.Tab("Resize to", id="to", elem_id="img2img_tab_resize_to") as to_tab:
                        with gr.Row():
                            size = params.size_controls("img2img")
                            detect = common.tool_button(common.DETECT_SIZE, "img2img_detect_image_size_btn",
                                                        "Set width and height from the image")
                    with gr.Tab("Resize by", id="by", elem_id="img2img_tab_resize_by") as by_tab:
                        scale_by = gr.Slider(label="Scale", minimum=0.05, maximum=4.0, step=0.05, value=1.0,
                                             elem_id="img2img_scale")
                to_tab.select(lambda: False, outputs=[resize_by], show_progress="hidden", queue=False)
                by_tab.select(lambda: True, outputs=[resize_by], show_progress="hidden", queue=False)
                batch = params.batch_controls("img2img")
                denoising = gr.Slider(label="Denoising strength", minimum=0.0, maximum=1.0, step=0.01, value=0.75,
                                      elem_id="img2img_denoising_strength")
                seeds = params.seed_controls("img2img")
                overrides = override_settings.build("img2img")
                tiling = params.tiling_checkbox("img2img")
                restore_faces = gr.Checkbox(label="Restore faces", elem_id="img2img_restore_faces",
                                            value=bool(shared.opts.data.get("face_restoration", False)))
                refiner = params.refiner_controls("img2img")
                script_inputs = scripts_ui.build(scripts.scripts_img2img)
            with gr.Column(scale=1):
                panel = results.build("img2img")

    tab = Img2ImgTab(top, mode_tabs, mode, init_img, sketch, inpaint, inpaint_base, inpaint_mask, batch_input,
                     batch_output, batch_mask, resize_mode, resize_by, scale_by, sampler, size, batch, denoising,
                     seeds, tiling, refiner, mask_blur, mask_mode, inpainting_fill, inpaint_full_res,
                     inpaint_padding, inpaint_controls, panel, restore_faces, batch_source, batch_files,
                     use_png_info, png_info_props, png_info_dir, overrides)
    toprow.wire(top, sampler.steps)
    params.wire_reuse_seed(seeds, panel.generation_info, panel.selected_index)
    detect.click(detect_size, inputs=[mode, init_img, sketch, inpaint, inpaint_base],
                 outputs=[size.width, size.height], show_progress="hidden")
    generation.wire_buttons(top, panel, generate, [overrides] + inputs(tab) + script_inputs)
    for picture in (init_img, inpaint_base, inpaint_mask):
        # Say at once when a dropped file is not a picture, where the person is looking.
        picture.upload(upload_check, inputs=[picture], outputs=[panel.html_log], show_progress="hidden")
    return tab


def upload_check(value: Any) -> Any:
    if isinstance(value, uploads.UnreadableUpload):
        return common.error_html(value.message)
    return gr.skip()


def inputs(t: Img2ImgTab) -> list[Any]:
    return [t.mode, t.init_img, t.sketch, t.inpaint, t.inpaint_base, t.inpaint_mask, t.batch_input_dir,
            t.batch_output_dir, t.batch_mask_dir, t.resize_mode, t.resize_by, t.scale_by, t.mask_blur, t.mask_mode,
            t.inpainting_fill, t.inpaint_full_res, t.inpaint_padding, t.denoising_strength,
            t.toprow.prompt, t.toprow.negative_prompt, t.toprow.styles, t.sampler.steps, t.sampler.sampler,
            t.sampler.scheduler, t.size.width, t.size.height, t.batch.batch_count, t.batch.batch_size,
            t.batch.cfg_scale, t.seeds.seed, t.seeds.extra, t.seeds.subseed, t.seeds.subseed_strength,
            t.seeds.seed_resize_from_w, t.seeds.seed_resize_from_h, t.tiling, t.refiner.enabled,
            t.refiner.checkpoint, t.refiner.switch_at, t.restore_faces, t.batch_source, t.batch_files,
            t.batch_use_png_info, t.batch_png_info_props, t.batch_png_info_dir]


def _source_image(mode: int, init_img: Any, sketch: Any, inpaint: Any, inpaint_base: Any) -> Image.Image | None:
    return [init_img, masks.editor_composite(sketch), masks.editor_background(inpaint), inpaint_base, None][mode]


def detect_size(mode: int, init_img: Any, sketch: Any, inpaint: Any, inpaint_base: Any):
    image = _source_image(int(mode or 0), init_img, sketch, inpaint, inpaint_base)
    if image is None or isinstance(image, uploads.UnreadableUpload):
        return gr.skip(), gr.skip()
    return max(64, image.width // 8 * 8), max(64, image.height // 8 * 8)


def _size(image: Image.Image | None, resize_by: bool, scale_by: float, width: float, height: float) -> tuple[int, int]:
    if resize_by and image is not None:
        # "Resize by" scales the source; sizes must be multiples of 8 for the latent space.
        return max(64, int(image.width * scale_by) // 8 * 8), max(64, int(image.height * scale_by) // 8 * 8)
    return int(width), int(height)


def _common_fields(values: list[Any]) -> dict[str, Any]:
    (prompt, negative, styles, steps, sampler_name, scheduler, _width, _height, batch_count, batch_size, cfg_scale,
     seed, extras, subseed, subseed_strength, resize_w, resize_h, tiling, use_refiner, refiner_checkpoint,
     refiner_switch_at) = values
    return dict(
        prompt=prompt or "", negative_prompt=negative or "", styles=list(styles or []), steps=int(steps),
        sampler_name=sampler_name, scheduler=scheduler, n_iter=int(batch_count), batch_size=int(batch_size),
        cfg_scale=float(cfg_scale), seed=int(seed if seed is not None else -1),
        subseed=int(subseed if subseed is not None and extras else -1),
        subseed_strength=float(subseed_strength) if extras else 0.0,
        seed_resize_from_w=int(resize_w) if extras and resize_w else -1,
        seed_resize_from_h=int(resize_h) if extras and resize_h else -1,
        tiling=bool(tiling),
        refiner_checkpoint=refiner_checkpoint if use_refiner and refiner_checkpoint else None,
        refiner_switch_at=float(refiner_switch_at) if use_refiner and refiner_checkpoint else None,
    )


FIELD_COUNT = 45  # the values of inputs(); the scripts' values follow them


def generate(request: gr.Request, overrides: list[str] | None, *values: Any):
    yield from generation.stream("img2img", lambda: make_work(list(values[:FIELD_COUNT]), list(values[FIELD_COUNT:]),
                                                              overrides), request)


def make_work(values: list[Any], script_args: list[Any] | None = None, overrides: list[str] | None = None):
    """Widget values -> a function the queue runs (one request, or a loop over a batch folder); `overrides`: the
    Override settings box's entries."""
    (mode, init_img, sketch, inpaint, inpaint_base, inpaint_mask, batch_input, batch_output, batch_mask,
     resize_mode, resize_by, scale_by, mask_blur, mask_mode, inpainting_fill, inpaint_full_res, padding,
     denoising) = values[:18]
    rest = values[18:39]
    width, height = rest[6], rest[7]
    mode = int(mode or 0)
    fields = _common_fields(rest)
    fields["restore_faces"] = bool(values[39]) if len(values) > 39 else False
    fields["override_settings"] = override_settings.checked(overrides)  # refused before any picture is read
    # the Batch sub-tab's source and PNG info options (absent: a directory batch without PNG info)
    source, files, use_png_info, png_info_props, png_info_dir = (values[40:45] + ["from dir", None, False, [], ""])[:5]
    inpaint_fields = dict(mask_blur=int(mask_blur), inpainting_mask_invert=int(mask_mode or 0),
                          inpainting_fill=int(inpainting_fill if inpainting_fill is not None else 1),
                          inpaint_full_res=bool(inpaint_full_res), inpaint_full_res_padding=int(padding))
    if MODES[mode] == "batch":
        return _batch_work(batch_input, batch_output, batch_mask, fields, inpaint_fields, int(resize_mode or 0),
                           bool(resize_by), float(scale_by), width, height, float(denoising), script_args,
                           files=list(files or []) if source == "upload" else None,
                           png=img2img_batch.png_info(bool(use_png_info), png_info_props, png_info_dir))

    image = uploads.readable(_source_image(mode, init_img, sketch, inpaint, inpaint_base))
    if image is None:
        raise ValueError("Add an image first (drop one on the image box of this sub-tab).")
    mask = None
    if MODES[mode] == "inpaint":
        mask = masks.painted_mask(inpaint)
        if mask is None:
            raise ValueError("Paint over the part of the image to repaint first (the mask is empty).")
    elif MODES[mode] == "inpaint_upload":
        mask = masks.uploaded_mask(uploads.readable(inpaint_mask))
        if mask is None:
            raise ValueError("Add a mask image too (white where the picture should change).")
    w, h = _size(image, bool(resize_by), float(scale_by), width, height)
    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[image.convert("RGB")], mask=mask, resize_mode=int(resize_mode or 0),
        denoising_strength=float(denoising), width=w, height=h, **fields, **(inpaint_fields if mask else {}))
    scripts_ui.attach(p, scripts.scripts_img2img, list(script_args or []))
    return lambda: scripts.process_request(p)


def _batch_work(input_dir: str, output_dir: str, mask_dir: str, fields: dict[str, Any],
                inpaint_fields: dict[str, Any], resize_mode: int, resize_by: bool, scale_by: float, width: Any,
                height: Any, denoising: float, script_args: list[Any] | None = None, *,
                files: list[Any] | None = None, png: img2img_batch.PngInfo | None = None):
    """The job for the Batch sub-tab: the uploaded `files` when given (saved to the usual img2img folder, as in
    A1111), else the folders, which are typed by whoever reaches the page: limited to the allowed roots."""
    output = None
    if files is not None:
        pictures = img2img_batch.uploaded(files)
        shown = f"{len(pictures)} upload(s)"
    else:
        folders = batch_folders.check(input_dir, output_dir, mask_dir, shared.cmd_opts)
        pictures, output, shown = img2img_batch.from_folder(folders), folders.output, input_dir.strip()
        if not pictures:
            raise ValueError(f"No images in {shown}")

    def make_p(image: Image.Image, mask: Image.Image | None, picture_fields: dict[str, Any]
               ) -> processing.StableDiffusionProcessingImg2Img:
        w, h = _size(image, resize_by, scale_by, width, height)
        # outputs are named by images.save_image, which keeps them inside the output folder
        p = processing.StableDiffusionProcessingImg2Img(
            init_images=[image], mask=mask, resize_mode=resize_mode, denoising_strength=denoising, width=w,
            height=h, outpath_samples=output, do_not_save_grid=True, **picture_fields,
            **(inpaint_fields if mask else {}))
        # the always-on scripts take part in each image, as in A1111 (a selectable script runs per image too)
        scripts_ui.attach(p, scripts.scripts_img2img, list(script_args or []))
        return p

    return lambda: img2img_batch.run(pictures, make_p, fields, png, shown)
