"""Replay a network call (the UNet, a ControlNet) as a captured CUDA graph.

On a fast GPU a Stable Diffusion step is bound by the CPU launching a thousand small kernels, not by the GPU.
A CUDA graph records one forward for given input shapes and replays all its kernels with one launch. Every tensor
among the call's arguments (nested in lists and dicts too: ControlNet residuals, SDXL's added conditioning) is
copied into the graph's fixed buffer before each replay; the outputs are reused buffers, so callers copy them.

Graphs are kept per module and per input structure (which optional inputs are present, their shapes and dtypes,
and the non-tensor arguments), a few at most. They are dropped when the weights move (another device, or parked
in RAM), when the model patcher replaced a weight storage, when the forward's code changed
(`bump_structure_version`), when attention switches kernels (modules.attention_optimization), when convolutions
change padding (tiling), or when capture fails, in which case this module simply runs eagerly from then on.

A patch that comes and goes with each job (token merging) does not bump the version: it runs under a graph
*variant* (`graph_variant`), a name for the code it installs, and each variant keeps its own graphs. A job with the
same patch then replays the graphs the last one captured, and the unpatched graphs survive it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from modules import attention_optimization, device_warm_up, devices

log = logging.getLogger(__name__)
# e.g. the cond+uncond batch, a separate pass for prompts of different lengths, each with and without
# ControlNet residuals (outside a unit's guidance window)
MAX_GRAPHS = 4
# graph sets kept per module: the plain forward and one patched variant (token merging on and off)
MAX_VARIANTS = 2


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the static buffers, in flattening order of the tensor leaves
    out: Any


def _storage_version(module: torch.nn.Module) -> int:
    """The model patcher's count of replaced weight storages (see modules.models.patcher). Patches write in place,
    so a replay sees patched values without re-capture; only a replaced storage makes recorded graphs stale."""
    patcher = getattr(module, "_sd_patcher", None)
    return patcher.storage_version if patcher is not None else 0


def structure_version(module: torch.nn.Module) -> int:
    """Bumped by code that changes what a forward runs (e.g. attention processors swapped in for IP-Adapter):
    graphs recorded before replay the old code, so they are dropped."""
    return int(getattr(module, "_sd_structure_version", 0))


def bump_structure_version(module: torch.nn.Module) -> None:
    module._sd_structure_version = structure_version(module) + 1


def current_variant(module: torch.nn.Module) -> Hashable:
    return getattr(module, "_sd_graph_variant", None)


@contextlib.contextmanager
def graph_variant(module: torch.nn.Module, variant: Hashable) -> Iterator[None]:
    """Within the block `module` runs the code named `variant` (it must name everything the patch bakes into the
    kernels, e.g. token merging's ratio and arguments), and its calls replay that variant's graphs."""
    previous = current_variant(module)
    module._sd_graph_variant = variant
    try:
        yield
    finally:
        if previous is None:
            module.__dict__.pop("_sd_graph_variant", None)
        else:
            module._sd_graph_variant = previous


def drop_graphs(module: torch.nn.Module) -> None:
    """Forget every captured graph of `module` (all variants)."""
    module.__dict__.pop("_sd_graph_caches", None)
    module.__dict__.pop("_sd_graph_cache", None)


# weights that moved leave their graphs reading the old addresses, and the graphs' memory pools would hold device
# memory the move meant to free (--medvram moves the UNet out for the VAE decode): they go at once
devices.on_move(drop_graphs)


def _cache_for(module: torch.nn.Module) -> _GraphCache:
    caches: OrderedDict[Hashable, _GraphCache] = module.__dict__.setdefault("_sd_graph_caches", OrderedDict())
    variant = current_variant(module)
    cache = caches.get(variant)
    if cache is None or not cache.still_valid(module):
        cache = caches[variant] = _GraphCache(module)
    caches.move_to_end(variant)
    while len(caches) > MAX_VARIANTS:
        caches.popitem(last=False)
    module._sd_graph_cache = cache  # the set in use, for tools and tests that look at it
    return cache


def _first_parameter(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


class _GraphCache:
    def __init__(self, module: torch.nn.Module):
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.storage_version = _storage_version(module)
        self.structure_version = structure_version(module)
        self.weights_at = _first_parameter(module).data_ptr()
        self.placement_version = devices.placement_version(module)
        self.padding_probe = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self.padding_mode = getattr(self.padding_probe, "padding_mode", None)
        self.broken = False
        self.attention_version = attention_optimization.version()

    def still_valid(self, module: torch.nn.Module) -> bool:
        return (_first_parameter(module).data_ptr() == self.weights_at
                and self.placement_version == devices.placement_version(module)
                and self.storage_version == _storage_version(module)
                and self.structure_version == structure_version(module)
                and self.attention_version == attention_optimization.version()
                and getattr(self.padding_probe, "padding_mode", None) == self.padding_mode)


def _split(args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], list[Any], Any]:
    """Tensor leaves, the other leaves, and the structure: (tensors, constants, spec)."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    constants = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    return tensors, constants, spec


def _rebuild(tensors: list[torch.Tensor], constants: list[Any], spec: Any) -> tuple[tuple, dict]:
    it = iter(tensors)
    leaves = [next(it) if c is None else c for c in constants]
    return pytree.tree_unflatten(leaves, spec)


def _key(fn: Callable[..., Any], tensors: list[torch.Tensor], constants: list[Any], spec: Any) -> tuple:
    # the forward itself is part of the key: a compiled forward replaces the plain one for the same inputs
    return (id(fn), str(spec), tuple(repr(c) for c in constants),
            tuple((tuple(t.shape), t.dtype, t.device) for t in tensors))


def _drop_other_forwards(graphs: OrderedDict[tuple, _Captured], key: tuple) -> None:
    """Once a forward is captured for some inputs, graphs of another forward for the same inputs are dead weight."""
    for old in [k for k in graphs if k[1:] == key[1:] and k[0] != key[0]]:
        del graphs[old]


_WARM_UP_STREAMS: dict[int, torch.cuda.Stream] = {}


def _warm_up_stream() -> torch.cuda.Stream:
    """One side stream per device for every warm-up: cuBLAS keeps a workspace (32 MiB on Hopper) for each stream it
    has run on until the process ends, so a fresh stream from torch's pool per capture would add up to 32 of them."""
    device = torch.cuda.current_device()
    if device not in _WARM_UP_STREAMS:
        _WARM_UP_STREAMS[device] = torch.cuda.Stream()
    return _WARM_UP_STREAMS[device]


def _capture(module: torch.nn.Module, fn: Callable[..., Any], tensors: list[torch.Tensor], constants: list[Any],
             spec: Any, key: tuple) -> _Captured:
    device_warm_up.wait()
    static = [t.clone() for t in tensors]
    args, kwargs = _rebuild(static, constants, spec)
    # Warm up cuDNN/cuBLAS choices, lazily loaded kernels and the allocator outside the capture, the first time
    # only: a re-capture of the same call after the weights moved (--medvram, each job) runs kernels already
    # chosen and loaded, and the warm-up's activations would stand beside the capture's under a memory cap.
    warmed: set[tuple] = module.__dict__.setdefault("_sd_graph_warmed", set())
    # anything that changes which kernels run asks for a warm-up again
    warm_key = (key, current_variant(module), structure_version(module), _storage_version(module),
                attention_optimization.version())
    if warm_key not in warmed:
        side = _warm_up_stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                fn(module, *args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if len(warmed) > 64:  # many sizes over a long session: forget the old ones (a warm-up is cheap)
            warmed.clear()
        warmed.add(warm_key)
    graph = torch.cuda.CUDAGraph()
    pool = torch.cuda.graph_pool_handle()  # a private pool as by default, but one we can name if capture fails
    stream = torch.cuda.current_stream()
    try:
        # thread-local: another thread's CUDA work (a preview, an API call outside the queue) may allocate or
        # synchronise meanwhile, which the default global mode would count as breaking this capture
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), torch.no_grad():
            out = fn(module, *args, **kwargs)
    except BaseException:
        _end_broken_capture(stream, pool)
        raise
    return _Captured(graph, static, out)


def _end_broken_capture(stream: torch.cuda.Stream, pool: tuple[int, int]) -> None:
    """Undo what torch leaves behind when ending a broken capture raises (e.g. the forward synchronised).

    `torch.cuda.graph` then skips restoring the thread's stream, so every later job would run on the capture's side
    stream; the allocator may still count the capture as under way, which stops it from ever giving cached blocks
    back, with the capture's private pool kept; and the random generator stays in capture mode. All are put right;
    each step is a no-op where torch did it."""
    torch.cuda.set_stream(stream)
    device = torch.cuda.current_device()
    # The default generator also missed the end of its capture and stays in capture mode: every later random op
    # on this GPU (noise, a compile's benchmark inputs) would fail with "Offset increment outside graph capture".
    # A clone of its state has the same seed and offset and is not in capture mode.
    generator = torch.cuda.default_generators[device]
    generator.graphsafe_set_state(generator.clone_state())
    try:
        torch._C._cuda_endAllocateToPool(device, pool)
    except RuntimeError:  # torch ended the capture's allocations itself: the graph object frees its pool when dropped
        return
    try:
        torch._C._cuda_releasePool(device, pool)
    except RuntimeError as e:
        log.warning("could not release the memory of a failed CUDA graph capture: %s", str(e).splitlines()[0])


def graphed_call(module: torch.nn.Module, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """`fn(module, *args, **kwargs)` by graph replay. The result's tensors are overwritten by the next replay."""
    cache = _cache_for(module)
    if cache.broken:
        return fn(module, *args, **kwargs)
    tensors, constants, spec = _split(args, kwargs)
    key = _key(fn, tensors, constants, spec)
    captured = cache.graphs.get(key)
    if captured is None:
        failure = ""
        try:
            captured = _capture(module, fn, tensors, constants, spec, key)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            failure = str(e).splitlines()[0] if str(e) else type(e).__name__
        if captured is None:  # out of the except block: its traceback no longer holds the failed graph's buffers
            log.warning("CUDA graph capture of %s failed (%s); running it without graphs", type(module).__name__,
                        failure)
            cache.broken = True
            cache.graphs.clear()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the failed capture's pool, before the eager call needs the memory
            return fn(module, *args, **kwargs)
        _drop_other_forwards(cache.graphs, key)
        cache.graphs[key] = captured
        while len(cache.graphs) > MAX_GRAPHS:
            cache.graphs.popitem(last=False)
    cache.graphs.move_to_end(key)
    for buffer, value in zip(captured.inputs, tensors, strict=True):
        buffer.copy_(value)
    captured.graph.replay()
    return captured.out
