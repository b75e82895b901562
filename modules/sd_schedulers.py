"""A1111 compatibility: `modules.sd_schedulers`, the schedule-type registry (`schedulers`, `schedulers_map`).

The same objects as the engine's registry; A1111's function names are kept as aliases.
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
