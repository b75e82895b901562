"""Image helpers every ControlNet preprocessor shares, with sd-webui-controlnet's semantics (HWC3, resizing the
short side to the processor resolution, edge padding to a multiple of 64 for networks)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def hwc3(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from HxW, HxWx1, HxWx3 or HxWx4 (RGBA composited onto white, as the extension does)."""
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 3:
        return np.ascontiguousarray(image)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels != 4:
        raise ValueError(f"an image needs 1, 3 or 4 channels, not {channels}")
    color = image[:, :, :3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).round().astype(np.uint8)


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is `resolution` (cubic when enlarging, area when shrinking)."""
    height, width = image.shape[:2]
    k = float(resolution) / float(min(height, width))
    size = (max(1, int(round(width * k))), max(1, int(round(height * k))))
    if size == (width, height):
        return np.ascontiguousarray(image)
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def resize_image_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The extension's `resize_image_with_pad`: short side to `resolution`, then edge-pad right and bottom to a
    multiple of 64 (what the detection networks want). Returns the padded image and a function that crops a
    result of the padded size back to the resized size."""
    image = resize_short_side(hwc3(image), resolution)
    height, width = image.shape[:2]
    pad_h, pad_w = -height % 64, -width % 64
    padded = np.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")

    def remove_pad(result: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(result[:height, :width])

    return np.ascontiguousarray(padded), remove_pad
