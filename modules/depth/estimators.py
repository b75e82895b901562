"""The depth estimator registry, shared by the Depth tab, depth2img and ControlNet's depth preprocessors.

    names() -> ["midas_dpt_hybrid", ...]          estimators that work (their weights may still be missing)
    estimate(name, image, resolution) -> HxW float32 at the image's size, relative inverse depth
                                         (larger = nearer), min-max normalised to [0, 1]
    predict(name, image, resolution)  -> the raw prediction, a [h, w] tensor at the network's size (depth2img
                                         resizes it to the latent itself, as the SD2 reference does)

Weights come from models/depth/<name>/ (see modules/depth/weights.py); a missing one raises MissingDepthWeights
naming the path expected. Loaded networks are handles of the memory owner (group "depth"), at most
MAX_LOADED kept, least recently used first out; a changed file is loaded afresh.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules.depth.weights import MissingDepthWeights, Weights, find
from modules.models import memory

__all__ = ["MissingDepthWeights", "Estimator", "estimate", "get", "names", "normalise", "predict", "register",
           "spec", "unload_all"]

MEMORY_GROUP = "depth"
MAX_LOADED = 2  # a ControlNet unit and the Depth tab may each want their own
DEFAULT = "midas_dpt_hybrid"  # what SD2-depth was trained with


class Loaded(Protocol):
    """A loaded network: moves between devices, predicts relative inverse depth at its own size."""

    device: torch.device

    @property
    def size_bytes(self) -> int: ...

    def to(self, device: torch.device, half: bool) -> None: ...

    def predict(self, image: Image.Image, resolution: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Estimator:
    name: str
    label: str
    default_resolution: int  # the processing size the network was trained at
    load: Callable[[Weights], Loaded]


_registry: dict[str, Estimator] = {}


def register(estimator: Estimator) -> None:
    """Add (or replace) an estimator; built-ins and extensions alike."""
    _registry[estimator.name] = estimator


def names() -> list[str]:
    return list(_registry)


def spec(name: str) -> Estimator:
    try:
        return _registry[name]
    except KeyError:
        raise ValueError(f"unknown depth estimator {name!r}; known: {', '.join(_registry)}") from None


# --- loading ---------------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    loaded: Loaded
    file_key: tuple


_cache: dict[str, _Entry] = {}
_lock = threading.RLock()


def _file_key(weights: Weights) -> tuple:
    """Identity of the files on disk: a replaced file loads afresh."""
    paths = [p for p in (weights.weights_file, weights.config_file) if p]
    if weights.folder and not paths:
        paths = [os.path.join(weights.folder, "model_index.json")]
    return tuple((os.path.realpath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)


def _handle(name: str) -> str:
    return f"{MEMORY_GROUP}:{name}"


def _unloader(name: str) -> Callable[[], None]:
    def unload() -> None:
        with _lock:
            _cache.pop(name, None)
    return unload


def _half() -> bool:
    from modules import devices

    return devices.dtype_unet != torch.float32


def get(name: str, device: torch.device | None = None) -> Loaded:
    """The loaded estimator `name` on `device` (default: the generation device), loading it if needed."""
    from modules import devices

    estimator = spec(name)
    device = torch.device(device) if device is not None else devices.device
    weights = find(name)
    key = _file_key(weights)
    with _lock:
        entry = _cache.get(name)
        if entry is not None and entry.file_key == key:
            if entry.loaded.device != device:
                memory.owner.make_room(entry.loaded.size_bytes, device, keep=[_handle(name)])
                entry.loaded.to(device, _half())
                memory.owner.register(_handle(name), entry.loaded.size_bytes, _unloader(name), device, MEMORY_GROUP)
            memory.owner.touch(_handle(name))
            return entry.loaded
        memory.owner.unload(_handle(name))
        loaded = estimator.load(weights)
        memory.owner.make_room(loaded.size_bytes, device)
        memory.owner.run_with_oom_retry(lambda: loaded.to(device, _half()), device)
        _cache[name] = _Entry(loaded, key)
    memory.owner.register(_handle(name), loaded.size_bytes, _unloader(name), device, MEMORY_GROUP)
    memory.owner.trim_group(MEMORY_GROUP, MAX_LOADED)
    return loaded


def unload_all() -> None:
    for handle in memory.owner.handles(group=MEMORY_GROUP):
        memory.owner.unload(handle.name)


# --- running ---------------------------------------------------------------------------------------------------

def _checked_image(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"a depth estimator takes a PIL image, not {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError("the image is empty")
    return image.convert("RGB")


def predict(name: str, image: Image.Image, resolution: int | None = None,
            device: torch.device | None = None) -> torch.Tensor:
    """The network's raw relative inverse depth, [h, w] float32 at its processing size, on its device."""
    image = _checked_image(image)
    resolution = int(resolution or spec(name).default_resolution)
    if resolution < 1:
        raise ValueError(f"processing resolution must be positive, not {resolution}")
    loaded = get(name, device)
    handle = _handle(name)
    return memory.owner.run_with_oom_retry(lambda: loaded.predict(image, resolution), loaded.device, keep=[handle])


def normalise(depth: np.ndarray | torch.Tensor) -> np.ndarray:
    """Min-max to [0, 1] as float32; a flat map (no depth information) becomes all zeros."""
    array = depth.detach().float().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth, np.float32)
    array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if high - low <= 1e-12:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def estimate(name: str, image: Image.Image, resolution: int = 512) -> np.ndarray:
    """float32 HxW at the image's size: relative inverse depth (larger = nearer), min-max normalised to [0, 1]."""
    image = _checked_image(image)
    depth = predict(name, image, resolution)
    # back to the picture's size, bicubic as transformers' post_process_depth_estimation does
    resized = F.interpolate(depth[None, None].float(), size=(image.height, image.width), mode="bicubic",
                            align_corners=False)[0, 0]
    return normalise(resized)


# --- built-ins -------------------------------------------------------------------------------------------------

def _transformers_loader(model_type: str) -> Callable[[Weights], Any]:
    def load(weights: Weights):
        from modules.depth import transformers_depth

        return transformers_depth.load(weights, model_type)
    return load


register(Estimator("midas_dpt_hybrid", "MiDaS v3 DPT-Hybrid", 384, _transformers_loader("dpt")))
register(Estimator("midas_dpt_large", "MiDaS v3 DPT-Large", 384, _transformers_loader("dpt")))
register(Estimator("depth_anything_v2_small", "Depth Anything V2 Small", 518, _transformers_loader("depth_anything")))
register(Estimator("depth_anything_v2_base", "Depth Anything V2 Base", 518, _transformers_loader("depth_anything")))
register(Estimator("depth_anything_v2_large", "Depth Anything V2 Large", 518, _transformers_loader("depth_anything")))


def _marigold_loader(weights: Weights) -> Any:
    from modules.depth import marigold

    return marigold.load(weights)


register(Estimator("marigold", "Marigold (diffusers)", 768, _marigold_loader))
