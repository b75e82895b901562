"""Depth maps as pictures: invert and near/far clip, the 16-bit PNG, the 8-bit grey image and a coloured preview.

Values are relative inverse depth in [0, 1], near = 1 (white). Near/far clip works on those values: everything
nearer than `near` becomes 1, everything farther than `far` becomes 0, and what lies between is stretched to
fill [0, 1] (so a clipped map still uses the whole 16-bit range).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

MAX_16 = 65535


@dataclass(frozen=True)
class Adjust:
    invert: bool = False
    near: float = 1.0  # values at or above are nearest (white)
    far: float = 0.0  # values at or below are farthest (black)

    def check(self) -> Adjust:
        if not (0.0 <= self.far < self.near <= 1.0):
            raise ValueError(f"near/far clip must satisfy 0 <= far < near <= 1 (got far={self.far}, near={self.near})")
        return self

    @property
    def is_identity(self) -> bool:
        return not self.invert and self.near == 1.0 and self.far == 0.0


def adjust(depth: np.ndarray, settings: Adjust) -> np.ndarray:
    """Clip to [far, near] and stretch to [0, 1]; then invert if asked (near becomes black)."""
    settings.check()
    out = np.clip((np.asarray(depth, np.float32) - settings.far) / (settings.near - settings.far), 0.0, 1.0)
    if settings.invert:
        out = 1.0 - out
    return out.astype(np.float32)


def to_16bit(depth: np.ndarray) -> Image.Image:
    """A 16-bit grey PNG-able image ("I;16"): 0 = far, 65535 = near."""
    values = np.round(np.clip(depth, 0.0, 1.0) * MAX_16).astype(np.uint16)
    return Image.fromarray(values)  # uint16 arrays become "I;16"


def to_8bit(depth: np.ndarray) -> Image.Image:
    values = np.round(np.clip(depth, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(values, "L")


def to_preview(depth: np.ndarray) -> Image.Image:
    """A coloured view for people (OpenCV's inferno: near is bright yellow, far is dark purple)."""
    grey = np.round(np.clip(depth, 0.0, 1.0) * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO)
    return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "RGB")


def from_picture(image: Image.Image) -> np.ndarray:
    """A depth map picture someone supplies -> [0, 1] float32 (16-bit grey keeps its precision)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        return np.clip(values / MAX_16, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return (np.asarray(image.convert("L"), dtype=np.float32) / 255).astype(np.float32)
