"""A1111's upscaler API (`modules.upscaler`): `Upscaler`, `UpscalerData`, and the built-in None, Lanczos and
Nearest upscalers. Model upscalers (ESRGAN, SwinIR, ...) subclass `Upscaler` in modules.upscaler_models;
`modules.upscalers.refresh()` fills `shared.sd_upscalers` with every one of them.

An upscaler's `upscale(img, scale, selected_model)` makes the picture `scale` times larger: model upscalers run
their network as many times as needed (a 4x model twice for 8x) and then resize to the exact size with Lanczos,
as A1111 does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


class Upscaler:
    """Base class (A1111's names). A subclass sets `name` and fills `scalers`, and implements `do_upscale`."""

    name: str | None = None
    model_path: str | None = None
    model_name: str | None = None
    model_url: str | None = None
    enable = True
    filter = None
    user_path: str | None = None
    scalers: list[UpscalerData]

    def __init__(self, create_dirs: bool = False):
        self.mod_pad_h = None
        self.tile = True
        self.scalers = []
        self.can_tile = True
        if create_dirs and self.model_path:
            os.makedirs(self.model_path, exist_ok=True)

    def do_upscale(self, img: Image.Image, selected_model: str | None) -> Image.Image:
        return img

    def upscale(self, img: Image.Image, scale: float, selected_model: str | None = None) -> Image.Image:
        """`img` made `scale` times larger (each side rounded down), the model applied as often as needed."""
        self.scale = scale
        dest_w, dest_h = max(1, int(img.width * scale)), max(1, int(img.height * scale))
        for _ in range(3):  # A1111: at most three passes of the model (a 4x model gives up to 64x)
            if img.width >= dest_w and img.height >= dest_h:
                break
            before = img.size
            img = self.do_upscale(img, selected_model)
            if img.size == before:  # a 1x model, or the None upscaler
                break
        if img.size != (dest_w, dest_h):
            img = img.resize((dest_w, dest_h), resample=LANCZOS)
        return img

    def load_model(self, path: str) -> Any:
        raise NotImplementedError

    def find_models(self, ext_filter: list[str] | None = None) -> list[str]:
        from modules.upscaler_models import model_files

        return model_files(self.model_path, self.user_path, ext_filter or [])


@dataclass
class UpscalerData:
    """One choice in an upscaler dropdown (A1111's fields)."""

    name: str
    data_path: str | None
    scale: float = 4
    upscaler: Upscaler | None = None
    model: Any = None
    local_data_path: str | None = field(default=None)

    def __post_init__(self) -> None:
        self.local_data_path = self.data_path

    @property
    def scaler(self) -> Upscaler | None:
        return self.upscaler


class UpscalerNone(Upscaler):
    name = "None"

    def __init__(self, dirname: str | None = None):
        super().__init__(False)
        self.scalers = [UpscalerData("None", None, 1, self)]

    def upscale(self, img: Image.Image, scale: float, selected_model: str | None = None) -> Image.Image:
        return img


class UpscalerLanczos(Upscaler):
    name = "Lanczos"

    def __init__(self, dirname: str | None = None):
        super().__init__(False)
        self.scalers = [UpscalerData("Lanczos", None, 4, self)]

    def do_upscale(self, img: Image.Image, selected_model: str | None = None) -> Image.Image:
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=LANCZOS)


class UpscalerNearest(Upscaler):
    name = "Nearest"

    def __init__(self, dirname: str | None = None):
        super().__init__(False)
        self.scalers = [UpscalerData("Nearest", None, 4, self)]

    def do_upscale(self, img: Image.Image, selected_model: str | None = None) -> Image.Image:
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=NEAREST)
