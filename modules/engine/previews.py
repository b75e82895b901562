"""Live previews of the latent being denoised (settings `show_progress_type` and friends).

A1111's four methods: "Approx cheap" needs no network: each latent pixel's four channels map linearly to RGB with
A1111's published coefficients, so a preview costs one small matrix product. "Approx NN" (A1111's VAEApprox) and
"TAESD" (the tiny autoencoder's decoder) run a small network from models/ (modules.engine.preview_models; never
downloaded: without its file the preview is "Approx cheap", said once in the log). "Full" runs the real VAE
decoder. Whatever the method, the preview has the final image's size (latents are 1/8 of it), and it is made
from a copy of the latent under no_grad, so it cannot change the image being generated.

A job hands `preview_function()` to `shared.state.preview_function`; the state calls it with the latest latent
and never imports this module itself (it must stay cheap to import, and the engine depends on it, not back).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from modules.engine import preview_models

log = logging.getLogger(__name__)

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

PREVIEW_TYPES = ("Full", "Approx NN", "Approx cheap", "TAESD")  # A1111's names and order
NETWORK_TYPES = preview_models.NETWORK_METHODS  # the methods that need a weights file
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
        decoded = decode_fn(batch[:1].detach())
    return rgb_to_image(decoded[0])


def network_preview(decode_fn: DecodeFunction, latent: torch.Tensor) -> Image.Image:
    """One image's latent decoded by a preview network, brought to the image's size (8h x 8w): "Approx NN" gives
    a quarter of it, enlarged nearest-neighbour like "Approx cheap"."""
    batch = latent if latent.dim() == 4 else latent.unsqueeze(0)
    with torch.no_grad():
        rgb = decode_fn(batch[:1].detach().clone())[0]
    width, height = batch.shape[-1] * LATENT_SCALE, batch.shape[-2] * LATENT_SCALE
    scale = width // rgb.shape[-1] if rgb.shape[-1] else 1
    if rgb.shape[-1] * scale == width and rgb.shape[-2] * scale == height:
        return rgb_to_image(rgb, scale=scale)
    return rgb_to_image(rgb).resize((width, height), Image.Resampling.BILINEAR)


def _grid(images: list[Image.Image]) -> Image.Image:
    from modules import images as images_module  # the same layout as saved grids

    return images_module.image_grid(images)


_failed_networks: set[str] = set()  # methods whose network failed on a latent: said once in the log


def _network_images(preview_type: str, decode_fn: DecodeFunction, chosen: list[torch.Tensor]) -> list[Image.Image] | None:
    try:
        return [network_preview(decode_fn, x) for x in chosen]
    except Exception as e:  # noqa: BLE001 - a preview network that cannot take these latents must not stop a job
        if preview_type not in _failed_networks:
            _failed_networks.add(preview_type)
            log.warning('live preview "%s" failed (%s: %s); showing "Approx cheap" instead',
                        preview_type, type(e).__name__, str(e)[:300])
        return None


def latents_to_preview(
    latents: torch.Tensor,
    is_sdxl: bool = False,
    preview_type: str = "Approx cheap",
    decode_fn: DecodeFunction | None = None,
    grid: bool = False,
) -> Image.Image:
    """A batch's latents (B, 4, h, w) -> one preview: the first image, or all of them as a grid.
    "Full" decodes with `decode_fn` (the VAE). "Approx NN" and "TAESD" use `decode_fn` when given, else their
    network from models/ (on the latents' device, float32). Any method without a decoder falls back to
    "Approx cheap" rather than showing nothing."""
    batch = latents if latents.dim() == 4 else latents.unsqueeze(0)
    chosen = list(batch) if grid else [batch[0]]
    if preview_type in NETWORK_TYPES and decode_fn is None:
        decode_fn = preview_models.decoder(preview_type, is_sdxl, batch.device, torch.float32)
    images: list[Image.Image] | None = None
    if preview_type == "Full" and decode_fn is not None:
        images = [full_preview(decode_fn, x) for x in chosen]
    elif preview_type in NETWORK_TYPES and decode_fn is not None:
        images = _network_images(preview_type, decode_fn, chosen)
    if images is None:
        images = [latent_to_preview(x, is_sdxl) for x in chosen]
    return _grid(images) if grid and len(images) > 1 else images[0]


def _vae_decoder(model: Any) -> DecodeFunction | None:
    """The model's diffusers VAE as a decode function, in the VAE's own dtype and never changing it (the job's
    final decode may upcast the VAE after NaNs; a preview must not do that for it)."""
    vae = getattr(model, "vae", None)
    config = getattr(vae, "config", None)
    factor = getattr(config, "scaling_factor", None)
    if not callable(getattr(vae, "decode", None)) or not isinstance(factor, (int, float)):
        return None
    shift = getattr(config, "shift_factor", None) or 0.0

    def decode(latents: torch.Tensor) -> torch.Tensor:
        # on the latents' device, as the job's own decode: an offloaded VAE's hook brings it there
        scaled = (latents / factor + shift).to(vae.dtype)
        return vae.decode(scaled, return_dict=False)[0].float()

    return decode


def _model_decoder(model: Any) -> DecodeFunction | None:
    decode = getattr(model, "decode_first_stage", None)  # A1111's name for the VAE decode
    return decode if callable(decode) else _vae_decoder(model)


def _network_dtype(model: Any, device: torch.device) -> torch.dtype:
    """The VAE's dtype on an accelerator (A1111 runs its preview networks in the model's dtype); float32 on the
    CPU, where half-precision convolutions are slow or missing."""
    dtype = getattr(getattr(model, "vae", None), "dtype", None)
    usable = isinstance(dtype, torch.dtype) and dtype.is_floating_point
    return dtype if device.type != "cpu" and usable else torch.float32


def _settings_decoder(preview_type: str, model: Any, latents: torch.Tensor, is_sdxl: bool) -> DecodeFunction | None:
    if preview_type == "Full":
        return _model_decoder(model)
    if preview_type in NETWORK_TYPES:
        return preview_models.decoder(preview_type, is_sdxl, latents.device, _network_dtype(model, latents.device))
    return None


def preview_from_settings(latents: torch.Tensor, model: Any = None) -> Image.Image:
    """The preview the settings ask for, for the current model (`shared.sd_model` unless given)."""
    from modules import shared

    model = model if model is not None else shared.sd_model
    preview_type = getattr(shared.opts, "show_progress_type", "Approx cheap")
    preview_type = preview_type if preview_type in PREVIEW_TYPES else "Approx cheap"
    is_sdxl = bool(getattr(model, "is_sdxl", False))
    decode_fn = _settings_decoder(preview_type, model, latents, is_sdxl)
    return latents_to_preview(
        latents,
        is_sdxl=is_sdxl,
        preview_type=preview_type if decode_fn is not None else "Approx cheap",
        decode_fn=decode_fn,
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
    "NETWORK_TYPES",
    "PREVIEW_TYPES",
    "DecodeFunction",
    "cheap_approximation",
    "full_preview",
    "latent_to_preview",
    "latents_to_preview",
    "network_preview",
    "preview_from_settings",
    "preview_function",
    "rgb_to_image",
]
