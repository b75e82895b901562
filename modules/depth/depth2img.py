"""depth2img: the image conditioning of Stable Diffusion 2's depth model (a UNet with 5 input channels).

The 5th channel is a depth map at latent size, concatenated to x at every step (the engine's `image_cond`, as
the inpainting model's extra channels are). It is made exactly as diffusers' StableDiffusionDepth2ImgPipeline
`prepare_depth_map` and A1111's `depth2img_image_conditioning` make it: the estimator's raw prediction (MiDaS
DPT-Hybrid by default, the one the model was trained with) resized to the latent size with bicubic
interpolation, then normalised per image to [-1, 1] as 2 * (d - min) / (max - min) - 1. A depth map the user
supplies replaces the estimate (near = bright, as the Depth tab saves them); it is brought to the picture's
size the way the init image is, then goes through the same resize and normalisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.depth import estimators
from modules.depth.weights import MissingDepthWeights, refusal

ESTIMATOR_KEY = "Depth estimator"
SOURCE_KEY = "Depth source"
USER_MAP = "user map"


def prepare_depth_map(depth: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """[B, h, w] relative inverse depth (any size) -> [B, 1, latent_height, latent_width] in [-1, 1]."""
    if depth.ndim == 2:
        depth = depth[None]
    depth = F.interpolate(depth[:, None].float(), size=(latent_height, latent_width), mode="bicubic",
                          align_corners=False)
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    # a flat map carries no depth: diffusers would divide by zero, we give the middle value
    span = torch.where(high - low > 0, high - low, torch.ones_like(high))
    return torch.where(high - low > 0, 2.0 * (depth - low) / span - 1.0, torch.zeros_like(depth))


def depth_map_values(image: Image.Image) -> torch.Tensor:
    """A user's depth map picture -> [h, w] float (near = larger). 16-bit grey keeps its precision; colour
    pictures are read as their luminance."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
    else:
        array = np.asarray(image.convert("L"), dtype=np.float32)
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def _as_float_image(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(np.asarray(image, dtype=np.float32), "F")
    return Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32), "F")


def user_map_for(image: Image.Image, resize_mode: int, width: int, height: int) -> Image.Image:
    """The user's map at the picture's size as a float ("F") image, fitted as the init image is: 0/3 stretch,
    1 crop to fill, 2 fit and stretch the edges into the bands (A1111's resize modes). Bicubic, never an
    upscaler: a depth map must not grow invented detail."""
    image = _as_float_image(image)
    if image.size == (width, height):
        return image
    bicubic = Image.Resampling.BICUBIC
    if resize_mode not in (1, 2):
        return image.resize((width, height), bicubic)
    if resize_mode == 1:  # scale to cover, centre crop
        scale = max(width / image.width, height / image.height)
    else:  # scale to fit, the bands take the nearest edge row / column
        scale = min(width / image.width, height / image.height)
    src_w, src_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    scaled = np.asarray(image.resize((src_w, src_h), bicubic), dtype=np.float32)
    top, left = (src_h - height) // 2, (src_w - width) // 2
    if resize_mode == 1:
        return Image.fromarray(np.ascontiguousarray(scaled[top : top + height, left : left + width]), "F")
    pad_y, pad_x = max(0, height - src_h), max(0, width - src_w)
    padded = np.pad(scaled, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)), mode="edge")
    return Image.fromarray(np.ascontiguousarray(padded[:height, :width]), "F")


def user_map_in_region(image: Image.Image, original_size: tuple[int, int], crop_region: tuple[int, int, int, int],
                       width: int, height: int) -> Image.Image:
    """For "Inpaint only masked": the map stretched over the original picture, cut to the region being
    repainted and brought to the processing size."""
    whole = _as_float_image(image).resize(original_size, Image.Resampling.BICUBIC)
    return whole.crop(crop_region).resize((width, height), Image.Resampling.BICUBIC)


def conditioning(sources: Sequence[Image.Image], latent_size: tuple[int, int], device: torch.device,
                 estimator: str | None = None, depth_maps: Sequence[Image.Image] | None = None,
                 resolution: int | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """The depth channel for a batch ([B, 1, h, w] in [-1, 1] on `device`) and the infotext it earns.

    `sources` are the pictures being transformed (already at the generation size); `depth_maps`, when given,
    are the user's maps for them (at the same size) and win over the estimator."""
    latent_h, latent_w = latent_size
    if depth_maps:
        raw = [depth_map_values(m).to(device) for m in depth_maps]
        info = {SOURCE_KEY: USER_MAP}
    else:
        name = estimator or estimators.DEFAULT
        seen: dict[tuple, torch.Tensor] = {}  # a batch of one picture estimates it once
        raw = []
        for image in sources:
            key = (image.size, image.mode, hashlib.sha1(image.tobytes()).digest())
            if key not in seen:
                try:
                    seen[key] = estimators.predict(name, image, resolution).to(device)
                except MissingDepthWeights as e:
                    raise refusal(e) from e
            raw.append(seen[key])
        info = {ESTIMATOR_KEY: name}
    maps = torch.cat([prepare_depth_map(r, latent_h, latent_w) for r in raw])
    return maps.to(device), info
