"""Mask geometry and the "fill" masked-content mode (A1111's modules.masking names).

Convention everywhere: a mask is single-channel, nonzero (255) where the picture is repainted, 0 where the
original is kept. Boxes are (x1, y1, x2, y2) in pixels with x2/y2 exclusive, like PIL's crop boxes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["expand_crop_region", "fill", "get_crop_region", "get_crop_region_v2"]

Box = tuple[int, int, int, int]


def _mask_array(mask: np.ndarray | Image.Image) -> np.ndarray:
    """2-D array that is nonzero where the mask is set (colour masks count any channel)."""
    arr = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    return arr.any(axis=-1) if arr.ndim == 3 else arr


def get_crop_region_v2(mask: np.ndarray | Image.Image, pad: int = 0) -> Box | None:
    """Bounding box of the nonzero mask pixels grown by `pad` on every side and clamped to the image;
    None for an empty mask (A1111 then falls back to plain img2img)."""
    arr = _mask_array(mask)
    ys, xs = np.nonzero(arr)
    if xs.size == 0:
        return None
    h, w = arr.shape[:2]
    return (
        max(int(xs.min()) - pad, 0),
        max(int(ys.min()) - pad, 0),
        min(int(xs.max()) + 1 + pad, w),
        min(int(ys.max()) + 1 + pad, h),
    )


def get_crop_region(mask: np.ndarray | Image.Image, pad: int = 0) -> Box:
    """As get_crop_region_v2, but always a tuple: for an empty mask it is A1111's inverted box
    (width - pad, height - pad, pad, pad), clamped, which extensions test for with x1 >= x2."""
    box = get_crop_region_v2(mask, pad)
    if box is not None:
        return box
    h, w = _mask_array(mask).shape[:2]
    return max(w - pad, 0), max(h - pad, 0), min(pad, w), min(pad, h)


def _grow_span(lo: int, hi: int, grow: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) by `grow` split evenly (the odd pixel goes to the far side), slide it back inside
    [0, limit) if it sticks out, and clamp when it is larger than the image."""
    lo -= grow // 2
    hi += grow - grow // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(
    crop_region: Box, processing_width: int, processing_height: int, image_width: int, image_height: int
) -> Box:
    """Grow the box along one axis so its aspect ratio matches the processing size (a 128x32 box for a
    512x512 generation becomes 128x128), keeping it inside the image; if the image is too small on that
    axis the box spans the whole axis and the ratio is only approximate."""
    x1, y1, x2, y2 = crop_region
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"crop region {crop_region} is empty")
    box_ratio = (x2 - x1) / (y2 - y1)
    target_ratio = processing_width / processing_height
    if box_ratio > target_ratio:
        grow = int((x2 - x1) / target_ratio - (y2 - y1))
        y1, y2 = _grow_span(y1, y2, grow, image_height)
    else:
        grow = int((y2 - y1) * target_ratio - (x2 - x1))
        x1, x2 = _grow_span(x1, x2, grow, image_width)
    return x1, y1, x2, y2


# --- fill -------------------------------------------------------------------------------------------------

_SMOOTH = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0


def _smooth(t: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial blur (N, C, H, W) with edge replication: a convex filter, so colours never
    leave the range of their inputs."""
    c = t.shape[1]
    kx = _SMOOTH.view(1, 1, 1, 5).repeat(c, 1, 1, 1)
    t = F.conv2d(F.pad(t, (2, 2, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(t, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=c)


def _half(t: torch.Tensor) -> torch.Tensor:
    """Halve (N, C, H, W) by 2x2 averaging; an odd last row/column is replicated first."""
    h, w = t.shape[-2:]
    t = F.pad(t, (0, w % 2, 0, h % 2), mode="replicate")
    return F.avg_pool2d(t, 2)


def fill(image: Image.Image, mask: np.ndarray | Image.Image) -> Image.Image:
    """A1111's "fill" masked content: repaint masked pixels with a smooth spread of the colours around them.

    Normalised convolution over an image pyramid: the picture weighted by how much of each pixel is kept
    (1 - mask) is halved level by level; from the coarsest level down, each level's weighted average
    colour is layered over the upsampled coarser estimate in proportion to how much known colour it holds.
    Kept pixels come back unchanged, partly masked ones blend, and every filled colour is a convex mix of
    kept colours. A wholly masked image has nothing to borrow from and is returned unchanged.
    """
    rgb = image.convert("RGB")
    m = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask, dtype=np.float64)
    if m.shape != (rgb.height, rgb.width):
        raise ValueError(f"mask size {m.shape[::-1]} does not match image size {rgb.size}")
    if m.max() > 1.0:
        m = m / 255.0  # uint8-style masks; float masks are taken as 0..1
    keep = torch.from_numpy(1.0 - np.clip(m, 0.0, 1.0))[None, None]
    if not bool((keep > 0).any()):
        return rgb.copy()

    colour = torch.from_numpy(np.asarray(rgb, dtype=np.float64)).permute(2, 0, 1)[None]
    levels = [(colour * keep, keep)]
    while max(levels[-1][1].shape[-2:]) > 1:  # down to 1x1, where some known colour is certain
        weighted, weight = levels[-1]
        levels.append((_half(weighted), _half(weight)))

    estimate: torch.Tensor | None = None
    for depth in range(len(levels) - 1, 0, -1):
        weighted, weight = (_smooth(t) for t in levels[depth])
        local = torch.where(weight > 0, weighted / torch.where(weight > 0, weight, 1.0), 0.0)
        if estimate is None:
            estimate = local  # coarsest level (1x1): it always holds some known colour
        else:
            up = F.interpolate(estimate, size=weight.shape[-2:], mode="bilinear", align_corners=False)
            estimate = local * weight + up * (1.0 - weight)

    weighted, weight = levels[0]
    if estimate is None:  # a 1x1 image: nothing coarser, and its one pixel is at least partly kept
        up = weighted / weight
    else:
        up = F.interpolate(estimate, size=weight.shape[-2:], mode="bilinear", align_corners=False)
    # Finest level unblurred: weighted == colour * keep, so kept pixels come back bit-identical.
    out = weighted + up * (1.0 - weight)
    arr = out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")
