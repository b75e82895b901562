"""The ControlNet preprocessor registry (sd-webui-controlnet's "modules"), filled by built-ins and extensions alike.

A preprocessor turns the unit's input image into the detected map the ControlNet model sees: an RGB HxWx3 uint8
array in, an RGB HxWx3 uint8 array out, plus the processor resolution and two threshold sliders (A/B), exactly
the knobs the extension's API sends as `processor_res`, `threshold_a`, `threshold_b`.

Names follow the extension's UI labels ("depth_midas", "invert (from white bg & black line)", "softedge_pidinet"),
and `aliases` hold its internal module keys ("depth", "invert", "pidinet"), which its API returns by default and
which old client scripts send. `get` accepts either, case-insensitively. Where a preprocessor has an alias,
`aliases[0]` is that internal key (see `api_names`).

`model_free` on a `Preprocessor` means "needs no preprocessor weights" (canny, threshold, ...). The extension's
`module_detail` field of the same name means something else: "needs no ControlNet model" (reference_only,
revision); that one comes from `needs_control_model`.

This module is the registry alone; `modules.controlnet.preprocessors` is what callers import: the same names,
with every built-in registered (model-free ones from `preprocessors_basic`, depth adapters from
`preprocessors_depth`, the IP-Adapter pass-through, the networks in `nets`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modules import paths
from modules.controlnet.preprocessor_images import hwc3

PREPROCESSOR_MODELS_FOLDER = "ControlNetPreprocessor"
# where people moving from A1111 have their annotator weights
EXTENSION_DOWNLOADS = ("sd-webui-controlnet", "annotator", "downloads")
MAX_IMAGE_SIDE = 16384  # larger inputs are refused rather than allocated


@dataclass(frozen=True)
class Slider:
    label: str
    minimum: float
    maximum: float
    value: float
    step: float = 1.0

    def clamp(self, value: float) -> float:
        return min(max(float(value), self.minimum), self.maximum)

    def as_extension_dict(self) -> dict:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


RESOLUTION = Slider("Preprocessor Resolution", 64, 2048, 512, 8)

PreprocessorFn = Callable[[np.ndarray, int, float, float], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str  # the extension's UI label: "none", "canny", "depth_midas", "invert (from white bg & black line)"
    control_type: str  # the extension's control type: "Canny", "Depth", "OpenPose", "Lineart", ...
    fn: PreprocessorFn
    # (RGB HxWx3 uint8, processor resolution, threshold_a, threshold_b) -> detected map, uint8 HxWx3 at about the
    # processor resolution (short side = resolution), or at the input size when `resolution` is None
    resolution: Slider | None = RESOLUTION  # None: the preprocessor does not use a resolution
    slider_a: Slider | None = None
    slider_b: Slider | None = None
    model_free: bool = True  # needs no preprocessor weights
    aliases: tuple[str, ...] = ()  # the extension's internal module key first, then older names
    also_control_types: tuple[str, ...] = ()  # further control types listing it (invert: Lineart, Scribble, ...)
    needs_control_model: bool = True  # False only for ones that drive the UNet without a ControlNet model

    @property
    def api_name(self) -> str:
        """The extension's internal module key (its /controlnet/module_list without alias_names)."""
        return self.aliases[0] if self.aliases else self.name

    @property
    def control_types(self) -> tuple[str, ...]:
        return (self.control_type, *self.also_control_types)


class UnknownPreprocessor(KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f'ControlNet preprocessor "{name}" does not exist; known: {", ".join(known)}')

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingWeights(FileNotFoundError):
    def __init__(self, preprocessor: str, path: str):
        self.preprocessor = preprocessor
        self.path = path
        super().__init__(f'ControlNet preprocessor "{preprocessor}" needs its weights at {path}; the file is missing')

    def __str__(self) -> str:
        return str(self.args[0])


_lock = threading.Lock()
_by_name: dict[str, Preprocessor] = {}  # canonical name -> preprocessor, in registration order
_lookup: dict[str, str] = {}  # lower-cased name or alias -> canonical name


def register(p: Preprocessor) -> None:
    """Add `p`; registering a name again replaces it (an extension reloaded). A name or alias already taken by a
    different preprocessor is refused, so one never silently shadows another."""
    keys = [p.name.lower(), *(a.lower() for a in p.aliases)]
    with _lock:
        for key in keys:
            owner = _lookup.get(key)
            if owner is not None and owner != p.name:
                raise ValueError(f'ControlNet preprocessor "{p.name}": the name "{key}" is already used by "{owner}"')
        old = _by_name.pop(p.name, None)
        if old is not None:
            for key in [old.name.lower(), *(a.lower() for a in old.aliases)]:
                _lookup.pop(key, None)
        _by_name[p.name] = p
        for key in keys:
            _lookup[key] = p.name


def unregister(name: str) -> None:
    """Remove a preprocessor by name or alias (an extension unloaded); unknown names are ignored."""
    with _lock:
        canonical = _lookup.get(name.lower())
        if canonical is None:
            return
        p = _by_name.pop(canonical)
        for key in [p.name.lower(), *(a.lower() for a in p.aliases)]:
            _lookup.pop(key, None)


def get(name: str) -> Preprocessor:
    """By name or alias, case-insensitive; UnknownPreprocessor names it and lists the known ones."""
    canonical = _lookup.get(str(name).strip().lower()) if name is not None else None
    if canonical is None:
        raise UnknownPreprocessor(str(name), names())
    return _by_name[canonical]


def _sort_key(p: Preprocessor) -> tuple[int, str]:
    # the extension's dropdown: "none", then invert, then the rest sorted by label
    if p.name == "none":
        return (0, "")
    if "invert" in p.aliases:
        return (1, "")
    return (2, p.name)


def all_preprocessors() -> list[Preprocessor]:
    with _lock:
        items = list(_by_name.values())
    return sorted(items, key=_sort_key)


def names() -> list[str]:
    """All names in the extension's dropdown order: "none", invert, then alphabetical."""
    return [p.name for p in all_preprocessors()]


def api_names(alias_names: bool = True) -> list[str]:
    """The extension's /controlnet/module_list "module_list": its internal keys ("depth") by default there, its
    labels ("depth_midas", our names) with `alias_names=true`."""
    return [p.name if alias_names else p.api_name for p in all_preprocessors()]


def _checked_image(name: str, image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from what callers hand in (grey, RGB, RGBA on white as the extension's HWC3 does)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f'ControlNet preprocessor "{name}": the image must be a uint8 array')
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f'ControlNet preprocessor "{name}": the image must be HxW, HxWx1, HxWx3 or HxWx4, '
                         f"not {image.shape}")
    if max(image.shape[:2]) > MAX_IMAGE_SIDE:
        raise ValueError(f'ControlNet preprocessor "{name}": the image is {image.shape[1]}x{image.shape[0]}; '
                         f"the largest side allowed is {MAX_IMAGE_SIDE}")
    return hwc3(image)


def _slider_value(name: str, slider: Slider | None, value: float | None) -> float:
    """None or a negative value (the extension API's -1) takes the slider's default; others are clamped."""
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            label = slider.label if slider else "a threshold"
            raise ValueError(f'ControlNet preprocessor "{name}": {label} must be a finite number, not {value}')
    if slider is None:
        return 0.0 if value is None else value  # passed through; the preprocessor ignores it
    if value is None or value < 0:
        return float(slider.value)
    return slider.clamp(value)


def run(name: str, image: np.ndarray, resolution: int = 512, threshold_a: float | None = None,
        threshold_b: float | None = None) -> np.ndarray:
    """Run a preprocessor by name or alias on an RGB (or grey / RGBA) uint8 image; returns RGB HxWx3 uint8.
    As the extension does, None or a negative value (its API's -1) means the slider's default; other values,
    the resolution included, are clamped to the slider's range."""
    p = get(name)
    original = image
    image = _checked_image(p.name, image)
    res_slider = p.resolution or RESOLUTION  # unused by the preprocessor, but handed on in range
    res = int(round(_slider_value(p.name, res_slider, resolution)))
    height, width = image.shape[:2]
    if p.resolution is not None and max(height, width) * res / min(height, width) > MAX_IMAGE_SIDE:
        raise ValueError(f'ControlNet preprocessor "{p.name}": a {width}x{height} image scaled to resolution {res} '
                         f"would be longer than {MAX_IMAGE_SIDE} pixels")
    a = _slider_value(p.name, p.slider_a, threshold_a)
    b = _slider_value(p.name, p.slider_b, threshold_b)
    result = p.fn(image, res, a, b)
    if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.ndim not in (2, 3):
        raise RuntimeError(f'ControlNet preprocessor "{p.name}" returned no uint8 image')
    result = hwc3(result)
    # "none" and friends hand the image back: the caller's array must not become the detected map
    return result.copy() if np.shares_memory(result, original) else result


def module_detail(alias_names: bool = True) -> dict[str, dict]:
    """The extension's /controlnet/module_list "module_detail": per module whether it needs no ControlNet model
    and its sliders ([resolution, A, B] as the extension lists them: None holds the place of an absent earlier
    slider, trailing absent ones are left out)."""
    detail: dict[str, dict] = {}
    for p in all_preprocessors():
        sliders: list[dict | None] = [s.as_extension_dict() if s else None
                                      for s in (p.resolution, p.slider_a, p.slider_b)]
        while sliders and sliders[-1] is None:
            sliders.pop()
        detail[p.name if alias_names else p.api_name] = {"model_free": not p.needs_control_model,
                                                         "sliders": sliders}
    return detail


# The extension's control types in its order, with the preprocessor each selects by default.
CONTROL_TYPE_DEFAULTS: dict[str, str] = {
    "All": "none",
    "Canny": "canny",
    "Depth": "depth_midas",
    "NormalMap": "normal_bae",
    "OpenPose": "openpose_full",
    "MLSD": "mlsd",
    "Lineart": "lineart_standard (from white bg & black line)",
    "SoftEdge": "softedge_pidinet",
    "Scribble/Sketch": "scribble_pidinet",
    "Segmentation": "seg_ofade20k",
    "Shuffle": "shuffle",
    "Tile/Blur": "tile_resample",
    "Inpaint": "inpaint_only",
    "InstructP2P": "none",
    "Reference": "reference_only",
    "Recolor": "recolor_luminance",
    "Revision": "revision_clipvision",
    "T2I-Adapter": "none",
    "IP-Adapter": "ip-adapter_clip_sd15",
}


def control_types() -> dict[str, dict]:
    """The extension's /controlnet/control_types "control_types": per type its preprocessors ("none" first),
    an empty model_list for the API layer to fill, the default preprocessor and "None" as default model. The
    default falls back to the first preprocessor made for the type (not one only also listed there, as invert
    is) when the extension's default is not here, else "none"."""
    ordered = all_preprocessors()
    types = list(CONTROL_TYPE_DEFAULTS)
    for p in ordered:
        types += [t for t in p.control_types if t not in types]
    result: dict[str, dict] = {}
    for control_type in types:
        if control_type == "All":
            modules = [p.name for p in ordered]
        else:
            modules = [p.name for p in ordered if p.name == "none" or control_type in p.control_types]
        default = CONTROL_TYPE_DEFAULTS.get(control_type, "none")
        if default not in modules:
            own = [p.name for p in ordered if p.control_type == control_type and p.name != "none"]
            default = own[0] if own else "none"
        result[control_type] = {"module_list": modules, "model_list": [], "default_option": default,
                                "default_model": "None"}
    return result


def weights_path(preprocessor: str, *relative: str) -> str:
    """The first existing of models/ControlNetPreprocessor/<relative...> and the extension's
    extensions/sd-webui-controlnet/annotator/downloads/<relative...>; MissingWeights names the first otherwise."""
    parts = [str(part) for part in relative]
    if not parts or any(not part or os.path.isabs(part) or ".." in part.replace("\\", "/").split("/")
                        for part in parts):
        raise ValueError(f'ControlNet preprocessor "{preprocessor}": bad weights path {parts!r}')
    candidates = [os.path.join(paths.models_path, PREPROCESSOR_MODELS_FOLDER, *parts),
                  os.path.join(paths.extensions_dir, *EXTENSION_DOWNLOADS, *parts)]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise MissingWeights(preprocessor, candidates[0])


__all__ = [
    "PREPROCESSOR_MODELS_FOLDER",
    "EXTENSION_DOWNLOADS",
    "MAX_IMAGE_SIDE",
    "Slider",
    "RESOLUTION",
    "PreprocessorFn",
    "Preprocessor",
    "UnknownPreprocessor",
    "MissingWeights",
    "register",
    "unregister",
    "get",
    "all_preprocessors",
    "names",
    "api_names",
    "run",
    "module_detail",
    "CONTROL_TYPE_DEFAULTS",
    "control_types",
    "weights_path",
]
