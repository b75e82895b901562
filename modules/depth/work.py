"""The Depth tab's and /sdapi/v1/depth's work, run as queue jobs: estimate a depth map, adjust it, save it
(16-bit PNG, 8-bit grey, coloured preview, with infotext), and generate with depth2img from it.

Front doors call these; nothing here knows about gradio or HTTP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from modules import paths, shared
from modules.depth import estimators, maps
from modules.depth.weights import MissingDepthWeights, refusal

OUTDIR_SETTING = "outdir_depth_samples"
DEFAULT_OUTDIR = os.path.join("outputs", "depth-images")
MAX_SIDE = 8192  # pixels on either side of a picture to estimate; a bigger upload is refused by name
MAX_GENERATE_SIDE = 1024  # depth2img from the tab works at the picture's size, scaled down to this at most


@dataclass
class DepthResult:
    depth: np.ndarray  # adjusted, [0, 1], near = 1
    estimator: str | None  # None: the map came from the user
    info: str
    saved: list[str] = field(default_factory=list)  # 16-bit PNG, 8-bit grey, preview (when saved)

    @property
    def map16(self) -> Image.Image:
        return maps.to_16bit(self.depth)

    @property
    def grey(self) -> Image.Image:
        return maps.to_8bit(self.depth)

    @property
    def preview(self) -> Image.Image:
        return maps.to_preview(self.depth)


def outdir() -> str:
    configured = str(shared.opts.data.get(OUTDIR_SETTING, "") or "").strip() if hasattr(shared.opts, "data") else ""
    return configured or os.path.join(paths.data_path, DEFAULT_OUTDIR)


def infotext(estimator: str | None, resolution: int | None, adjust: maps.Adjust, size: tuple[int, int]) -> str:
    params: dict[str, Any] = {"Depth estimator": estimator} if estimator else {"Depth source": "user map"}
    if estimator:
        params["Processing resolution"] = resolution
    if adjust.invert:
        params["Invert"] = True
    if adjust.near != 1.0 or adjust.far != 0.0:
        params["Near clip"], params["Far clip"] = adjust.near, adjust.far
    params["Size"] = f"{size[0]}x{size[1]}"
    return ", ".join(f"{k}: {v}" for k, v in params.items())


def check_image(image: Image.Image | None, what: str = "image") -> Image.Image:
    if image is None:
        raise ValueError(f"Add an {what} first.")
    if max(image.size) > MAX_SIDE:
        raise ValueError(f"The {what} is {image.width}x{image.height}; at most {MAX_SIDE} pixels a side")
    return image


def make_depth(image: Image.Image | None, estimator: str, resolution: int, adjust: maps.Adjust,
               depth_map: Image.Image | None = None) -> DepthResult:
    """Estimate (or take the user's map, at the picture's size) and adjust. Refusals are ValueErrors."""
    adjust.check()
    if depth_map is not None:
        depth_map = check_image(depth_map, "depth map")
        size = image.size if image is not None else depth_map.size
        raw = maps.from_picture(depth_map)
        if (raw.shape[1], raw.shape[0]) != size:
            raw = np.asarray(Image.fromarray(raw, "F").resize(size, Image.Resampling.BICUBIC), np.float32)
        depth = maps.adjust(np.clip(raw, 0, 1), adjust)
        return DepthResult(depth, None, infotext(None, None, adjust, size))
    image = check_image(image)
    if estimator not in estimators.names():
        raise ValueError(f"unknown depth estimator {estimator!r}; known: {', '.join(estimators.names())}")
    if not 64 <= int(resolution) <= 2048:
        raise ValueError(f"processing resolution must be between 64 and 2048, not {resolution}")
    try:
        estimate = estimators.estimate(estimator, image, int(resolution))
    except MissingDepthWeights as e:
        raise refusal(e) from e
    depth = maps.adjust(estimate, adjust)
    return DepthResult(depth, estimator, infotext(estimator, int(resolution), adjust, image.size))


def save(result: DepthResult, folder: str | None = None) -> list[str]:
    """The 16-bit PNG, then `<name>-grey.png` and `<name>-preview.png` beside it, each with the infotext."""
    from modules import images

    folder = folder or outdir()
    first, _ = images.save_image(result.map16, folder, "", extension="png", info=result.info, no_prompt=True,
                                 save_to_dirs=False)
    stem = os.path.splitext(os.path.basename(first))[0]
    grey, _ = images.save_image(result.grey, folder, "", extension="png", info=result.info,
                                forced_filename=f"{stem}-grey", save_to_dirs=False)
    preview, _ = images.save_image(result.preview, folder, "", extension="png", info=result.info,
                                   forced_filename=f"{stem}-preview", save_to_dirs=False)
    result.saved = [first, grey, preview]
    return result.saved


def generation_size(image: Image.Image) -> tuple[int, int]:
    """The picture's size scaled to at most MAX_GENERATE_SIDE, in multiples of 8, at least 64."""
    scale = min(1.0, MAX_GENERATE_SIDE / max(image.size))
    return (max(64, int(image.width * scale) // 8 * 8), max(64, int(image.height * scale) // 8 * 8))


def depth2img_request(image: Image.Image, prompt: str, negative_prompt: str, steps: int, denoising_strength: float,
                      seed: int, estimator: str | None, depth_map: Image.Image | None, cfg_scale: float = 7.0):
    """An img2img request for the loaded SD2 depth model: the user's (or the tab's adjusted) map when given,
    else the estimator's."""
    from modules import processing

    image = check_image(image).convert("RGB")
    width, height = generation_size(image)
    return processing.StableDiffusionProcessingImg2Img(
        init_images=[image], prompt=prompt or "", negative_prompt=negative_prompt or "", steps=int(steps),
        denoising_strength=float(denoising_strength), seed=int(seed), width=width, height=height,
        cfg_scale=float(cfg_scale), depth_map=depth_map, depth_estimator=None if depth_map is not None else estimator,
        sampler_name=None)
