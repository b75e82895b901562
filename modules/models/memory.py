"""The memory owner: one place that knows every loaded network, its size and how to unload it.

A client registers a handle (name, size in bytes, device, an unload function) when it loads a network and
touches it on use. Before a job needs memory, `make_room` unloads the least recently used handles of that device
until enough is free; `run_with_oom_retry` frees every handle of the device after a CUDA out-of-memory error and
tries once more. `trim_group` keeps at most N handles of one kind (upscaler models, say) as an LRU.

Independent of checkpoints on purpose: the checkpoint manager becomes a client later, like the upscalers are now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")
FreeBytesFn = Callable[[torch.device], int | None]


@dataclass
class Handle:
    name: str
    size_bytes: int
    unload_fn: Callable[[], None]
    device: torch.device
    group: str = ""
    last_used: float = field(default_factory=time.monotonic)


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    # cuda and cuda:0 are the same card for accounting
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def system_free_bytes(device: torch.device) -> int | None:
    """Free memory where `device` keeps its tensors; None when it cannot be told."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().available)
    return None


def available_bytes(device: torch.device) -> int | None:
    """What this process may still allocate on a CUDA device: the card's free memory plus what PyTorch holds
    cached but unused, within `torch.cuda.set_per_process_memory_fraction`'s cap when one is set. None elsewhere."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    room = free + torch.cuda.memory_reserved(device) - allocated
    # unlike the calls above, this one refuses a device without an index ("cuda")
    index = device.index if device.index is not None else torch.cuda.current_device()
    fraction = torch.cuda.get_per_process_memory_fraction(index)
    if fraction < 1.0:
        room = min(room, int(fraction * total) - allocated)
    return int(room)


def module_size_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    # some kernels (cuDNN, cuBLAS) report running out of memory as a plain RuntimeError
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class MemoryOwner:
    """Handles by name, unloaded least recently used first. Thread-safe; unload functions run outside the lock
    so that they may call back (unregister, say)."""

    def __init__(self, free_bytes: FreeBytesFn = system_free_bytes, empty_cache: Callable[[], None] | None = None):
        self._free_bytes = free_bytes
        self._empty_cache = empty_cache or _empty_cuda_cache
        self._handles: dict[str, Handle] = {}
        self._lock = threading.RLock()

    # --- bookkeeping ---
    def register(self, handle_name: str, size_bytes: int, unload_fn: Callable[[], None],
                 device: torch.device | str | None = None, group: str = "") -> Handle:
        """Record a loaded network (a new registration under the same name replaces the old record)."""
        handle = Handle(handle_name, max(0, int(size_bytes)), unload_fn, _device(device), group)
        with self._lock:
            self._handles[handle_name] = handle
        return handle

    def unregister(self, handle_name: str) -> None:
        """Forget a handle without calling its unload function (its owner freed it already)."""
        with self._lock:
            self._handles.pop(handle_name, None)

    def touch(self, handle_name: str) -> None:
        with self._lock:
            handle = self._handles.get(handle_name)
            if handle is not None:
                handle.last_used = time.monotonic()

    def handles(self, device: torch.device | str | None = None, group: str | None = None) -> list[Handle]:
        """Handles, least recently used first, optionally only those of one device or group."""
        with self._lock:
            found = list(self._handles.values())
        if device is not None:
            found = [h for h in found if _same_device(h.device, _device(device))]
        if group is not None:
            found = [h for h in found if h.group == group]
        return sorted(found, key=lambda h: h.last_used)

    def __contains__(self, handle_name: object) -> bool:
        return handle_name in self._handles

    def used_bytes(self, device: torch.device | str | None = None) -> int:
        return sum(h.size_bytes for h in self.handles(device))

    # --- unloading ---
    def unload(self, handle_name: str) -> bool:
        with self._lock:
            handle = self._handles.pop(handle_name, None)
        if handle is None:
            return False
        handle.unload_fn()
        return True

    def _unload_all(self, handles: Iterable[Handle]) -> list[str]:
        names = []
        for handle in handles:
            if self.unload(handle.name):
                names.append(handle.name)
        return names

    def trim_group(self, group: str, keep: int) -> list[str]:
        """Unload the least recently used handles of `group` until at most `keep` remain."""
        members = self.handles(group=group)
        excess = max(0, len(members) - max(0, keep))
        return self._unload_all(members[:excess])

    def make_room(self, bytes_needed: int, device: torch.device | str | None = None,
                  keep: Iterable[str] = ()) -> list[str]:
        """Unload least recently used handles of `device` (never those in `keep`) until `bytes_needed` are free.

        Returns the names unloaded. Stops when nothing is left to unload; the job then tries anyway (and
        `run_with_oom_retry` gets a second chance)."""
        dev = _device(device)
        kept = set(keep)
        unloaded: list[str] = []
        for handle in self.handles(dev):
            free = self._free_bytes(dev)
            if free is None or free >= bytes_needed:
                break
            if handle.name in kept:
                continue
            if self.unload(handle.name):
                unloaded.append(handle.name)
                self._empty_cache()
        return unloaded

    def free_device(self, device: torch.device | str | None, keep: Iterable[str] = ()) -> list[str]:
        """Unload every handle of `device` except those in `keep`."""
        kept = set(keep)
        names = self._unload_all(h for h in self.handles(_device(device)) if h.name not in kept)
        self._empty_cache()
        return names

    def run_with_oom_retry(self, fn: Callable[[], T], device: torch.device | str | None = None,
                           keep: Iterable[str] = ()) -> T:
        """`fn()`; on an out-of-memory error, free the device (all but `keep`) and call it once more."""
        try:
            return fn()
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
        # outside the except block, so the failed attempt's traceback (and its tensors) can be collected
        self.free_device(device if device is not None else _default_cuda(), keep)
        return fn()


def _default_cuda() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


owner = MemoryOwner()
"""The process-wide memory owner every model cache registers with."""


def describe(handles: Iterable[Handle]) -> list[dict[str, Any]]:
    return [{"name": h.name, "size_bytes": h.size_bytes, "device": str(h.device), "group": h.group}
            for h in handles]
