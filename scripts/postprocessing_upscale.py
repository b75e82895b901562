"""Extras "Upscale" (A1111's): upscaler 1, optionally blended with upscaler 2, by a factor or to a size."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from modules import scripts_postprocessing, shared
from modules.ui_components import FormRow, InputAccordion, ToolButton

SWITCH_SIZE = "\u21c5"  # ⇅


def upscaler_names() -> list[str]:
    return [x.name for x in shared.sd_upscalers]


def find_upscaler(name: str | None) -> Any:
    """The registry entry called `name`; None for "None"/empty; ValueError naming it when there is none."""
    if name in (None, "", "None"):
        return None
    for upscaler in shared.sd_upscalers:
        if upscaler.name == name:
            return upscaler
    raise ValueError(f"could not find upscaler named {name}")


def limit_size_by_one_dimension(w: float, h: float, limit: int) -> tuple[int, int]:
    """The size w x h shrunk (aspect kept) so its larger side is `limit` (A1111's helper)."""
    if h > w and h > limit:
        w, h = limit * w / h, limit
    elif w > limit:
        w, h = limit, limit * h / w
    return int(w), int(h)


def target_size(image: Image.Image, mode: int, by: float, max_side: int, to_w: int, to_h: int,
                crop: bool) -> tuple[float, int, int, bool, bool]:
    """(factor, width, height, scale-to, crop) after A1111's rules: "Scale to" uses the larger ratio; "Scale
    by" with a max side length that would be passed turns into "Scale to" the limited size, without crop."""
    if mode == 1:
        return max(to_w / image.width, to_h / image.height), to_w, to_h, True, crop
    if max_side and max(image.size) * by > max_side:
        w, h = limit_size_by_one_dimension(image.width * by, image.height * by, max_side)
        return max(w / image.width, h / image.height), w, h, True, False
    return by, int(image.width * by), int(image.height * by), False, False


class ScriptPostprocessingUpscale(scripts_postprocessing.ScriptPostprocessing):
    name = "Upscale"
    order = 1000

    def ui(self) -> dict[str, Any]:
        names = upscaler_names() or ["None"]
        selected_tab = gr.Number(value=0, visible=False, elem_id="extras_upscale_mode")
        with InputAccordion(True, label="Upscale", elem_id="extras_upscale") as upscale_enabled:
            with FormRow():
                upscaler_1 = gr.Dropdown(label="Upscaler 1", elem_id="extras_upscaler_1", choices=names,
                                         value=names[0])
            with FormRow():
                upscaler_2 = gr.Dropdown(label="Upscaler 2", elem_id="extras_upscaler_2", choices=names,
                                         value=names[0])
                upscaler_2_visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, value=0.0,
                                                  label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as tab_scale_by:
                    with gr.Row():
                        upscaling_resize = gr.Slider(minimum=1.0, maximum=8.0, step=0.05, value=4, label="Resize",
                                                     elem_id="extras_upscaling_resize", scale=4)
                        max_side_length = gr.Number(label="Max side length", value=0, minimum=0, precision=0,
                                                    step=8, elem_id="extras_upscale_max_side_length", scale=1)
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as tab_scale_to:
                    with FormRow():
                        with gr.Column(scale=4):
                            upscaling_resize_w = gr.Slider(minimum=64, maximum=8192, step=8, value=512, label="Width",
                                                           elem_id="extras_upscaling_resize_w")
                            upscaling_resize_h = gr.Slider(minimum=64, maximum=8192, step=8, value=512,
                                                           label="Height", elem_id="extras_upscaling_resize_h")
                        with gr.Column(scale=1, min_width=120):
                            switch = ToolButton(value=SWITCH_SIZE, elem_id="upscaling_res_switch_btn",
                                                tooltip="Switch width/height")
                            upscaling_crop = gr.Checkbox(label="Crop to fit", value=True,
                                                         elem_id="extras_upscaling_crop")

        switch.click(lambda w, h: (h, w), inputs=[upscaling_resize_w, upscaling_resize_h],
                     outputs=[upscaling_resize_w, upscaling_resize_h], show_progress="hidden", queue=False)
        tab_scale_by.select(fn=lambda: 0, outputs=[selected_tab], show_progress="hidden", queue=False)
        tab_scale_to.select(fn=lambda: 1, outputs=[selected_tab], show_progress="hidden", queue=False)

        return {
            "upscale_enabled": upscale_enabled,
            "upscale_mode": selected_tab,
            "upscale_by": upscaling_resize,
            "max_side_length": max_side_length,
            "upscale_to_width": upscaling_resize_w,
            "upscale_to_height": upscaling_resize_h,
            "upscale_crop": upscaling_crop,
            "upscaler_1_name": upscaler_1,
            "upscaler_2_name": upscaler_2,
            "upscaler_2_visibility": upscaler_2_visibility,
        }

    def check(self, upscale_enabled: bool = True, upscaler_1_name: str | None = None,
              upscaler_2_name: str | None = None, **_: Any) -> None:
        """Unknown upscaler names are refused (by name) before the job is queued."""
        if upscale_enabled:
            find_upscaler(upscaler_1_name)
            find_upscaler(upscaler_2_name)

    def upscale(self, image: Image.Image, info: dict[str, Any], upscaler: Any, upscale_mode: int, upscale_by: float,
                max_side_length: int, upscale_to_width: int, upscale_to_height: int, upscale_crop: bool
                ) -> Image.Image:
        factor, w, h, scale_to, crop = target_size(image, upscale_mode, upscale_by, max_side_length,
                                                   upscale_to_width, upscale_to_height, upscale_crop)
        if upscale_mode == 1:
            info["Postprocess upscale to"] = f"{upscale_to_width}x{upscale_to_height}"
        else:
            info["Postprocess upscale by"] = upscale_by
            if scale_to:
                info["Max side length"] = max_side_length
        image = upscaler.scaler.upscale(image, factor, upscaler.data_path)
        if scale_to and not crop and max_side_length and upscale_mode == 0 and image.size != (w, h):
            image = image.resize((w, h), resample=Image.Resampling.LANCZOS)  # the limit is a hard one
        if scale_to and crop:
            # centre the (at least as large) picture on a canvas of the asked size: the overflow is cut off
            cropped = Image.new(image.mode if image.mode in ("RGB", "RGBA") else "RGB", (w, h))
            cropped.paste(image, box=(w // 2 - image.width // 2, h // 2 - image.height // 2))
            image = cropped
            info["Postprocess crop to fit"] = True
        return image

    def process_firstpass(self, pp: scripts_postprocessing.PostprocessedImage, upscale_enabled: bool = True,
                          upscale_mode: int = 1, upscale_by: float = 2.0, max_side_length: int = 0,
                          upscale_to_width: int = 512, upscale_to_height: int = 512, upscale_crop: bool = False,
                          upscaler_1_name: str | None = None, upscaler_2_name: str | None = None,
                          upscaler_2_visibility: float = 0.0) -> None:
        _, w, h, _, _ = target_size(pp.image, int(upscale_mode or 0), float(upscale_by), int(max_side_length or 0),
                                    int(upscale_to_width), int(upscale_to_height), bool(upscale_crop))
        pp.shared.target_width, pp.shared.target_height = w, h

    def process(self, pp: scripts_postprocessing.PostprocessedImage, upscale_enabled: bool = True,
                upscale_mode: int = 1, upscale_by: float = 2.0, max_side_length: int = 0,
                upscale_to_width: int = 512, upscale_to_height: int = 512, upscale_crop: bool = False,
                upscaler_1_name: str | None = None, upscaler_2_name: str | None = None,
                upscaler_2_visibility: float = 0.0) -> None:
        if not upscale_enabled:
            return
        upscaler1 = find_upscaler(upscaler_1_name)
        upscaler2 = find_upscaler(upscaler_2_name)
        if upscaler1 is None:
            return  # A1111: "None" as the first upscaler leaves the picture as it is
        args = (int(upscale_mode or 0), float(upscale_by), int(max_side_length or 0), int(upscale_to_width),
                int(upscale_to_height), bool(upscale_crop))
        upscaled = self.upscale(pp.image, pp.info, upscaler1, *args)
        pp.info["Postprocess upscaler"] = upscaler1.name
        visibility = float(upscaler_2_visibility or 0)
        if upscaler2 is not None and visibility > 0:
            second = self.upscale(pp.image, pp.info, upscaler2, *args)
            if second.mode != upscaled.mode:
                second = second.convert(upscaled.mode)
            if second.size != upscaled.size:
                second = second.resize(upscaled.size, resample=Image.Resampling.LANCZOS)
            upscaled = Image.blend(upscaled, second, visibility)
            pp.info["Postprocess upscaler 2"] = upscaler2.name
        pp.image = upscaled
