"""Fitting a detected map (or an input picture) to the generation size, as sd-webui-controlnet does.

Resize modes: "Just Resize" stretches to the target; "Crop and Resize" scales until the target is covered and
crops the middle; "Resize and Fill" scales until it fits inside and fills the rest with the median colour of the
map's border. Maps of few distinct colours (edges, scribbles, segmentation) are resized with nearest-neighbour
after an area/cubic pass would blur them, so a binary map stays binary. Pixel Perfect picks the preprocessor
resolution that makes the detected map come out at the generation size.
"""

from __future__ import annotations

import cv2
import numpy as np

from modules.controlnet.units import ResizeMode

_FEW_COLOURS = 16  # at most this many distinct values in a sample: a map, not a photograph


def pixel_perfect_resolution(image: np.ndarray, target_h: int, target_w: int, mode: ResizeMode) -> int:
    """The processor resolution at which the map's short side lands on the generation size."""
    raw_h, raw_w = image.shape[:2]
    k_h, k_w = target_h / raw_h, target_w / raw_w
    k = min(k_h, k_w) if mode == ResizeMode.OUTER_FIT else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))


def _few_colours(image: np.ndarray) -> bool:
    sample = image[:: max(1, image.shape[0] // 64), :: max(1, image.shape[1] // 64)]
    return len(np.unique(sample.reshape(-1, sample.shape[-1]), axis=0)) <= _FEW_COLOURS


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Good-quality resize of an HxWxC uint8 picture; maps of few colours keep their colours."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image.copy()
    if _few_colours(image):
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    shrink = width * height < w * h
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out if out.ndim == image.ndim else out[..., None]


def fit(image: np.ndarray, width: int, height: int, mode: ResizeMode) -> np.ndarray:
    """`image` (HxWxC uint8) fitted to width x height with the unit's resize mode."""
    if mode == ResizeMode.RESIZE:
        return resize(image, width, height)
    h, w = image.shape[:2]
    if mode == ResizeMode.INNER_FIT:
        k = max(width / w, height / h)
        new_w, new_h = max(width, int(np.ceil(w * k))), max(height, int(np.ceil(h * k)))
        scaled = resize(image, new_w, new_h)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return scaled[top:top + height, left:left + width].copy()
    k = min(width / w, height / h)
    new_w, new_h = min(width, max(1, int(round(w * k)))), min(height, max(1, int(round(h * k))))
    scaled = resize(image, new_w, new_h)
    borders = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    background = np.empty((height, width, image.shape[2]), dtype=image.dtype)
    background[:] = np.median(borders, axis=0).astype(image.dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    background[top:top + new_h, left:left + new_w] = scaled
    return background
