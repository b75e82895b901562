"""Loading ControlNets and T2I-Adapters as diffusers' model classes, cached as memory-owner handles.

`load(file, device, dtype)` reads the weights (through the restricted loader), converts an original layout to
diffusers' key names, reads the config off the shapes (modules/controlnet/configs.py), builds the model on the
meta device and checks that its every key and shape matches the file before any memory is spent on it: a file
that does not fit is refused with a `ControlModelError` naming it.

Loaded models are cached by file (real path, mtime, size) as handles of the memory owner in group "controlnet",
at most `control_net_model_cache_size` of them, least recently used out first; the owner may also unload them
when a job needs the memory. Switching between cached models costs a dictionary look-up, no read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from modules.controlnet import configs, convert_original
from modules.controlnet.files import ControlModelFile
from modules.models import checkpoint_files, memory
from modules.models.checkpoint_files import ModelFileError

log = logging.getLogger(__name__)

MEMORY_GROUP = "controlnet"
MAX_CONFIG_BYTES = 1024 * 1024
FAMILY_TEXT = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
_FAMILY_ALIASES = {"sd1.x": "sd1", "sd15": "sd1", "sd2.x": "sd2", "sdxl refiner": "sdxl_refiner"}
LOADABLE = ("controlnet", "t2i_adapter")


class ControlModelError(ModelFileError):
    """A control model file that cannot be used; the message names the model ("ControlNet <name>: ...")."""


@dataclass
class LoadedControl:
    file: ControlModelFile
    kind: str  # "controlnet" | "t2i_adapter"
    family: str | None
    model: torch.nn.Module  # diffusers ControlNetModel / T2IAdapter, eval mode, on device in dtype
    device: torch.device
    dtype: torch.dtype
    downscale_factor: int | None = None  # T2I-Adapter: its pixel-unshuffle factor
    total_downscale_factor: int | None = None  # T2I-Adapter: image sides must be multiples of this

    @property
    def name(self) -> str:
        return self.file.name


@dataclass
class _Cached:
    loaded: LoadedControl
    file_key: tuple[str, int, int]


_cache: dict[str, _Cached] = {}
_cache_lock = threading.RLock()
_load_lock = threading.Lock()  # one read at a time: two jobs asking for one file read it once


def _error(file: ControlModelFile, reason: str) -> ControlModelError:
    return ControlModelError(file.path, reason, name=f"{file.kind_label} {file.name}")


def _file_key(file: ControlModelFile) -> tuple[str, int, int]:
    st = os.stat(file.weights_path)
    return os.path.realpath(file.weights_path), st.st_mtime_ns, st.st_size


def _handle_name(file: ControlModelFile) -> str:
    return f"{MEMORY_GROUP}:{os.path.realpath(file.path)}"


def cache_size() -> int:
    from modules import shared

    try:
        return max(1, int(shared.opts.data.get("control_net_model_cache_size", 2)))
    except (TypeError, ValueError):
        return 2


def normalise_family(family: str | None) -> str | None:
    if family is None:
        return None
    text = str(family).strip().lower()
    return _FAMILY_ALIASES.get(text, text)


def check_family(item: LoadedControl | ControlModelFile, model_family: str | None) -> None:
    """Refuse a control model made for another family than the loaded checkpoint's ("sd1", "sd2", "sdxl",
    "sdxl_refiner"; "SD1"/"SDXL" also accepted). A file whose family cannot be told passes."""
    file = item.file if isinstance(item, LoadedControl) else item
    wanted = normalise_family(model_family)
    if file.family is None or wanted is None or file.family == wanted:
        return
    raise _error(file, f"made for {FAMILY_TEXT.get(file.family, file.family)}, the loaded model is "
                       f"{FAMILY_TEXT.get(wanted, str(model_family))}")


# --- reading and building --------------------------------------------------------------------------------------


def _read_folder_config(file: ControlModelFile) -> dict[str, Any]:
    path = os.path.join(file.path, "config.json")
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise _error(file, f"config.json is larger than {MAX_CONFIG_BYTES // 1024} KiB")
        with open(path, encoding="utf8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise _error(file, f"config.json cannot be read ({str(e)[:200]})") from e
    if not isinstance(data, dict):
        raise _error(file, "config.json is not a JSON object")
    return data


def _global_pooling(file: ControlModelFile) -> bool:
    """ControlNet 1.1 shuffle pools its output over the image; original files say so only by name (the
    extension's yaml sidecar for it sets global_average_pooling)."""
    return file.layout == "original" and "shuffle" in file.name.lower()


def _instantiate(cls: Any, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`cls` built from `config` on the meta device, then given the file's tensors if every key and shape fits."""
    with torch.device("meta"):
        model = cls.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown weights ({', '.join(unexpected[:3])}"
                        f"{', ...' if len(unexpected) > 3 else ''})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} weights of the wrong shape ({k}: {tuple(state_dict[k].shape)} where "
                        f"{expected[k]} fits)")
    not_float = next((k for k, v in state_dict.items() if not v.is_floating_point()), None)
    if not_float:
        problems.append(f"weight {not_float} is not floating point")
    if problems:
        raise ValueError("; ".join(problems))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def _read_weights(file: ControlModelFile) -> dict[str, torch.Tensor]:
    return checkpoint_files.read_state_dict(file.weights_path, "cpu")


def build(file: ControlModelFile, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The diffusers model of `file` from its tensors (CPU, the file's dtype). ValueError when they do not fit."""
    from diffusers import ControlNetModel, T2IAdapter

    given = _read_folder_config(file) if file.is_folder else {}
    if file.kind == "controlnet":
        if file.layout == "original":
            state_dict = convert_original.controlnet_to_diffusers(state_dict)
        config = configs.controlnet_config(state_dict, file.family)
        if _global_pooling(file):
            config["global_pool_conditions"] = True
        return _instantiate(ControlNetModel, configs.apply_overrides(config, given), state_dict)
    if file.layout == "original":
        state_dict = convert_original.adapter_to_diffusers(state_dict)
    return _instantiate(T2IAdapter, configs.adapter_config(state_dict), state_dict)


def _unloader(path_key: str):
    def unload() -> None:
        with _cache_lock:
            _cache.pop(path_key, None)
    return unload


def _describe(model: torch.nn.Module) -> dict[str, int | None]:
    return {"downscale_factor": getattr(model, "downscale_factor", None),
            "total_downscale_factor": getattr(model, "total_downscale_factor", None)}


def _move(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, handle: str) -> None:
    size = memory.module_size_bytes(model) * torch.tensor([], dtype=dtype).element_size()
    size //= max(1, next(model.parameters()).element_size())
    memory.owner.make_room(size, device, keep=[handle])
    # nn.Module.to: diffusers' override warns about float32-only modules on every dtype move, even with none
    memory.owner.run_with_oom_retry(lambda: torch.nn.Module.to(model, device=device, dtype=dtype), device,
                                    keep=[handle])


def _cached(file: ControlModelFile, key: tuple[str, int, int], device: torch.device,
            dtype: torch.dtype) -> LoadedControl | None:
    handle = _handle_name(file)
    with _cache_lock:
        entry = _cache.get(os.path.realpath(file.path))
        if entry is None or entry.file_key != key or handle not in memory.owner:
            return None
        loaded = entry.loaded
    if loaded.device != device or loaded.dtype != dtype:
        _move(loaded.model, device, dtype, handle)
        loaded.device, loaded.dtype = device, dtype
        memory.owner.register(handle, memory.module_size_bytes(loaded.model), _unloader(os.path.realpath(file.path)),
                              device, group=MEMORY_GROUP)
    memory.owner.touch(handle)
    loaded.file = file
    return loaded


def load(file: ControlModelFile, device: torch.device, dtype: torch.dtype) -> LoadedControl:
    """The ControlNet or T2I-Adapter of `file`, eval mode, on `device` in `dtype`; from the cache while the
    file is unchanged. Raises ControlModelError naming the model when the file cannot be used."""
    device = torch.device(device)
    if file.kind not in LOADABLE:
        raise _error(file, "IP-Adapter models are listed but cannot be loaded yet" if file.kind == "ip_adapter"
                     else f"kind {file.kind!r} cannot be loaded")
    try:
        key = _file_key(file)
    except OSError as e:
        raise _error(file, f"the file is gone or unreadable ({e.strerror or e})") from e
    loaded = _cached(file, key, device, dtype)
    if loaded is not None:
        return loaded
    with _load_lock:
        loaded = _cached(file, key, device, dtype)  # another thread may have loaded it meanwhile
        if loaded is not None:
            return loaded
        handle = _handle_name(file)
        memory.owner.unload(handle)  # a changed file: drop the old model before reading the new one
        try:
            state_dict = _read_weights(file)
            model = build(file, state_dict)
        except ControlModelError:
            raise
        except ModelFileError as e:
            raise _error(file, e.reason) from e
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise _error(file, f"does not fit a {file.kind_label}: {str(e).splitlines()[0][:400]}") from e
        del state_dict
        model.eval().requires_grad_(False)
        _move(model, device, dtype, handle)
        loaded = LoadedControl(file, file.kind, file.family, model, device, dtype, **_describe(model))
        path_key = os.path.realpath(file.path)
        with _cache_lock:
            _cache[path_key] = _Cached(loaded, key)
        memory.owner.register(handle, memory.module_size_bytes(model), _unloader(path_key), device,
                              group=MEMORY_GROUP)
        memory.owner.trim_group(MEMORY_GROUP, cache_size())
        log.info("loaded %s %s (%s) on %s", file.kind_label, file.name, file.family or "family unknown", device)
        return loaded


def loaded_models() -> list[LoadedControl]:
    """The control models in the cache, least recently used first."""
    with _cache_lock:
        by_handle = {f"{MEMORY_GROUP}:{path}": entry.loaded for path, entry in _cache.items()}
    return [by_handle[h.name] for h in memory.owner.handles(group=MEMORY_GROUP) if h.name in by_handle]


def unload_all() -> None:
    for handle in memory.owner.handles(group=MEMORY_GROUP):
        memory.owner.unload(handle.name)
