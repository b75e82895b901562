"""A1111 compatibility: `modules.sd_schedulers`, the schedule-type registry (`schedulers`, `schedulers_map`).

The same objects as the engine's registry; A1111's function names are kept as aliases. Extensions add a
schedule type as in A1111, and it shows in the UI's "Schedule type" list, /sdapi/v1/schedulers and infotext:

    s = sd_schedulers.Scheduler("my", "My schedule", my_sigmas)  # my_sigmas(n, sigma_min, sigma_max, device)
    sd_schedulers.schedulers.append(s)
    sd_schedulers.schedulers_map[s.name] = sd_schedulers.schedulers_map[s.label] = s

The function returns n + 1 descending sigmas ending in 0; with `need_inner_model=True` it also gets
`inner_model` (the model's noise schedule: `.sigmas`, `.sigma_to_t`, `.t_to_sigma`, `.sigma_min/max`).
"""

from modules.engine.sampling.common import to_d
from modules.engine.sampling.schedules import (
    Scheduler,
    align_your_steps,
    beta_schedule,
    ddim_uniform,
    exponential,
    karras,
    kl_optimal,
    normal,
    polyexponential,
    register_scheduler,
    schedulers,
    schedulers_map,
    sgm_uniform,
    simple,
    uniform,
)

# A1111's names for the same functions.
get_align_your_steps_sigmas = align_your_steps
simple_scheduler = simple
normal_scheduler = normal
ddim_scheduler = ddim_uniform
beta_scheduler = beta_schedule
get_sigmas_karras = karras
get_sigmas_exponential = exponential
get_sigmas_polyexponential = polyexponential

__all__ = [
    "Scheduler",
    "beta_scheduler",
    "ddim_scheduler",
    "get_align_your_steps_sigmas",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "kl_optimal",
    "normal_scheduler",
    "register_scheduler",
    "schedulers",
    "schedulers_map",
    "sgm_uniform",
    "simple_scheduler",
    "to_d",
    "uniform",
]
