"""A1111's "Cross attention optimization" setting: which kernels every attention layer runs on.

diffusers' attention layers call torch's scaled dot product attention (SDPA), which picks a kernel among those
enabled process-wide: flash, memory-efficient, cuDNN, and the plain math one. The setting's choices, with A1111's
names (modules.attention_choices, which also resolves "Automatic" from the command line), map onto those switches
(xformers, where installed, replaces the UNet's and VAE's processors instead; see `modules.sd_models`).

A1111's "Upcast cross attention layer to float32" runs the UNet's attention in 32 bits on 16-bit models
(`upcast_attention`, entered by the UNet call in modules.engine.unet_call): SD2.x 768-v models overflow 16-bit
attention on kernels that do not accumulate in 32 bits ("None").

The switches decide what a CUDA graph records and what the compiler traces, so each change bumps `version()`,
which the graph and compiled-forward caches compare (modules.engine.unet_graph, unet_compile).
"""

from __future__ import annotations

import contextlib
from dataclasses import astuple, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from modules.attention_choices import NONE, SDP, SDP_NO_MEM, XFORMERS


@dataclass(frozen=True)
class SdpKernels:
    """Which SDPA kernels torch may pick from (torch.backends.cuda's switches; the CPU honours flash and math)."""

    flash: bool
    mem_efficient: bool
    cudnn: bool
    math: bool


ALL_KERNELS = SdpKernels(flash=True, mem_efficient=True, cudnn=True, math=True)
KERNELS: dict[str, SdpKernels] = {
    XFORMERS: ALL_KERNELS,  # for attention outside the UNet and VAE (ControlNet, depth models)
    SDP: ALL_KERNELS,
    SDP_NO_MEM: SdpKernels(flash=True, mem_efficient=False, cudnn=True, math=True),
    NONE: SdpKernels(flash=False, mem_efficient=False, cudnn=False, math=True),  # softmax(QK^T)V as written
}

_version = 0
_upcast = False


def current_kernels() -> SdpKernels:
    backends = torch.backends.cuda
    return SdpKernels(flash=backends.flash_sdp_enabled(), mem_efficient=backends.mem_efficient_sdp_enabled(),
                      cudnn=backends.cudnn_sdp_enabled(), math=backends.math_sdp_enabled())


def set_kernels(kernels: SdpKernels) -> None:
    """Switch torch's SDPA kernels; a change makes recorded graphs and compiled forwards stale."""
    global _version
    if kernels == current_kernels():
        return
    flash, mem_efficient, cudnn, math = astuple(kernels)
    torch.backends.cuda.enable_flash_sdp(flash)
    torch.backends.cuda.enable_mem_efficient_sdp(mem_efficient)
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    torch.backends.cuda.enable_math_sdp(math)
    _version += 1


def apply(choice: str) -> None:
    """Put a resolved choice (see `resolve`) into effect for SDPA."""
    set_kernels(KERNELS.get(choice, ALL_KERNELS))


def version() -> int:
    """Counts kernel switches in this process: a graph or compiled forward made under another count is stale."""
    return _version


def set_upcast(on: bool) -> None:
    """The setting "Upcast cross attention layer to float32"."""
    global _upcast, _version
    if on != _upcast:
        _upcast = on
        _version += 1


def upcast() -> bool:
    return _upcast


class _Float32Attention(TorchFunctionMode):
    """SDPA on 16-bit inputs runs in float32 and returns the caller's dtype; everything else runs as called."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or args[0].dtype not in (torch.float16, torch.bfloat16):
            return func(*args, **kwargs)
        dtype = args[0].dtype
        wide = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        out = func(*(wide(a) for a in args), **{k: wide(v) for k, v in kwargs.items()})
        return out.to(dtype)


def upcast_attention() -> contextlib.AbstractContextManager:
    """Around a UNet forward: its attention in float32 when the setting asks for it."""
    return _Float32Attention() if _upcast else contextlib.nullcontext()
