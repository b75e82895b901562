"""Loading and caching the networks of the model-based ControlNet preprocessors.

A network is built from its library class (controlnet_aux, transformers) and filled from a weight file found by
`preprocessors.weights_path` under the same relative name sd-webui-controlnet uses in `annotator/downloads`. The
file is read only through the restricted loader (`read_state_dict`: safetensors, or a pickle that may hold
nothing but tensors); its keys and shapes must match the network exactly, or the file is refused by name.

Loaded networks are cached per file (reloaded when the file changes) as handles of the memory owner in the
"preprocessor" group, so a job that needs the memory can unload them, and run on `modules.devices.device`.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from modules.controlnet.preprocessor_registry import weights_path
from modules.models import memory
from modules.models.checkpoint_files import ModelFileError, read_state_dict

MEMORY_GROUP = "preprocessor"
# openpose_full holds three networks at once; a fourth leaves room for switching without reloading everything
MAX_LOADED = 4

StateDict = dict[str, torch.Tensor]


@dataclass
class _Loaded:
    network: torch.nn.Module
    device: torch.device
    file_key: tuple[str, int, int]  # real path, size, mtime: a changed file is loaded afresh


_cache: dict[str, _Loaded] = {}
_lock = threading.RLock()


def _handle_name(real_path: str) -> str:
    return f"{MEMORY_GROUP}:{real_path}"


def _file_key(path: str) -> tuple[str, int, int]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


def _unloader(real_path: str) -> Callable[[], None]:
    def unload() -> None:
        with _lock:
            _cache.pop(real_path, None)
    return unload


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys without a leading `prefix` (DataParallel's "module.")."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def fill(path: str, network: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    """Load `state` into `network` strictly; missing, unexpected or misshapen keys refuse the file by name."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(path, f"not the {what} weights ({len(missing)} keys missing, {len(unexpected)} "
                                   f"unexpected: {detail})")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelFileError(path, f"not the {what} weights ({key} has shape {tuple(state[key].shape)}, "
                                       f"expected {tuple(tensor.shape)})")
        if not state[key].is_floating_point() and tensor.is_floating_point():
            raise ModelFileError(path, f"not the {what} weights ({key} holds {state[key].dtype})")
    network.load_state_dict(dict(state), strict=True)
    return network.float().eval().requires_grad_(False)


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """controlnet_aux imports all its annotators at once (with deprecation warnings from timm) and some network
    constructors print; none of it is news to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def load_network(preprocessor: str, relative: tuple[str, ...],
                 build: Callable[[str, StateDict], torch.nn.Module]) -> torch.nn.Module:
    """The network of the weight file `relative` (as in the extension's annotator/downloads), on the device.

    `build(path, state)` constructs the network and fills it (see `fill`). MissingWeights names the preprocessor
    and the path expected; a refused or corrupt file raises ModelFileError naming the file."""
    from modules import devices

    path = weights_path(preprocessor, *relative)
    if not os.path.isfile(path):
        raise ModelFileError(path, "is not a file")
    key = _file_key(path)
    device = devices.device
    name = _handle_name(key[0])
    with _lock:
        loaded = _cache.get(key[0])
        if loaded is not None and loaded.file_key == key and loaded.device == device:
            memory.owner.touch(name)
            return loaded.network
    memory.owner.unload(name)  # a changed file, or another device
    state = read_state_dict(path)
    with quiet_library():
        network = build(path, state)
    del state
    size = memory.module_size_bytes(network)
    memory.owner.make_room(size, device)
    network = memory.owner.run_with_oom_retry(lambda: network.to(device), device)
    with _lock:
        _cache[key[0]] = _Loaded(network, device, key)
    memory.owner.register(name, size, _unloader(key[0]), device, group=MEMORY_GROUP)
    memory.owner.trim_group(MEMORY_GROUP, MAX_LOADED)
    return network


def network_device(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


def run(network: torch.nn.Module, fn: Callable[[], object]):
    """`fn()` under inference mode, retried once after freeing the device on out-of-memory (this network kept)."""
    device = network_device(network)
    keep = [_handle_name(real) for real, loaded in list(_cache.items()) if loaded.network is network]

    def call():
        with torch.inference_mode():
            return fn()

    return memory.owner.run_with_oom_retry(call, device, keep=keep)


def unload_all() -> None:
    for handle in memory.owner.handles(group=MEMORY_GROUP):
        memory.owner.unload(handle.name)
