"""A ControlNet unit: what one ControlNet / T2I-Adapter / IP-Adapter does in a generation, with the field names,
enums and defaults of the sd-webui-controlnet extension (its API clients send these dicts unchanged).

`ControlNetUnit.from_api(dict)` reads a unit from `alwayson_scripts.controlnet.args` (aliases `input_image`,
`lowvram`, `guidance`, `mask_image`; string or integer enums); `infotext()` / `from_infotext()` write and read
the `ControlNet N: "Module: canny, Model: name [hash], ..."` parameter the extension puts in PNG info.

One difference from the extension's current default, on purpose: a unit dict sent through the API without an
`enabled` key is enabled, as in the extension's first API versions that many client scripts were written
against; a client that sends `"enabled": false` gets a disabled unit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import numpy as np


class UnitError(ValueError):
    """A unit the request cannot use; the message names the unit and the field."""


class ResizeMode(StrEnum):
    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


class ControlMode(StrEnum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiResFixOption(StrEnum):
    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


_RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": ResizeMode.INNER_FIT, "Scale to Fit (Inner Fit)": ResizeMode.INNER_FIT,
    "Outer Fit (Shrink to Fit)": ResizeMode.OUTER_FIT, "Envelope (Outer Fit)": ResizeMode.OUTER_FIT,
}
# The extension's API maps integers to these in declaration order.
_RESIZE_ORDER = (ResizeMode.RESIZE, ResizeMode.INNER_FIT, ResizeMode.OUTER_FIT)
_CONTROL_ORDER = (ControlMode.BALANCED, ControlMode.PROMPT, ControlMode.CONTROL)
_HR_ORDER = (HiResFixOption.BOTH, HiResFixOption.LOW_RES_ONLY, HiResFixOption.HIGH_RES_ONLY)

# Fields in the order the extension writes them into infotext.
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")

# Fields the extension's API has that this engine does not act on: accepted only at their default value, so a
# request that relies on one is refused by name instead of being run without it.
_UNSUPPORTED_UNLESS_DEFAULT = {
    "advanced_weighting": None, "effective_region_mask": None, "ipadapter_input": None, "batch_images": None,
    "loopback": False, "output_dir": "", "animatediff_batch": False, "batch_image_files": None,
    "batch_keyframe_idx": None, "batch_mask_dir": None, "input_mode": ("simple", "InputMode.SIMPLE", 0),
}
# Fields accepted and ignored because they change nothing here (UI bookkeeping of the extension).
_IGNORED = {"is_ui", "inpaint_crop_input_image", "pulid_mode", "use_preview_as_input", "generated_image",
            "mask_image_crop", "image_fg"}


def _enum(kind: type[Enum], order: tuple, value: Any, name: str, aliases: dict | None = None) -> Any:
    if isinstance(value, kind):
        return value
    if isinstance(value, bool):
        raise UnitError(f"{name}: expected one of {[m.value for m in order]}, got {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < len(order):
            return order[index]
        raise UnitError(f"{name}: {value} is not one of 0..{len(order) - 1}")
    if isinstance(value, str):
        text = value.strip()
        if aliases and text in aliases:
            return aliases[text]
        for member in order:
            if text.lower() in (member.value.lower(), member.name.lower(), f"{kind.__name__}.{member.name}".lower()):
                return member
    raise UnitError(f"{name}: expected one of {[m.value for m in order]}, got {value!r}")


def _number(value: Any, name: str, kind: type = float) -> Any:
    if isinstance(value, bool):
        raise UnitError(f"{name}: expected a number, got {value!r}")
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise UnitError(f"{name}: expected a number, got {value!r}") from None
    if isinstance(number, float) and not np.isfinite(number):
        raise UnitError(f"{name}: expected a finite number, got {value!r}")
    return number


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UnitError(f"{name}: expected true or false, got {value!r}")


@dataclass
class ControlNetUnit:
    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    # Input (picture, mask) pairs: uint8 arrays, PIL images, or checked uploads decoded when the job runs
    # (anything with .load()); None = use the img2img input. See rgba_images().
    images: list[tuple[Any, Any]] | None = None
    resize_mode: ResizeMode = ResizeMode.INNER_FIT
    low_vram: bool = False
    processor_res: int = -1  # -1: the preprocessor's default
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    hr_option: HiResFixOption = HiResFixOption.BOTH
    save_detected_map: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # ignored UI fields, kept for round trips

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not 0.0 <= self.weight <= 2.0:
            raise UnitError(f"weight: {self.weight} is outside 0..2")
        for name in ("guidance_start", "guidance_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UnitError(f"{name}: {getattr(self, name)} is outside 0..1")
        if self.guidance_start > self.guidance_end:
            raise UnitError(f"guidance_start ({self.guidance_start}) is after guidance_end ({self.guidance_end})")

    def rgba_images(self) -> list[np.ndarray] | None:
        """The input pictures as HxWx4 uint8 (alpha = the unit's mask, 255 = masked)."""
        if self.images is None:
            return None
        return [rgba(picture, mask, f"image[{i}]." if len(self.images) > 1 else "")
                for i, (picture, mask) in enumerate(self.images)]

    @property
    def is_inpaint(self) -> bool:
        return "inpaint" in self.module

    @property
    def uses_model(self) -> bool:
        return bool(self.model) and self.model != "None"

    # --- the API's dicts ----------------------------------------------------------------------------------------
    @classmethod
    def from_api(cls, values: Any, decode_image: Any = None) -> ControlNetUnit:
        """A unit from the extension's API dict. `decode_image(text, field)` turns base64 text into a PIL image or
        a checked upload with .load() (the API's decoder); numpy arrays and PIL images are taken as they are."""
        if isinstance(values, ControlNetUnit):
            return values
        if not isinstance(values, dict):
            raise UnitError(f"expected a unit object (a JSON dict), got {type(values).__name__}")
        values = dict(values)
        for alias, key in (("input_image", "image"), ("lowvram", "low_vram"), ("guidance", "guidance_end"),
                           ("mask_image", "mask")):
            if alias in values:
                if key in values and values[key] is not None and values[alias] is not None:
                    raise UnitError(f"both '{alias}' and '{key}' are given; send one")
                value = values.pop(alias)
                if value is not None or key not in values:
                    values[key] = value
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)} - {"images", "extra"}
        for key, value in values.items():
            if key in ("image", "mask"):
                continue
            if key in _UNSUPPORTED_UNLESS_DEFAULT:
                default = _UNSUPPORTED_UNLESS_DEFAULT[key]
                allowed = default if isinstance(default, tuple) else (default,)
                if value not in allowed and not (isinstance(value, (list, str)) and not value):
                    raise UnitError(f"{key} is not supported here")
                continue
            if key in _IGNORED:
                extra[key] = value
                continue
            if key not in known:
                raise UnitError(f"unknown field {key!r}")
            kwargs[key] = value
        unit = cls(**_converted(kwargs))
        unit.extra = extra
        unit.images = _api_images(values.get("image"), values.get("mask"), decode_image)
        return unit

    def to_api(self) -> dict[str, Any]:
        """The unit as the extension's API returns it (enums as their strings; images left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("images", "extra"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        return out

    # --- infotext -----------------------------------------------------------------------------------------------
    def infotext(self) -> str:
        parts = []
        for name in INFOTEXT_FIELDS:
            value = getattr(self, name)
            text = value.value if isinstance(value, Enum) else str(value)
            parts.append(f"{name.replace('_', ' ').title()}: {text}")
        return ", ".join(parts)

    @classmethod
    def from_infotext(cls, text: str) -> ControlNetUnit:
        values: dict[str, Any] = {}
        for part in text.split(","):
            if ":" not in part:
                continue
            key, _, value = part.partition(":")
            name = key.strip().lower().replace(" ", "_")
            if name in INFOTEXT_FIELDS:
                values[name] = value.strip()
        if "module" not in values:
            raise UnitError(f"not a ControlNet unit: {text[:80]!r}")
        return cls(enabled=True, **_converted(values))


def _converted(values: dict[str, Any]) -> dict[str, Any]:
    """Field values from JSON or infotext text, converted and checked."""
    out = dict(values)
    conversions = {
        "enabled": _flag, "low_vram": _flag, "pixel_perfect": _flag, "save_detected_map": _flag,
        "weight": _number, "threshold_a": _number, "threshold_b": _number, "guidance_start": _number,
        "guidance_end": _number, "processor_res": lambda v, n: _number(v, n, int),
        "resize_mode": lambda v, n: _enum(ResizeMode, _RESIZE_ORDER, v, n, _RESIZE_ALIASES),
        "control_mode": lambda v, n: _enum(ControlMode, _CONTROL_ORDER, v, n),
        "hr_option": lambda v, n: _enum(HiResFixOption, _HR_ORDER, v, n),
    }
    for name, convert in conversions.items():
        if name in out and out[name] is not None:
            out[name] = convert(out[name], name)
        elif name in out:
            del out[name]
    for name in ("module", "model"):
        if name in out:
            if out[name] is None:
                del out[name]
            elif not isinstance(out[name], str):
                raise UnitError(f"{name}: expected a name, got {out[name]!r}")
    return out


def _as_array(image: Any, name: str) -> np.ndarray:
    from PIL import Image

    if hasattr(image, "load") and not isinstance(image, Image.Image):
        image = image.load()  # an upload checked when the request came, decoded now that the job runs
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"))
    if not isinstance(image, np.ndarray):
        raise UnitError(f"{name}: expected a picture, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UnitError(f"{name}: expected 8-bit pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise UnitError(f"{name}: expected an RGB picture, got shape {image.shape}")
    return image


def rgba(image: Any, mask: Any, where: str = "") -> np.ndarray:
    """HxWx4 uint8: the picture's RGB and the mask (255 = masked) as alpha. A picture's own transparency is not
    a mask (the extension ignores it too)."""
    rgb = _as_array(image, f"{where}image")
    alpha = np.zeros((*rgb.shape[:2], 1), np.uint8)
    if mask is not None:
        mask_array = _as_array(mask, f"{where}mask")
        if mask_array.shape[:2] != rgb.shape[:2]:
            raise UnitError(f"{where}mask: its size {mask_array.shape[1]}x{mask_array.shape[0]} differs from the "
                            f"image's {rgb.shape[1]}x{rgb.shape[0]}")
        alpha = mask_array[:, :, 0:1]
    return np.concatenate([rgb[:, :, :3], alpha], axis=2)


def _source(value: Any, name: str, decode_image: Any) -> Any:
    """A picture as given: arrays and PIL images as they are, base64 text through `decode_image`."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            return None
        if decode_image is None:
            raise UnitError(f"{name}: a base64 image is not accepted here")
        return decode_image(value, name)
    return value


def _api_images(image: Any, mask: Any, decode_image: Any) -> list[tuple[Any, Any]] | None:
    """The extension's image shapes: a base64 string (+ `mask`), {"image", "mask"}, [image, mask], or a list of
    {"image", "mask"} dicts. Returns (picture, mask) pairs of sources (see ControlNetUnit.images)."""
    if image is None or (isinstance(image, str) and not image):
        if mask is not None and mask != "":
            raise UnitError("mask: given without an image")
        return None
    if isinstance(image, dict):
        pairs = [(image.get("image"), image.get("mask"), "image.")]
    elif isinstance(image, (list, tuple)):
        if not image:
            raise UnitError("image: an empty list")
        if all(isinstance(item, dict) for item in image):
            pairs = [(item.get("image"), item.get("mask"), f"image[{i}].") for i, item in enumerate(image)]
        elif len(image) == 2:
            pairs = [(image[0], image[1], "image.")]
        else:
            raise UnitError("image: expected [image, mask] or a list of {image, mask}")
    else:
        pairs = [(image, mask, "")]
    out = []
    for picture, picture_mask, where in pairs:
        if picture is None:
            raise UnitError(f"{where}image: missing")
        out.append((_source(picture, f"{where}image", decode_image),
                    _source(picture_mask, f"{where}mask", decode_image)))
    return out
