"""Denoise hooks: named points inside the CFG denoiser where extensions act, in registration order.

The CFG denoiser calls `run(point, params)` at each point; a hook may replace fields of `params` (for example
`params.x`), and the denoiser continues with what it finds there. A1111's `on_cfg_denoiser`, `on_cfg_denoised`
and `on_cfg_after_cfg` callbacks are registrations here (see `modules.script_callbacks`), as ControlNet-style
features will be: nothing patches the UNet.

A hook that raises is reported by name and left out of that step; the generation goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

# Before the UNet runs on a step, after it ran (before the guidance is combined), after CFG combined the result.
POINTS = ("cfg_denoiser", "cfg_denoised", "cfg_after_cfg")


@dataclass
class CFGDenoiserParams:
    """A1111's name and fields: what the UNet is about to see on this step (replace x to change it)."""

    x: torch.Tensor
    image_cond: torch.Tensor | None
    sigma: torch.Tensor
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class CFGDenoisedParams:
    """After the UNet: x holds its outputs for every cond and uncond row of the batch."""

    x: torch.Tensor
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any = None


@dataclass
class AfterCFGCallbackParams:
    """After guidance: x is the denoised estimate the sampler will receive."""

    x: torch.Tensor
    sampling_step: int
    total_sampling_steps: int


@dataclass
class Hook:
    name: str
    fn: Callable[[Any], None]
    owner: str | None = None  # the extension or script file that registered it, for error reports and unloading


_hooks: dict[str, list[Hook]] = {point: [] for point in POINTS}


def register(point: str, fn: Callable[[Any], None], name: str | None = None, owner: str | None = None) -> Hook:
    if point not in _hooks:
        raise ValueError(f"unknown denoise hook point {point!r}; known: {', '.join(POINTS)}")
    hook = Hook(name or getattr(fn, "__qualname__", repr(fn)), fn, owner)
    _hooks[point].append(hook)
    return hook


def remove(predicate: Callable[[Hook], bool]) -> None:
    for point in POINTS:
        _hooks[point] = [h for h in _hooks[point] if not predicate(h)]


def registered(point: str) -> list[Hook]:
    return list(_hooks[point])


def run(point: str, params: Any) -> Any:
    """Call every hook of `point` with `params` (which they may change); returns params."""
    for hook in _hooks[point]:
        try:
            hook.fn(params)
        except Exception:  # an extension's bug must not end the generation
            where = f" ({hook.owner})" if hook.owner else ""
            log.exception("Error in denoise hook %s of %s%s; it is skipped for this step", point, hook.name, where)
    return params
