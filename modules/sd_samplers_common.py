"""A1111 compatibility: the parts of `modules.sd_samplers_common` that concern sampler choice and steps.

`SamplerData(name, constructor, aliases, options)` is what extensions build to register a sampler (see
`modules.sd_samplers_kdiffusion` for an example).
"""

from __future__ import annotations

from typing import Any

from modules import shared
from modules.engine.sampling import sampler as _sampler
from modules.engine.sampling.common import InterruptedException
from modules.engine.sampling.registry import SamplerData, find_sampler_config


def _img2img_fix_steps() -> bool:
    return bool(getattr(shared.opts, "img2img_fix_steps", False))


def setup_img2img_steps(p: Any, steps: int | None = None) -> tuple[int, int]:
    """A1111's signature: (steps, t_enc) for request `p` (uses p.steps, p.denoising_strength and the
    "img2img_fix_steps" setting; an explicit `steps` also fixes the step count, as there)."""
    fix = _img2img_fix_steps() or steps is not None
    requested = steps or p.steps
    if fix and p.denoising_strength <= 0:
        return 0, requested - 1  # A1111 returns this degenerate pair too
    return _sampler.setup_img2img_steps(requested, p.denoising_strength, fix)


def is_sampler_using_eta_noise_seed_delta(p: Any) -> bool:
    """Whether the "ENSD" setting affects this request (ancestral-type samplers with a non-zero eta)."""
    config = find_sampler_config(p.sampler_name)
    eta = getattr(p, "eta", None)
    sampler = getattr(p, "sampler", None)
    if eta is None and sampler is not None:
        eta = getattr(sampler, "eta", None)
    if eta is None and config is not None:
        eta = 0 if config.options.get("default_eta_is_0", False) else 1.0
    if eta == 0 or config is None:
        return False
    return bool(config.options.get("uses_ensd", False))


__all__ = ["InterruptedException", "SamplerData", "is_sampler_using_eta_noise_seed_delta", "setup_img2img_steps"]
