"""Replay the UNet as a captured CUDA graph.

On a fast GPU a Stable Diffusion step is bound by the CPU launching a thousand small kernels, not by the GPU.
A CUDA graph records one UNet forward for given input shapes and replays all its kernels with one launch. Inputs
are copied into the graph's fixed buffers before each replay; the output buffer is reused, so callers copy it.

Graphs are kept per input shapes (a few at most) on the UNet module itself. They are dropped when the weights
move (another device, or parked in RAM), when convolutions change padding (tiling), or when capture fails, in
which case this UNet simply runs eagerly from then on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
MAX_GRAPHS = 2  # e.g. the cond+uncond batch and a separate pass for prompts of different lengths


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    added: dict[str, torch.Tensor] | None
    out: torch.Tensor


def _storage_version(unet: torch.nn.Module) -> int:
    """The model patcher's count of replaced weight storages (see modules.models.patcher). Patches write in place,
    so a replay sees patched values without re-capture; only a replaced storage makes recorded graphs stale."""
    patcher = getattr(unet, "_sd_patcher", None)
    return patcher.storage_version if patcher is not None else 0


class _GraphCache:
    def __init__(self, unet: torch.nn.Module):
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.storage_version = _storage_version(unet)
        self.weights_at = unet.conv_in.weight.data_ptr()
        first_conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
        self.padding_probe = first_conv
        self.padding_mode = first_conv.padding_mode
        self.broken = False

    def still_valid(self, unet: torch.nn.Module) -> bool:
        return (unet.conv_in.weight.data_ptr() == self.weights_at
                and self.storage_version == _storage_version(unet)
                and self.padding_probe.padding_mode == self.padding_mode)


def _forward(unet, x, t, context, added):
    return unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]


def _capture(unet, x, t, context, added) -> _Captured:
    static_x, static_t, static_ctx = x.clone(), t.clone(), context.clone()
    static_added = {k: v.clone() for k, v in added.items()} if added else None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # warm up cuDNN/cuBLAS choices and the allocator outside the capture
            _forward(unet, static_x, static_t, static_ctx, static_added)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = _forward(unet, static_x, static_t, static_ctx, static_added)
    return _Captured(graph, static_x, static_t, static_ctx, static_added, out)


def graphed_forward(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    added: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """The UNet output for these inputs, by graph replay. The result is overwritten by the next replay."""
    cache: _GraphCache | None = getattr(unet, "_sd_graph_cache", None)
    if cache is None or not cache.still_valid(unet):
        cache = _GraphCache(unet)
        unet._sd_graph_cache = cache
    if cache.broken:
        return _forward(unet, x, t, context, added)
    key = (tuple(x.shape), tuple(t.shape), t.dtype, tuple(context.shape), x.dtype,
           tuple((k, tuple(v.shape)) for k, v in sorted(added.items())) if added else None)
    captured = cache.graphs.get(key)
    if captured is None:
        try:
            captured = _capture(unet, x, t, context, added)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            log.warning("CUDA graph capture failed (%s); running the UNet without graphs", str(e).splitlines()[0])
            cache.broken = True
            cache.graphs.clear()
            torch.cuda.synchronize()
            return _forward(unet, x, t, context, added)
        cache.graphs[key] = captured
        while len(cache.graphs) > MAX_GRAPHS:
            cache.graphs.popitem(last=False)
    cache.graphs.move_to_end(key)
    captured.x.copy_(x)
    captured.t.copy_(t)
    captured.context.copy_(context)
    if added:
        for k, v in added.items():
            captured.added[k].copy_(v)
    captured.graph.replay()
    return captured.out
