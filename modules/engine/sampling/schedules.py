"""Noise schedules ("schedule types"): functions returning the sigmas a sampler steps through.

Every function has the signature `(n, sigma_min, sigma_max, device, inner_model=None, **options)` and
returns a descending float32 tensor of n + 1 sigmas ending in 0 (A1111's "ddim" may return a few more; see
there). `inner_model` is the model's `DiscreteSchedule`/`Denoiser`; schedules that need the model's own noise
levels fall back to the SD default schedule without one. Names, labels and options follow A1111's
`modules/sd_schedulers.py`, so infotext "Schedule type: Karras" round-trips.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .beta_dist import beta_ppf
from .common import append_zero
from .denoiser import DiscreteSchedule

ScheduleFn = Callable[..., torch.Tensor]
Device = torch.device | str
Model = DiscreteSchedule | None


@functools.cache
def default_schedule() -> DiscreteSchedule:
    """The SD 1.x/2.x/XL training schedule (scaled_linear 0.00085..0.012), for callers without a model."""
    return DiscreteSchedule()


def _model(inner_model: DiscreteSchedule | None) -> DiscreteSchedule:
    return inner_model if inner_model is not None else default_schedule()


def _finish(sigmas: list[float] | np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(sigmas, dtype=np.float32)).to(device)


def karras(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None, rho: float = 7.0
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def exponential(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """Evenly spaced in log-sigma."""
    sigmas = torch.linspace(np.log(sigma_max), np.log(sigma_min), n).exp()
    return append_zero(sigmas).to(device)


def polyexponential(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None, rho: float = 1.0
) -> torch.Tensor:
    """Log-sigma follows a polynomial ramp of degree rho (rho=1 is `exponential`)."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min, log_max = float(np.log(sigma_min)), float(np.log(sigma_max))
    sigmas = torch.exp(ramp * (log_max - log_min) + log_min)
    return append_zero(sigmas).to(device)


def uniform(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """Timesteps evenly spaced from the last training timestep to the first (the model's own schedule)."""
    return _model(inner_model).get_sigmas(n).to(device)


def sgm_uniform(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """Evenly spaced timesteps between sigma_max and sigma_min, the last one dropped (SGM/SDXL style)."""
    model = _model(inner_model)
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    sigmas = [float(model.t_to_sigma(t)) for t in torch.linspace(start, end, n + 1)[:-1]]
    return _finish([*sigmas, 0.0], device)


def normal(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """Evenly spaced timesteps between sigma_max and sigma_min, both included."""
    model = _model(inner_model)
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    sigmas = [float(model.t_to_sigma(t)) for t in torch.linspace(start, end, n)]
    return _finish([*sigmas, 0.0], device)


def simple(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """Every (len/n)-th training noise level, counted down from the largest."""
    table = _model(inner_model).sigmas
    stride = len(table) / n
    return _finish([*(float(table[-(1 + int(i * stride))]) for i in range(n)), 0.0], device)


def ddim_uniform(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """DDIM's timesteps 1, 1 + k, 1 + 2k, ... with k = len // n, largest first.

    As in A1111, this gives ceil(999 / k) steps, which is more than n when n does not divide 1000.
    """
    table = _model(inner_model).sigmas
    stride = max(len(table) // n, 1)
    sigmas = [float(table[t]) for t in range(1, len(table), stride)][::-1]
    return _finish([*sigmas, 0.0], device)


def kl_optimal(
    n: int, sigma_min: float, sigma_max: float, device: Device = "cpu", inner_model: Model = None
) -> torch.Tensor:
    """The KL-optimal schedule from the Align Your Steps paper: evenly spaced in arctan(sigma).

    A1111's version ends at sigma_min instead of 0; here the last step goes to 0 like every other schedule.
    """
    alpha_min, alpha_max = np.arctan(sigma_min), np.arctan(sigma_max)
    steps = np.arange(n) / n
    sigmas = np.tan(steps * alpha_min + (1.0 - steps) * alpha_max)
    return _finish([*sigmas, 0.0], device)


# Published 10-step sigmas of "Align Your Steps" (Sabour et al. 2024, NVIDIA's how-to page).
AYS_SIGMAS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SIGMAS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def loglinear_interp(sigmas: tuple[float, ...] | list[float], num_steps: int) -> np.ndarray:
    """Resample a decreasing list to num_steps values, interpolating linearly in log-sigma."""
    xs = np.linspace(0, 1, len(sigmas))
    ys = np.log(np.asarray(sigmas, dtype=np.float64)[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps(
    n: int,
    sigma_min: float,
    sigma_max: float,
    device: Device = "cpu",
    inner_model: Model = None,
    is_sdxl: bool | None = None,
):
    """AYS sigmas for SD1 or SDXL (chosen by `is_sdxl` or `inner_model.is_sdxl`), resampled to n steps.

    The published lists have 11 values; n == 11 uses them as they are.
    """
    if is_sdxl is None:
        is_sdxl = bool(getattr(inner_model, "is_sdxl", False))
    table = AYS_SIGMAS_SDXL if is_sdxl else AYS_SIGMAS_SD1
    sigmas = list(table) if n == len(table) else list(loglinear_interp(table, n))
    return _finish([*sigmas, 0.0], device)


def beta_schedule(
    n: int,
    sigma_min: float,
    sigma_max: float,
    device: Device = "cpu",
    inner_model: Model = None,
    alpha: float = 0.6,
    beta: float = 0.6,
):
    """From "Beta Sampling is All You Need" (Lee et al. 2024), as A1111 applies it: sigma_min + (sigma_max -
    sigma_min) * BetaInvCDF(1 - i/(n-1)), i.e. steps packed near both ends of the range."""
    quantiles = beta_ppf(1 - np.linspace(0, 1, n), alpha, beta)
    sigmas = sigma_min + quantiles * (sigma_max - sigma_min)
    return _finish([*sigmas, 0.0], device)


@dataclasses.dataclass
class Scheduler:
    """A1111's record (`sd_schedulers.Scheduler`): `function` None means "use the sampler's default"."""

    name: str
    label: str
    function: ScheduleFn | None

    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list[str] | None = None


schedulers: list[Scheduler] = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("uniform", "Uniform", uniform, need_inner_model=True),
    Scheduler("karras", "Karras", karras, default_rho=7.0),
    Scheduler("exponential", "Exponential", exponential),
    Scheduler("polyexponential", "Polyexponential", polyexponential, default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", sgm_uniform, need_inner_model=True, aliases=["SGMUniform"]),
    Scheduler("kl_optimal", "KL Optimal", kl_optimal),
    Scheduler("align_your_steps", "Align Your Steps", align_your_steps),
    Scheduler("simple", "Simple", simple, need_inner_model=True),
    Scheduler("normal", "Normal", normal, need_inner_model=True),
    Scheduler("ddim", "DDIM", ddim_uniform, need_inner_model=True),
    Scheduler("beta", "Beta", beta_schedule, need_inner_model=True),
]

schedulers_map: dict[str, Scheduler] = {}


def _rebuild_map() -> None:
    schedulers_map.clear()
    schedulers_map.update({s.name: s for s in schedulers})
    schedulers_map.update({s.label: s for s in schedulers})


def register_scheduler(scheduler: Scheduler) -> None:
    """Add (or replace, by name) a schedule type; it becomes findable by name and label at once.

    A1111's way works too: `schedulers.append(s)` (plus `schedulers_map[s.name] = s` or not): `find_scheduler`
    falls back to the list, and the UI, the API and infotext read the list."""
    for i, existing in enumerate(schedulers):
        if existing.name == scheduler.name:
            schedulers[i] = scheduler
            break
    else:
        schedulers.append(scheduler)
    _rebuild_map()


def find_scheduler(name: str | None) -> Scheduler | None:
    """By name, label or alias (case-insensitive as a last resort); None/"" is Automatic."""
    if not name:
        return schedulers[0]
    if name in schedulers_map:
        return schedulers_map[name]
    lowered = name.lower()
    for s in schedulers:
        if lowered in (s.name.lower(), s.label.lower(), *(a.lower() for a in s.aliases or [])):
            return s
    return None


def build_sigmas(
    scheduler: Scheduler,
    n: int,
    sigma_min: float,
    sigma_max: float,
    device: Device = "cpu",
    inner_model: Model = None,
    **options: Any,
) -> torch.Tensor:
    """Call a schedule function with only the options it takes (rho for Karras, alpha/beta for Beta ...)."""
    if scheduler.function is None:
        return _model(inner_model).get_sigmas(n).to(device)
    accepted, takes_any = _parameters(scheduler.function)
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    # A1111 hands the model to schedules marked need_inner_model; an extension's may take it only as **kwargs.
    if "inner_model" in accepted or (scheduler.need_inner_model and takes_any):
        kwargs["inner_model"] = inner_model
    return scheduler.function(n=n, sigma_min=sigma_min, sigma_max=sigma_max, device=device, **kwargs)


def _parameters(fn: ScheduleFn) -> tuple[set[str], bool]:
    """Parameter names of fn and whether it takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), False
    return {p.name for p in params}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


_rebuild_map()
