"""The UNet boundary: one typed input, the hooks that fill it, and the call (eager or a CUDA-graph replay).

`UNetInput` carries everything a UNet evaluation may take: latents, timestep, text context, SDXL's added
conditioning (and IP-Adapter image tokens under diffusers' own key `image_embeds`), the image conditioning of
inpainting/depth models, ControlNet residuals and T2I-Adapter features. Features such as ControlNet do not patch
the UNet: they are `UNetHook`s, called once per UNet evaluation with a `UNetHookContext`, and they fill fields of
the input. Every tensor present becomes a static input of the captured graph, so a graph is recorded once per
set of shapes and stays valid while the values change (weights, control strength, prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modules import attention_optimization


@dataclass
class UNetInput:
    x: torch.Tensor  # scaled latents (c_in * x), with image_cond already concatenated by unet_call
    t: torch.Tensor
    context: torch.Tensor
    added: dict[str, Any] | None = None  # SDXL text_embeds/time_ids; IP-Adapter "image_embeds"
    image_cond: torch.Tensor | None = None
    down_residuals: list[torch.Tensor] | None = None  # ControlNet, one per down-block output
    mid_residual: torch.Tensor | None = None
    adapter_features: list[torch.Tensor] | None = None  # T2I-Adapter (diffusers' down_intrablock residuals)


@dataclass
class UNetHookContext:
    """What a hook knows about this evaluation besides the input it may fill."""

    input: UNetInput
    step: int  # the sampler's step, 0-based
    total_steps: int
    uncond_rows: torch.Tensor  # bool per row of x: True where the row is a negative-prompt (uncond) row
    sigma: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Where this step is in the run, 0 at the first step to 1 after the last (the guidance window's axis)."""
        return self.step / max(1, self.total_steps)


UNetHook = Callable[[UNetHookContext], None]


def add_residual(current: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if current is None else current + new


def add_residual_list(current: list[torch.Tensor] | None, new: list[torch.Tensor]) -> list[torch.Tensor]:
    if current is None:
        return list(new)
    if len(current) != len(new):
        raise ValueError(f"residual lists of different lengths: {len(current)} and {len(new)}")
    return [a + b for a, b in zip(current, new, strict=True)]


def _forward_kwargs(inp: UNetInput, dtype: torch.dtype) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if inp.added:
        kwargs["added_cond_kwargs"] = {k: _cast(v, dtype) for k, v in inp.added.items()}
    if inp.down_residuals is not None:
        kwargs["down_block_additional_residuals"] = [r.to(dtype) for r in inp.down_residuals]
    if inp.mid_residual is not None:
        kwargs["mid_block_additional_residual"] = inp.mid_residual.to(dtype)
    if inp.adapter_features is not None:
        kwargs["down_intrablock_additional_residuals"] = [f.to(dtype) for f in inp.adapter_features]
    return kwargs


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def unet_forward(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 **kwargs: Any) -> torch.Tensor:
    # diffusers pops from the intrablock list it is given; a copy keeps the caller's (and a graph's) list whole
    if "down_intrablock_additional_residuals" in kwargs:
        kwargs["down_intrablock_additional_residuals"] = list(kwargs["down_intrablock_additional_residuals"])
    with attention_optimization.upcast_attention():  # "Upcast cross attention layer to float32"
        return unet(x, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]


def unet_call(unet: torch.nn.Module, inp: UNetInput, use_graphs: bool = False, compiled: bool = False) -> torch.Tensor:
    """One UNet evaluation in the network's dtype; returns float32 model output of x's shape.

    With `use_graphs` on a CUDA device the forward is a CUDA-graph replay (modules.engine.unet_graph); with
    `compiled` it is the torch.compile'd forward once that is ready for these inputs (modules.engine.unet_compile),
    the plain one until then."""
    dtype = unet.dtype
    x = inp.x
    if inp.image_cond is not None:
        x = torch.cat([x, inp.image_cond.to(x.dtype)], dim=1)
    x, context = x.to(dtype), inp.context.to(dtype)
    kwargs = _forward_kwargs(inp, dtype)
    forward = unet_forward
    if compiled:
        from modules.engine.unet_compile import forward_for

        forward = forward_for(unet, unet_forward, (x, inp.t, context), kwargs)
    if use_graphs and x.is_cuda:
        from modules.engine.unet_graph import graphed_call

        out = graphed_call(unet, forward, (x, inp.t, context), kwargs)
    else:
        out = forward(unet, x, inp.t, context, **kwargs)
    return out.float()  # a copy: a replayed graph's output buffer is reused
