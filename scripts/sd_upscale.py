"""SD upscale (A1111's img2img script): enlarge the picture with an upscaler, cut it into overlapping tiles of the
img2img size, redraw each tile through img2img, and blend the tiles back together over their overlap."""

from __future__ import annotations

import logging
import math
from typing import Any

import gradio as gr
from PIL import Image

from modules import images, processing, scripts, shared
from modules.filename_patterns import shared_opt
from modules.processing import Processed

log = logging.getLogger(__name__)


def find_upscaler(choice: int | str) -> Any:
    """An entry of shared.sd_upscalers by index (the UI's radio) or by name (API clients); refused by name."""
    listed = shared.sd_upscalers
    if isinstance(choice, str):
        for upscaler in listed:
            if upscaler.name.lower() == choice.lower():
                return upscaler
        raise ValueError(f"SD upscale: unknown upscaler {choice!r}; one of: {', '.join(u.name for u in listed)}")
    if isinstance(choice, bool) or not 0 <= int(choice) < len(listed):
        raise ValueError(f"SD upscale: there is no upscaler number {choice!r}")
    return listed[int(choice)]


def tile_count(grid: images.Grid) -> int:
    return sum(len(row) for _y, _h, row in grid.tiles)


class Script(scripts.Script):
    def title(self) -> str:
        return "SD upscale"

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def ui(self, is_img2img: bool) -> list[Any]:
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; "
                       "use width and height sliders to set tile size</p>")
        overlap = gr.Slider(minimum=0, maximum=256, step=16, label="Tile overlap", value=64,
                            elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label="Scale Factor", value=2.0,
                                 elem_id=self.elem_id("scale_factor"))
        names = [x.name for x in shared.sd_upscalers] or ["None"]
        upscaler_index = gr.Radio(label="Upscaler", choices=names, value=names[0], type="index",
                                  elem_id=self.elem_id("upscaler_index"))
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p: Any, _info: Any = None, overlap: int = 64, upscaler_index: int | str = 0,
            scale_factor: float = 2.0) -> Processed:
        overlap, scale_factor = int(overlap), float(scale_factor)
        if not 0 <= overlap < min(p.width, p.height):
            raise ValueError(f"SD upscale: tile overlap {overlap} must be less than the tile size "
                             f"{p.width}x{p.height}")
        if not math.isfinite(scale_factor) or scale_factor <= 0:
            raise ValueError(f"SD upscale: scale factor {scale_factor!r} must be above 0")
        if not p.init_images:
            raise ValueError("SD upscale needs an image")
        upscaler = find_upscaler(upscaler_index)
        processing.fix_seed(p)
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = upscaler.name

        init_img = p.init_images[0].convert("RGB")
        img = upscaler.scaler.upscale(init_img, scale_factor, upscaler.data_path) if upscaler.name != "None" \
            else init_img
        if img.width < p.width or img.height < p.height:  # a tile larger than the picture: pad to one tile
            padded = Image.new("RGB", (max(img.width, p.width), max(img.height, p.height)))
            padded.paste(img)
            img = padded
        grid = images.split_grid(img, tile_w=p.width, tile_h=p.height, overlap=overlap)
        work = [tile[2] for _y, _h, row in grid.tiles for tile in row]

        seed, batch_size, upscale_count = p.seed, p.batch_size, p.n_iter
        p.n_iter = 1
        p.do_not_save_grid = True
        save_samples = not p.do_not_save_samples and bool(shared_opt("samples_save", True))
        p.do_not_save_samples = True
        batch_count = math.ceil(len(work) / batch_size)
        state = getattr(shared, "state", None)
        total = batch_count * upscale_count
        log.info("SD upscaling will process a total of %d images tiled as %dx%d per upscale in a total of %d "
                 "batches.", len(work), len(grid.tiles[0][2]), len(grid.tiles), total)

        initial_info, result_images, infotexts = None, [], []
        for n in range(upscale_count):
            start_seed = seed + n
            p.seed = start_seed
            work_results: list[Image.Image] = []
            for i in range(batch_count):
                if state is not None and state.interrupted:
                    break
                p.batch_size = batch_size
                p.init_images = work[i * batch_size:(i + 1) * batch_size]
                if state is not None:
                    state.job = f"Batch {i + 1 + n * batch_count} out of {total}"
                processed = processing.process_images(p)
                if initial_info is None:
                    initial_info = processed.info
                p.seed = processed.seed + 1
                work_results += processed.images[processed.index_of_first_image:]
            index = 0
            for _y, _h, row in grid.tiles:
                for tile in row:
                    tile[2] = work_results[index] if index < len(work_results) else Image.new("RGB", (p.width,
                                                                                                   p.height))
                    index += 1
            combined = images.combine_grid(grid).crop((0, 0, *img.size))
            if save_samples:
                images.save_image(combined, p.outpath_samples or processing._outdir("img2img", True), "",
                                  start_seed, p.prompt, shared_opt("samples_format", "png"), info=initial_info, p=p)
            combined.info["parameters"] = initial_info or ""
            result_images.append(combined)
            infotexts.append(initial_info or "")
        return Processed(p, result_images, seed, initial_info or "", infotexts=infotexts)
