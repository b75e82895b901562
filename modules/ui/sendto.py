"""Cross-tab buttons: PNG Info and the result panels send an image and its parameters to txt2img / img2img /
inpaint, switching to that tab."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import infotext_utils, scripts
from modules.ui import extra_networks, hires_fix, img2img, paste, results
from modules.ui.pnginfo import PngInfoTab
from modules.ui.txt2img import Txt2ImgTab


def _img2img_fields(t: img2img.Img2ImgTab) -> list[paste.Field]:
    return paste.common_fields(t.toprow, t.sampler, t.size, t.batch, t.seeds, t.tiling, t.refiner) + [
        (t.denoising_strength, "Denoising strength"),
        (t.restore_faces, lambda d: "Face restoration" in d),
        (t.mask_blur, "Mask blur"),
        (t.mask_mode, "Mask mode"),
        (t.inpainting_fill, "Masked content"),
        (t.inpaint_full_res, "Inpaint area"),
        (t.inpaint_padding, "Masked area padding"),
    ]


def _script_fields(runner: scripts.ScriptRunner) -> list[paste.Field]:
    """The fields scripts register for pasting (A1111's `script.infotext_fields`: ControlNet's units, ...)."""
    return [field for script in runner.scripts for field in (script.infotext_fields or [])]


def wire(tabs: gr.Tabs, t2i: Txt2ImgTab, i2i: img2img.Img2ImgTab, png: PngInfoTab,
         image_only_panels: tuple[results.Results, ...] = ()) -> None:
    """`image_only_panels` (Extras) send their picture without parameters: their infotext is not a generation's."""
    t2i_fields = paste.common_fields(t2i.toprow, t2i.sampler, t2i.size, t2i.batch, t2i.seeds, t2i.tiling, t2i.refiner)
    if t2i.hires is not None:
        t2i_fields += hires_fix.paste_fields(t2i.hires)
    t2i_fields.append((t2i.restore_faces, lambda d: "Face restoration" in d))
    t2i_fields += _script_fields(scripts.scripts_txt2img)
    i2i_fields = _img2img_fields(i2i) + _script_fields(scripts.scripts_img2img)
    # A1111's registry, so extensions can find the fields (and the Override settings box) of each tab.
    infotext_utils.add_paste_fields("txt2img", None, t2i_fields, t2i.override_settings)
    infotext_utils.add_paste_fields("img2img", i2i.init_img, i2i_fields, i2i.override_settings)
    infotext_utils.add_paste_fields("inpaint", i2i.inpaint, i2i_fields, i2i.override_settings)

    def to_txt2img(text: str) -> list[Any]:
        if not text:
            return [gr.skip()] * (len(t2i_fields) + 3)
        return paste.with_overrides(t2i_fields, paste.parse(text)) + [gr.Tabs(selected="txt2img"),
                                                                      extra_networks.show_generation("txt2img")]

    def to_img2img_with(mode: str):
        def send(image: str | None, text: str) -> list[Any]:
            # no text (a picture alone): the fields and the box keep what they have
            values = paste.with_overrides(i2i_fields, paste.parse(text)) if text else \
                [gr.skip()] * (len(i2i_fields) + 1)
            if image is None:
                picture = gr.skip()
            elif mode == "inpaint":
                picture = {"background": image, "layers": [], "composite": image}
            else:
                picture = image
            return values + [picture, gr.Tabs(selected="img2img"), gr.Tabs(selected=mode),
                             img2img.MODES.index(mode), gr.Group(visible=mode in img2img.INPAINT_MODES),
                             extra_networks.show_generation("img2img")]

        return send

    # ↙️ in each tab's top row: the same fields as "send to", from the tab's own prompt box (or params.txt).
    for top, fields, box in ((t2i.toprow, t2i_fields, t2i.override_settings),
                             (i2i.toprow, i2i_fields, i2i.override_settings)):
        top.paste.click(lambda text, fields=fields: paste.from_prompt(fields, text, overrides=True),
                        inputs=[top.prompt], outputs=[c for c, _ in fields] + [box, top.paste_result],
                        show_progress="hidden")

    t2i_outputs = [c for c, _ in t2i_fields] + [t2i.override_settings, tabs, extra_networks.built_tabs["txt2img"]]
    i2i_outputs = [c for c, _ in i2i_fields] + [i2i.override_settings]

    def outputs_for(mode: str) -> list[Any]:
        picture = i2i.inpaint if mode == "inpaint" else i2i.init_img
        return i2i_outputs + [picture, tabs, i2i.mode_tabs, i2i.mode, i2i.inpaint_controls,
                              extra_networks.built_tabs["img2img"]]

    png.send_to_txt2img.click(to_txt2img, inputs=[png.infotext], outputs=t2i_outputs, show_progress="hidden")
    for button, mode in ((png.send_to_img2img, "img2img"), (png.send_to_inpaint, "inpaint")):
        button.click(to_img2img_with(mode), inputs=[png.image, png.infotext], outputs=outputs_for(mode),
                     show_progress="hidden")

    for panel in (t2i.results, i2i.results):
        for button, mode in ((panel.send_to_img2img, "img2img"), (panel.send_to_inpaint, "inpaint")):
            send = to_img2img_with(mode)

            def from_gallery(gallery: Any, index: int | None, info_json: str, send=send) -> list[Any]:
                return send(results.image_at(gallery, index), results.infotext_at(info_json, index))

            button.click(from_gallery, inputs=[panel.gallery, panel.selected_index, panel.generation_info],
                         outputs=outputs_for(mode), show_progress="hidden")

    for panel in image_only_panels:
        for button, mode in ((panel.send_to_img2img, "img2img"), (panel.send_to_inpaint, "inpaint")):
            send = to_img2img_with(mode)

            def image_only(gallery: Any, index: int | None, send=send) -> list[Any]:
                return send(results.image_at(gallery, index), "")

            button.click(image_only, inputs=[panel.gallery, panel.selected_index], outputs=outputs_for(mode),
                         show_progress="hidden")


def wire_extras(tabs: gr.Tabs, ext: Any, panels: list[results.Results], png: PngInfoTab) -> None:
    """"Send to extras" (A1111's): the picture alone goes to the Extras tab's Single Image source; the Extras
    panel's own img2img / inpaint buttons send its results on like the other panels'."""
    outputs = [ext.image, tabs, ext.mode_tabs, ext.mode]

    def send(image: str | None) -> list[Any]:
        if not image:
            return [gr.skip()] * len(outputs)
        return [image, gr.Tabs(selected="extras"), gr.Tabs(selected="single_image"), 0]

    for panel in panels:
        if panel.send_to_extras is None:
            continue

        def from_gallery(gallery: Any, index: int | None) -> list[Any]:
            return send(results.image_at(gallery, index))

        panel.send_to_extras.click(from_gallery, inputs=[panel.gallery, panel.selected_index], outputs=outputs,
                                   show_progress="hidden")
    if png.send_to_extras is not None:
        png.send_to_extras.click(send, inputs=[png.image], outputs=outputs, show_progress="hidden")
