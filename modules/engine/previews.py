"""Live previews of the latent being denoised (settings `show_progress_type` and friends).

"Approx cheap" needs no network: each latent pixel's four channels map linearly to RGB with A1111's published
coefficients, so a preview costs one small matrix product. "Full" runs the real VAE decoder through a
function the caller gives. Either way the preview has the final image's size (latents are 1/8 of it).

A job hands `preview_function()` to `shared.state.preview_function`; the state calls it with the latest latent
and never imports this module itself (it must stay cheap to import, and the engine depends on it, not back).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

# Latent channel -> (R, G, B) weights; output is in about [-1, 1]. Published with A1111's "Approx cheap".
APPROX_CHEAP_SD: tuple[tuple[float, float, float], ...] = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)  # SD1 and SD2 latents
APPROX_CHEAP_SDXL: tuple[tuple[float, float, float], ...] = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)

PREVIEW_TYPES = ("Full", "Approx cheap")
LATENT_SCALE = 8  # pixels per latent pixel for SD1/SD2/SDXL

DecodeFunction = Callable[[torch.Tensor], torch.Tensor]  # (B, 4, h, w) latents -> (B, 3, H, W) in [-1, 1]


def cheap_approximation(latent: torch.Tensor, is_sdxl: bool = False) -> torch.Tensor:
    """(..., 4, h, w) latent -> (..., 3, h, w) RGB in about [-1, 1]."""
    coefs = torch.tensor(APPROX_CHEAP_SDXL if is_sdxl else APPROX_CHEAP_SD, dtype=torch.float32, device=latent.device)
    return torch.einsum("...lhw,lr->...rhw", latent.float(), coefs)


def rgb_to_image(rgb: torch.Tensor, scale: int = 1) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB image, clamped, optionally enlarged `scale` times (nearest neighbour)."""
    # NaNs (a diverging fp16 step) would turn into arbitrary bytes; show them black instead.
    x = torch.nan_to_num(rgb.detach().float(), nan=-1.0)
    x = ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).to(torch.uint8)  # truncates, as A1111 does
    image = Image.fromarray(x.permute(1, 2, 0).cpu().numpy(), "RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def latent_to_preview(latent: torch.Tensor, is_sdxl: bool = False) -> Image.Image:
    """One image's latent (4, h, w) -> an "Approx cheap" preview of the image's size (8h x 8w)."""
    return rgb_to_image(cheap_approximation(latent, is_sdxl), scale=LATENT_SCALE)


def full_preview(decode_fn: DecodeFunction, latent: torch.Tensor) -> Image.Image:
    """One image's latent (4, h, w) (or a batch of one) decoded by the real VAE (`decode_fn`)."""
    batch = latent if latent.dim() == 4 else latent.unsqueeze(0)
    with torch.no_grad():
        decoded = decode_fn(batch[:1])
    return rgb_to_image(decoded[0])


def _grid(images: list[Image.Image]) -> Image.Image:
    from modules import images as images_module  # the same layout as saved grids

    return images_module.image_grid(images)


def latents_to_preview(
    latents: torch.Tensor,
    is_sdxl: bool = False,
    preview_type: str = "Approx cheap",
    decode_fn: DecodeFunction | None = None,
    grid: bool = False,
) -> Image.Image:
    """A batch's latents (B, 4, h, w) -> one preview: the first image, or all of them as a grid.
    "Full" without a decoder falls back to "Approx cheap" rather than showing nothing."""
    batch = latents if latents.dim() == 4 else latents.unsqueeze(0)
    chosen = list(batch) if grid else [batch[0]]
    if preview_type == "Full" and decode_fn is not None:
        images = [full_preview(decode_fn, x) for x in chosen]
    else:
        images = [latent_to_preview(x, is_sdxl) for x in chosen]
    return _grid(images) if grid and len(images) > 1 else images[0]


def _model_decoder(model: Any) -> DecodeFunction | None:
    decode = getattr(model, "decode_first_stage", None)  # A1111's name for the VAE decode
    return decode if callable(decode) else None


def preview_from_settings(latents: torch.Tensor, model: Any = None) -> Image.Image:
    """The preview the settings ask for, for the current model (`shared.sd_model` unless given)."""
    from modules import shared

    model = model if model is not None else shared.sd_model
    preview_type = getattr(shared.opts, "show_progress_type", "Approx cheap")
    return latents_to_preview(
        latents,
        is_sdxl=bool(getattr(model, "is_sdxl", False)),
        preview_type=preview_type if preview_type in PREVIEW_TYPES else "Approx cheap",
        decode_fn=_model_decoder(model),
        grid=bool(getattr(shared.opts, "show_progress_grid", True)),
    )


def preview_function(model: Any = None) -> Callable[[torch.Tensor], Image.Image]:
    """What a job hands to the state: latents -> the preview the settings ask for, for `model` (None: whatever
    `shared.sd_model` is when the preview is made, so a model switch mid-job is followed)."""
    return functools.partial(preview_from_settings, model=model)


__all__ = [
    "APPROX_CHEAP_SD",
    "APPROX_CHEAP_SDXL",
    "LATENT_SCALE",
    "PREVIEW_TYPES",
    "DecodeFunction",
    "cheap_approximation",
    "full_preview",
    "latent_to_preview",
    "latents_to_preview",
    "preview_from_settings",
    "preview_function",
    "rgb_to_image",
]
