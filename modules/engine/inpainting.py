"""Image-side preparation for img2img and inpainting, with A1111's semantics (pure functions the engine calls).

Mask conventions (read these before using anything here):
- A PIL mask ("L") is 255 where the picture is repainted and 0 where the original is kept.
- The inpainting-model conditioning mask (B1HW tensor) uses the same sense: 1 = repaint.
- latent_mask() returns the same sense at latent size: 1 = new content. That is A1111's `p.nmask`; A1111's
  `p.mask` is 1 - it, the weight of the ORIGINAL latent. The engine blends after every step and after
  sampling with blend_latents: init_latent * mask + samples * nmask.

The flow A1111 runs for one init image, as calls into this module:
    pm = prepare_mask(mask, mask_blur_x=..., mask_blur_y=..., invert=..., mask_round=...)
    "Only masked":  region = InpaintRegion.create(init, pm, width, height, padding)
                    (None: blank mask, run plain img2img); image, for_latent = region.image, region.mask_for_latent
                    overlay = pm.for_overlay (full size); original = init
    "Whole picture": image = resize_image(resize_mode, init, width, height); original = image
                    wp = pm.for_whole_picture(resize_mode, width, height)
                    for_latent, overlay = wp.for_latent, wp.for_overlay
    image = init_image_for_masked_content(image, for_latent, inpainting_fill)
    init_latent = vae(image); nmask = latent_mask(for_latent, h, w, round=pm.round); mask = 1 - nmask
    if needs_latent_fill(inpainting_fill): init_latent = apply_latent_fill(init_latent, nmask, fill, unit_noise)
    9-channel UNet only: cond = inpainting_model_conditioning(image*2-1, for_latent, vae_encode)
                         and the UNet input is cat([x, cond], dim=1) = [x(4), mask(1), masked latent(4)]
    ... sample, blending with blend_latents(samples, init_latent, mask, nmask) ...
    result = apply_overlay(decoded, original, overlay, region)   # region None in "Whole picture"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from modules import masking
from modules.images import resize_image

__all__ = [
    "InpaintRegion",
    "MaskedContent",
    "PreparedMask",
    "apply_latent_fill",
    "apply_overlay",
    "blend_latents",
    "blur_mask",
    "create_binary_mask",
    "gaussian_kernel_size",
    "init_image_for_masked_content",
    "inpainting_model_conditioning",
    "latent_mask",
    "needs_latent_fill",
    "prepare_mask",
]


class MaskedContent(IntEnum):
    """A1111's `inpainting_fill` (UI "Masked content"); the names are the infotext values."""

    FILL = 0
    ORIGINAL = 1
    LATENT_NOISE = 2
    LATENT_NOTHING = 3

    @property
    def label(self) -> str:
        return ("fill", "original", "latent noise", "latent nothing")[self]


# --- the pixel mask --------------------------------------------------------------------------------------


def create_binary_mask(mask_image: Image.Image | np.ndarray, round: bool = True) -> Image.Image:
    """Grayscale mask from what a front door hands over. An RGBA image whose alpha is not fully opaque is
    an alpha mask (the drawn strokes): its alpha is the mask, thresholded above 128 when `round`. Anything
    else is converted to "L". Arrays: bool -> 0/255, float -> 0..1 scaled to 0..255, integers as they are."""
    if isinstance(mask_image, np.ndarray):
        arr = mask_image
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0)
        mask_image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if mask_image.mode == "RGBA" and mask_image.getextrema()[-1] != (255, 255):
        alpha = mask_image.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round else alpha
    return mask_image.convert("L")


def gaussian_kernel_size(blur: float) -> int:
    """A1111's (and OpenCV's usual) odd kernel width for a Gaussian of sigma `blur`: 2*int(2.5*blur+0.5)+1."""
    return 2 * int(2.5 * blur + 0.5) + 1


def _blur_axis(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """1-D Gaussian along `axis` of a float (H, W) array; mirrored borders without repeating the edge
    pixel (OpenCV's default BORDER_REFLECT_101), which numpy's "reflect" also handles for any size."""
    size = gaussian_kernel_size(sigma)
    radius = size // 2
    taps = np.arange(size, dtype=np.float64) - radius
    kernel = np.exp(-(taps**2) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    moved = np.moveaxis(arr, axis, -1)
    padded = np.pad(moved, [(0, 0), (radius, radius)], mode="reflect")
    rows = torch.from_numpy(np.ascontiguousarray(padded))[:, None, :]
    out = F.conv1d(rows, torch.from_numpy(kernel)[None, None])[:, 0, :].numpy()
    return np.moveaxis(out, -1, axis)


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Separable Gaussian blur of an "L" mask, x first then y, each skipped at 0 (so blur 0 is a no-op).
    Each pass ends in 8 bits, as A1111's two separate 8-bit blurs do."""
    if blur_x <= 0 and blur_y <= 0:
        return mask.convert("L")
    arr = np.asarray(mask.convert("L"), dtype=np.float64)
    for sigma, axis in ((blur_x, 1), (blur_y, 0)):
        if sigma > 0:
            arr = np.clip(np.rint(_blur_axis(arr, sigma, axis=axis)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "L")


@dataclass(frozen=True)
class PreparedMask:
    """The masks A1111 derives from the user's mask, all "L", 255 = repaint.

    for_overlay: the blurred mask the final composite goes through (in "Whole picture" mode A1111 doubles
        it after resizing, so generated pixels cover more of the soft edge; see for_whole_picture).
    for_latent:  the blurred mask that drives "fill", the latent mask and the inpainting-model conditioning
        (A1111's image_mask, or its API `latent_mask` when one is given: pass it with dataclasses.replace).
    round: A1111's `mask_round`. It is applied where A1111 applies it, after each consumer has brought
        the mask to its own size: latent_mask() rounds after downsampling, the conditioning rounds the
        pixel mask. The overlay stays soft either way; binarized() gives the rounded pixel mask.
    """

    for_overlay: Image.Image
    for_latent: Image.Image
    round: bool = True

    def binarized(self) -> Image.Image:
        """for_latent as it looks to a consumer that rounds at pixel size: 255 where >= half, else 0."""
        if not self.round:
            return self.for_latent
        return self.for_latent.point(lambda v: 255 if v >= 128 else 0)

    def for_whole_picture(self, resize_mode: int, width: int, height: int) -> PreparedMask:
        """For "Whole picture" inpainting: both masks resized like the init image; the overlay's values then
        doubled (clipped at 255), which keeps exact zeros at zero."""
        latent = resize_image(resize_mode, self.for_latent, width, height)
        overlay = latent
        if self.for_overlay is not self.for_latent:
            overlay = resize_image(resize_mode, self.for_overlay, width, height)
        doubled = np.clip(np.asarray(overlay, dtype=np.uint16) * 2, 0, 255).astype(np.uint8)
        return replace(self, for_overlay=Image.fromarray(doubled, "L"), for_latent=latent)


def prepare_mask(
    mask_image: Image.Image | np.ndarray,
    *,
    mask_blur_x: float = 4,
    mask_blur_y: float = 4,
    invert: bool = False,
    mask_round: bool = True,
) -> PreparedMask:
    """User mask -> PreparedMask, in A1111's order: grayscale/alpha mask, invert ("Inpaint not masked"),
    blur in x, blur in y. Sizes are untouched; resizing depends on the inpaint area (see the module doc)."""
    mask = create_binary_mask(mask_image, round=mask_round)
    if invert:
        mask = ImageOps.invert(mask)
    mask = blur_mask(mask, mask_blur_x, mask_blur_y)
    return PreparedMask(for_overlay=mask, for_latent=mask, round=mask_round)


# --- "Only masked" ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InpaintRegion:
    """Inpaint area "Only masked" (inpaint_full_res): the part of the picture generated at full resolution.

    crop_region is (x1, y1, x2, y2) in the original image, already grown to the processing aspect ratio;
    width x height is the processing size; mask_for_overlay is the blurred mask at original size.
    create() also fills in `image` and `mask_for_latent`: the init image and for_latent mask cropped to
    the region at processing size.
    """

    crop_region: tuple[int, int, int, int]
    width: int
    height: int
    mask_for_overlay: Image.Image
    image: Image.Image | None = None
    mask_for_latent: Image.Image | None = None

    @classmethod
    def from_mask(
        cls, mask_for_overlay: Image.Image, width: int, height: int, padding: int = 0
    ) -> InpaintRegion | None:
        """Region around the (blurred) mask plus `padding` (inpaint_full_res_padding), grown to the
        width:height ratio inside the image. None for a blank mask: A1111 then runs plain img2img."""
        mask = mask_for_overlay.convert("L")
        box = masking.get_crop_region_v2(mask, padding)
        if box is None:
            return None
        box = masking.expand_crop_region(box, width, height, mask.width, mask.height)
        return cls(box, width, height, mask)

    @classmethod
    def create(
        cls, image: Image.Image, mask: PreparedMask, width: int, height: int, padding: int = 0
    ) -> InpaintRegion | None:
        """from_mask on mask.for_overlay, with the init image and mask.for_latent cropped to the region."""
        if mask.for_overlay.size != image.size:
            raise ValueError(f"mask size {mask.for_overlay.size} does not match the image size {image.size}")
        region = cls.from_mask(mask.for_overlay, width, height, padding)
        if region is None:
            return None
        return replace(region, image=region.crop(image), mask_for_latent=region.crop(mask.for_latent))

    @property
    def paste_to(self) -> tuple[int, int, int, int]:
        """A1111's p.paste_to: (x, y, w, h) of the region in the original image."""
        x1, y1, x2, y2 = self.crop_region
        return x1, y1, x2 - x1, y2 - y1

    def crop(self, image: Image.Image) -> Image.Image:
        """The region of an init image or mask at processing size ("resize and fill", mode 2, as A1111)."""
        return resize_image(2, image.crop(self.crop_region), self.width, self.height)

    def paste_back(self, generated_crop: Image.Image, original_image: Image.Image) -> Image.Image:
        """Scale the generated crop back to the region, put it in place and composite through the blurred
        mask; pixels where the mask is 0 are the original's, bit for bit."""
        return apply_overlay(generated_crop, original_image, self.mask_for_overlay, paste_region=self.paste_to)


# --- the final composite ---------------------------------------------------------------------------------


def apply_overlay(
    generated: Image.Image,
    original: Image.Image,
    mask_for_overlay: Image.Image,
    paste_region: tuple[int, int, int, int] | InpaintRegion | None = None,
) -> Image.Image:
    """Final inpainting composite (A1111 lays the original, with alpha = 255 - mask, over the result).

    generated: the decoded image; with paste_region ((x, y, w, h) or an InpaintRegion) it is the crop,
    scaled to w x h with "crop and resize" (mode 1, as A1111's uncrop) and pasted into the original first. Where the mask is 0
    the output equals `original` exactly, where it is 255 it equals the generated pixels, in between they
    blend. `original` and the mask must have the same size (the processing size in "Whole picture").
    """
    base = original.convert("RGB")
    mask = mask_for_overlay.convert("L")
    if mask.size != base.size:
        raise ValueError(f"overlay mask size {mask.size} does not match the original image size {base.size}")
    result = generated.convert("RGB")
    if isinstance(paste_region, InpaintRegion):
        paste_region = paste_region.paste_to
    if paste_region is not None:
        x, y, w, h = paste_region
        canvas = base.copy()  # outside the region the mask is 0, so what lies under it never shows
        canvas.paste(resize_image(1, result, w, h), (x, y))
        result = canvas
    elif result.size != base.size:
        raise ValueError(f"generated size {result.size} does not match the original image size {base.size}")
    return Image.composite(result, base, mask)


# --- masked content --------------------------------------------------------------------------------------


def init_image_for_masked_content(image: Image.Image, mask: Image.Image, fill_mode: int | MaskedContent) -> Image.Image:
    """The init image the VAE encodes, for A1111's inpainting_fill. As in A1111, every mode except
    "original" runs masking.fill over the masked pixels (the latent modes too: it decides what the VAE
    sees at the soft mask edge and what the inpainting-model conditioning encodes there). For the latent
    modes the engine then also replaces the latents under the mask: see needs_latent_fill and
    apply_latent_fill. `mask` is PreparedMask.for_latent at the image's size."""
    if MaskedContent(fill_mode) is not MaskedContent.ORIGINAL:
        return masking.fill(image, mask)
    return image


def needs_latent_fill(fill_mode: int | MaskedContent) -> bool:
    """True for latent noise / latent nothing: call apply_latent_fill on the encoded init latent."""
    return MaskedContent(fill_mode) in (MaskedContent.LATENT_NOISE, MaskedContent.LATENT_NOTHING)


# --- latent space ----------------------------------------------------------------------------------------


def latent_mask(
    mask_for_latent: Image.Image,
    latent_h: int,
    latent_w: int,
    *,
    round: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The repaint weight at latent size, (1, 1, h, w), 1 = new content: A1111's `nmask`; its `mask`
    (1 = keep the original latent) is 1 - this. Downsampled bicubic (PIL's default, as A1111), scaled to
    0..1 and, with `round` (mask_round), rounded to 0/1 after downsampling, as A1111 does."""
    small = mask_for_latent.convert("L").resize((latent_w, latent_h), resample=Image.Resampling.BICUBIC)
    repaint = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
    if round:
        repaint = torch.round(repaint)
    return repaint[None, None].to(device=device, dtype=dtype)


def blend_latents(
    samples: torch.Tensor, init_latent: torch.Tensor, mask: torch.Tensor, nmask: torch.Tensor
) -> torch.Tensor:
    """A1111's per-step and final blend: the original under `mask` (keep weight, 1 - latent_mask()),
    the new samples under `nmask` (repaint weight, latent_mask())."""
    return init_latent * mask + samples * nmask


def apply_latent_fill(
    init_latent: torch.Tensor,
    latent_mask: torch.Tensor,
    fill_mode: int | MaskedContent,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Under the repaint weight `latent_mask` (latent_mask()'s output, 1 = new content): latent noise (2)
    puts unit Gaussian `noise` (init_latent's shape, from the image seeds), latent nothing (3) puts zeros.
    Other modes return init_latent unchanged."""
    mode = MaskedContent(fill_mode)
    keep = 1.0 - latent_mask
    if mode is MaskedContent.LATENT_NOISE:
        if noise is None:
            raise ValueError("latent noise needs a noise tensor")
        return init_latent * keep + noise * latent_mask
    if mode is MaskedContent.LATENT_NOTHING:
        return init_latent * keep
    return init_latent


def inpainting_model_conditioning(
    image_tensor: torch.Tensor,
    mask: torch.Tensor | Image.Image | None,
    encode_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    mask_weight: float = 1.0,
    round_mask: bool = True,
) -> torch.Tensor:
    """The 5 extra input channels of a 9-channel inpainting UNet: [mask(1), masked-image latent(4)].

    image_tensor: (B, 3, H, W) in -1..1 (the init image after masked-content fill).
    mask: (B or 1, 1, H, W) in 0..1 or a PIL "L" mask, 1 = repaint; None = repaint everything (A1111's
        choice for img2img without a mask). Rounded to 0/1 at pixel size when round_mask (mask_round).
    encode_fn: image (-1..1) -> latents already multiplied by the VAE scaling factor, (B, 4, h, w).
    mask_weight: A1111's option inpainting_mask_weight; 1 masks fully, 0 encodes the unmasked image.
    The masked image is image * (1 - mask): 0 (grey) under the mask. The engine feeds the UNet
    torch.cat([x, result], dim=1), i.e. [latent x(4), mask(1), masked-image latent(4)]. Ordinary
    4-channel models take no extra conditioning.
    """
    if mask is None:
        cond_mask = image_tensor.new_ones(1, 1, *image_tensor.shape[-2:])
    else:
        if isinstance(mask, Image.Image):
            mask = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        cond_mask = mask.to(device=image_tensor.device, dtype=image_tensor.dtype)
        if round_mask:
            cond_mask = torch.round(cond_mask)
    masked_image = torch.lerp(image_tensor, image_tensor * (1.0 - cond_mask), mask_weight)
    latents = encode_fn(masked_image)
    small_mask = F.interpolate(cond_mask, size=latents.shape[-2:], mode="nearest")
    small_mask = small_mask.expand(latents.shape[0], -1, -1, -1).to(dtype=latents.dtype, device=latents.device)
    return torch.cat([small_mask, latents], dim=1)
