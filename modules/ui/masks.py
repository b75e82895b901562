"""Images and masks from the img2img widgets: the painted inpaint mask, sketches, uploaded masks, batch folders."""

from __future__ import annotations

import os
from typing import Any

from PIL import Image, ImageChops

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def editor_background(value: dict[str, Any] | None) -> Image.Image | None:
    if not value:
        return None
    return value.get("background")


def editor_composite(value: dict[str, Any] | None) -> Image.Image | None:
    if not value:
        return None
    return value.get("composite") or value.get("background")


def painted_mask(value: dict[str, Any] | None) -> Image.Image | None:
    """White where any brush stroke is (the union of the layers' alpha), black elsewhere; None if unpainted."""
    background = editor_background(value)
    if background is None:
        return None
    mask = Image.new("L", background.size, 0)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        if alpha.size != background.size:
            alpha = alpha.resize(background.size, Image.Resampling.NEAREST)
        mask = ImageChops.lighter(mask, alpha)
    mask = mask.point(lambda v: 255 if v > 0 else 0)
    return mask if mask.getbbox() is not None else None


def uploaded_mask(image: Image.Image | None) -> Image.Image | None:
    """An uploaded mask: its alpha channel when it has real transparency, else its brightness."""
    if image is None:
        return None
    if "A" in image.getbands():
        alpha = image.getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")


def list_images(folder: str) -> list[str]:
    """Image files directly inside folder, sorted by name."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def mask_for(image_path: str, mask_dir: str | None) -> str | None:
    """The mask in mask_dir with the same base name as image_path (any image extension)."""
    if not mask_dir:
        return None
    stem = os.path.splitext(os.path.basename(image_path))[0]
    for name in sorted(os.listdir(mask_dir)):
        if os.path.splitext(name)[0] == stem and name.lower().endswith(IMAGE_EXTENSIONS):
            return os.path.join(mask_dir, name)
    return None
