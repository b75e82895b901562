"""Model upscalers, one `Upscaler` subclass per A1111 model folder (ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ScuNET).

Every file is read through the restricted loader (`.safetensors`, or a pickled `.pth/.pt/.ckpt` that may only
hold tensors) and handed to spandrel, which detects the architecture: no network is written by hand here. Only
image-to-image models that upscale or restore (spandrel's `ImageModelDescriptor` with purpose "SR" or
"Restoration", 3 channels in and out) are accepted; a face model, an inpainting model, an unknown state dict or
a corrupt file is refused with a `ModelFileError` naming the file.

Loaded models are cached as handles of the memory owner (group "upscaler"): at most `upscaler_models_in_memory`
stay loaded, least recently used first out, and the owner may unload them when another job needs the memory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.models import memory
from modules.models.checkpoint_files import ModelFileError
from modules.upscaler import Upscaler, UpscalerData

log = logging.getLogger(__name__)

MODEL_EXTENSIONS = [".pth", ".pt", ".ckpt", ".safetensors"]
ACCEPTED_PURPOSES = ("SR", "Restoration")  # Restoration: 1x models such as SCUNet (A1111's ScuNET folder)
MEMORY_GROUP = "upscaler"
# Training checkpoints of BasicSR / Real-ESRGAN keep the weights one level down, under one of these keys.


# --- finding files ---------------------------------------------------------------------------------------------

def model_files(model_path: str | None, user_path: str | None = None,
                ext_filter: Iterable[str] | None = None) -> list[str]:
    """Model files in `model_path` and `user_path` (and their subfolders), sorted, each listed once.

    Only regular files with one of the extensions in `ext_filter` (all of MODEL_EXTENSIONS when empty); hidden
    files and folders are skipped, and a link is followed only if it stays inside the folder being listed."""
    exts = tuple(e.lower() for e in (ext_filter or MODEL_EXTENSIONS))
    found: dict[str, str] = {}
    for folder in (model_path, user_path):
        if not folder or not os.path.isdir(folder):
            continue
        root = os.path.realpath(folder)
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if filename.startswith(".") or not filename.lower().endswith(exts):
                    continue
                path = os.path.join(dirpath, filename)
                real = os.path.realpath(path)
                if not os.path.isfile(real) or os.path.commonpath([root, real]) != root:
                    continue
                found.setdefault(real, os.path.abspath(path))
    return sorted(found.values(), key=lambda p: (os.path.basename(p).lower(), p))


def friendly_name(path: str) -> str:
    """A1111's name for a model file: its name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


_SCALE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(\d)x(?:[^a-z0-9]|$)|(?:^|[^a-z])x(\d)(?:[^0-9]|$)", re.IGNORECASE)


def scale_from_name(name: str, default: int = 4) -> int:
    """The scale a file name announces ("4x_foo", "RealESRGAN_x2plus", "DAT_x3"), else `default`."""
    match = _SCALE_IN_NAME.search(name)
    if match:
        value = int(match.group(1) or match.group(2))
        if value >= 1:
            return value
    return default


# --- loading ---------------------------------------------------------------------------------------------------

_install_lock = threading.Lock()
_installed = False


def spandrel_loader() -> Any:
    """spandrel's ModelLoader, with spandrel_extra_arches installed once (so HAT-like extras are known too)."""
    global _installed
    import spandrel

    with _install_lock:
        if not _installed:
            try:
                import spandrel_extra_arches

                spandrel_extra_arches.install(ignore_duplicates=True)
            except ImportError:  # the extra architectures are optional: the main registry still works
                log.warning("spandrel_extra_arches is not installed; only spandrel's own architectures are known")
            _installed = True
    return spandrel.ModelLoader()


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """The file's tensors, through the restricted loader (which also unwraps BasicSR's `params_ema`)."""
    from modules.models import checkpoint_files

    return checkpoint_files.read_state_dict(path, "cpu")


def load_descriptor(path: str) -> Any:
    """The spandrel ImageModelDescriptor of an upscale model file (float32, on the CPU, in eval mode)."""
    import spandrel

    state_dict = _read_weights(path)
    loader = spandrel_loader()
    try:
        descriptor = loader.load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise ModelFileError(path, "is not a model of a known upscaler architecture (spandrel does not recognise "
                                   "its weights)") from None
    except Exception as e:  # a known architecture whose weights do not fit it: a damaged or edited file
        raise ModelFileError(path, f"could not be loaded as an upscaler: {str(e).splitlines()[0][:300]}") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ModelFileError(path, f"is a {descriptor.architecture.name} model ({type(descriptor).__name__}), not "
                                   "an image upscaler")
    if descriptor.purpose not in ACCEPTED_PURPOSES:
        kind = "face restoration" if descriptor.purpose == "FaceSR" else descriptor.purpose
        raise ModelFileError(path, f"is a {kind} model ({descriptor.architecture.name}), not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelFileError(path, f"takes {descriptor.input_channels} and gives {descriptor.output_channels} "
                                   "channels; only RGB upscalers (3 and 3) are supported")
    return descriptor.eval()


def inference_dtype(descriptor: Any, device: torch.device) -> torch.dtype:
    """fp16 on CUDA where the architecture allows it, else bf16 where it allows that; float32 otherwise or when
    half precision is switched off (--no-half, --precision full)."""
    from modules import devices

    if device.type != "cuda" or devices.dtype_unet == torch.float32:
        return torch.float32
    if descriptor.supports_half:
        return torch.float16
    if descriptor.supports_bfloat16:
        return torch.bfloat16
    return torch.float32


@dataclass
class LoadedModel:
    descriptor: Any
    device: torch.device
    dtype: torch.dtype
    file_key: tuple[str, int, int]


_cache: dict[str, LoadedModel] = {}
_cache_lock = threading.RLock()


def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _handle_name(path: str) -> str:
    return f"{MEMORY_GROUP}:{os.path.realpath(path)}"


def _unloader(path: str):
    def unload() -> None:
        with _cache_lock:
            _cache.pop(os.path.realpath(path), None)
    return unload


def models_in_memory_limit() -> int:
    from modules import shared

    try:
        return max(0, int(shared.opts.data.get("upscaler_models_in_memory", 1)))
    except (TypeError, ValueError):
        return 1


def get_model(path: str, device: torch.device | None = None) -> LoadedModel:
    """The loaded model of `path` on `device` (the cache's, if the file has not changed)."""
    from modules import devices

    device = device or devices.device
    key = _file_key(path)
    name = _handle_name(path)
    with _cache_lock:
        loaded = _cache.get(key[0])
        if loaded is not None and loaded.file_key == key and loaded.device == device:
            memory.owner.touch(name)
            return loaded
    memory.owner.unload(name)  # a changed file, or another device: load afresh
    descriptor = load_descriptor(path)
    dtype = inference_dtype(descriptor, device)
    size = memory.module_size_bytes(descriptor.model) * torch.tensor([], dtype=dtype).element_size() // 4
    memory.owner.make_room(size, device)
    memory.owner.run_with_oom_retry(lambda: descriptor.to(device=device, dtype=dtype), device, keep=[])
    loaded = LoadedModel(descriptor, device, dtype, key)
    with _cache_lock:
        _cache[key[0]] = loaded
    memory.owner.register(name, size, _unloader(path), device, group=MEMORY_GROUP)
    # the LRU: keep at most N upscaler models (0 = unload after use, done by the caller)
    memory.owner.trim_group(MEMORY_GROUP, max(1, models_in_memory_limit()))
    return loaded


def release_after_use(path: str) -> None:
    """With `upscaler_models_in_memory` = 0 nothing stays loaded between jobs."""
    if models_in_memory_limit() == 0:
        memory.owner.unload(_handle_name(path))


def unload_all() -> None:
    for handle in memory.owner.handles(group=MEMORY_GROUP):
        memory.owner.unload(handle.name)


# --- running ---------------------------------------------------------------------------------------------------

# Bytes cross between host and device as uint8 (a quarter of float32) and are converted on the device: for a
# 4096x4096 result that is what keeps the conversions small next to the network.
def _to_tensor(img: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    array = np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: torch shares its memory
    pixels = torch.from_numpy(array).to(device, non_blocking=False)
    return pixels.permute(2, 0, 1).unsqueeze(0).to(dtype).div_(255)


@torch.inference_mode()
def _to_image(tensor: torch.Tensor) -> Image.Image:
    pixels = tensor[0].float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.fromarray(pixels.cpu().numpy(), "RGB")


def upscale_with_model(loaded: LoadedModel, img: Image.Image) -> Image.Image | None:
    """One pass of the model over `img`, tiled as the settings say; None if the job was interrupted."""
    from modules import shared
    from modules.upscaler_tiling import upscale_tiled

    descriptor = loaded.descriptor
    tile = int(shared.opts.data.get("ESRGAN_tile", 192))
    overlap = int(shared.opts.data.get("ESRGAN_tile_overlap", 8))
    if getattr(descriptor.tiling, "name", "") == "INTERNAL":  # the model tiles itself
        tile = 0

    def run() -> torch.Tensor | None:
        with torch.inference_mode():
            image = _to_tensor(img, loaded.device, loaded.dtype)
            return upscale_tiled(descriptor, image, descriptor.scale, tile, overlap,
                                 interrupted=lambda: bool(shared.state.interrupted))

    keep = [_handle_name(loaded.file_key[0])]
    try:
        out = memory.owner.run_with_oom_retry(run, loaded.device, keep=keep)
    except RuntimeError as e:
        if loaded.dtype == torch.float32 or not _is_dtype_mismatch(e):
            raise
        # spandrel's half/bf16 flags are not always right for every input size (SwinIR builds its attention
        # mask in float32 for sizes other than its training size): this model runs in float32 from now on
        log.warning("%s fails in %s (%s); using float32", os.path.basename(loaded.file_key[0]), loaded.dtype, e)
        descriptor.model.float()
        loaded.dtype = torch.float32
        out = memory.owner.run_with_oom_retry(run, loaded.device, keep=keep)
    if out is None:
        return None
    result = _to_image(out)
    if img.mode == "RGBA":  # the network sees RGB; the alpha channel is resized alongside
        result.putalpha(img.getchannel("A").resize(result.size, Image.Resampling.LANCZOS))
    return result


def _is_dtype_mismatch(error: RuntimeError) -> bool:
    text = str(error)
    return "expected scalar type" in text or "dtype" in text or "should be the same" in text


# --- the upscalers ---------------------------------------------------------------------------------------------

class UpscalerSpandrel(Upscaler):
    """An A1111 model folder: every file in it is one choice (`UpscalerData`) named after the file."""

    folder = ""  # the folder under models/
    flag_dest: str | None = None  # the cmd_opts attribute of its --*-models-path flag, if it has one

    def __init__(self, dirname: str | None = None):
        from modules import shared

        super().__init__(False)
        self.model_name = self.name
        self.model_path = os.path.join(shared.models_path, self.folder)
        flag_path = getattr(shared.cmd_opts, self.flag_dest, None) if self.flag_dest else None
        self.user_path = dirname or flag_path
        self.scalers = [
            UpscalerData(friendly_name(path), path, known_scale(path), self) for path in self.find_models()
        ]

    def load_model(self, path: str) -> Any:
        return get_model(path).descriptor

    def do_upscale(self, img: Image.Image, selected_model: str | None) -> Image.Image:
        if not selected_model:
            raise ValueError(f"{self.name}: no model file chosen")
        loaded = get_model(selected_model)
        _remember_scale(selected_model, loaded.descriptor.scale)
        for data in self.scalers:  # the model knows its scale better than its name
            if data.data_path == selected_model:
                data.scale = loaded.descriptor.scale
        try:
            result = upscale_with_model(loaded, img)
        finally:
            release_after_use(selected_model)
        return img if result is None else result


_known_scales: dict[tuple[str, int, int], int] = {}


def _remember_scale(path: str, scale: int) -> None:
    _known_scales[_file_key(path)] = int(scale)


def known_scale(path: str) -> int:
    """The model's own scale once it has been loaded, else what its name says (4 if it says nothing)."""
    try:
        remembered = _known_scales.get(_file_key(path))
    except OSError:
        remembered = None
    return remembered if remembered is not None else scale_from_name(friendly_name(path))


class UpscalerESRGAN(UpscalerSpandrel):
    name = "ESRGAN"
    folder = "ESRGAN"
    flag_dest = "esrgan_models_path"


class UpscalerRealESRGAN(UpscalerSpandrel):
    name = "RealESRGAN"
    folder = "RealESRGAN"
    flag_dest = "realesrgan_models_path"


class UpscalerSwinIR(UpscalerSpandrel):
    name = "SwinIR"
    folder = "SwinIR"
    flag_dest = "swinir_models_path"


class UpscalerDAT(UpscalerSpandrel):
    name = "DAT"
    folder = "DAT"
    flag_dest = "dat_models_path"


class UpscalerHAT(UpscalerSpandrel):
    name = "HAT"
    folder = "HAT"
    flag_dest = "hat_models_path"


class UpscalerScuNET(UpscalerSpandrel):
    name = "ScuNET"
    folder = "ScuNET"
    flag_dest = "scunet_models_path"


# A1111's order in the upscaler lists
MODEL_UPSCALERS: list[type[UpscalerSpandrel]] = [
    UpscalerESRGAN, UpscalerRealESRGAN, UpscalerSwinIR, UpscalerDAT, UpscalerHAT, UpscalerScuNET,
]
