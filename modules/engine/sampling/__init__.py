"""Samplers and noise schedules (k-diffusion style), with A1111's names and registry.

Modules, each with one job:
    common       helpers and types shared by sampler functions (to_d, ancestral steps, callback reports)
    denoiser     raw eps/v UNet function -> k-diffusion denoiser; the model's sigma <-> timestep maps
    noise        seeded noise samplers (per-image generators, Brownian tree)
    schedules    schedule types (Karras, Exponential, ...) and their registry
    beta_dist    Beta-distribution inverse CDF for the "Beta" schedule (no scipy needed)
    samplers_k   Euler, Euler a, Heun, DPM2, DPM2 a, LMS, DPM++ 2S a / 2M / SDE / 2M SDE / 3M SDE
    samplers_dpm_solver   DPM fast, DPM adaptive
    samplers_restart      Restart
    samplers_timestep     DDIM, PLMS (A1111's timestep samplers, in sigma space)
    unipc        UniPC (bh1/bh2)
    lcm          LCM denoiser and sampler
    sampler      the sampler object a registry constructor returns (sigmas, img2img tail, noise, sample)
    registry     SamplerData, all_samplers, samplers_map, get_sampler_and_scheduler, register_sampler ...
"""

from .common import InterruptedException
from .denoiser import (
    Denoiser,
    DiscreteSchedule,
    alphas_cumprod_from_config,
    make_alphas_cumprod,
    rescale_zero_terminal_snr,
)
from .lcm import LCMDenoiser
from .noise import BrownianTreeNoiseSampler, brownian_tree_noise_sampler, default_noise_sampler, generator_noise_sampler
from .registry import (
    SamplerData,
    all_samplers,
    all_samplers_map,
    create_sampler,
    find_sampler_config,
    get_sampler_and_scheduler,
    register_sampler,
    samplers,
    samplers_for_img2img,
    samplers_map,
    set_samplers,
    visible_sampler_names,
)
from .sampler import KSampler, LCMSampler, ScheduleSettings, TimestepSampler, UniPCSampler, setup_img2img_steps
from .schedules import Scheduler, register_scheduler, schedulers, schedulers_map

__all__ = [
    "BrownianTreeNoiseSampler",
    "Denoiser",
    "DiscreteSchedule",
    "InterruptedException",
    "KSampler",
    "LCMDenoiser",
    "LCMSampler",
    "SamplerData",
    "ScheduleSettings",
    "Scheduler",
    "TimestepSampler",
    "UniPCSampler",
    "all_samplers",
    "all_samplers_map",
    "alphas_cumprod_from_config",
    "brownian_tree_noise_sampler",
    "create_sampler",
    "default_noise_sampler",
    "find_sampler_config",
    "generator_noise_sampler",
    "get_sampler_and_scheduler",
    "make_alphas_cumprod",
    "register_sampler",
    "register_scheduler",
    "rescale_zero_terminal_snr",
    "samplers",
    "samplers_for_img2img",
    "samplers_map",
    "schedulers",
    "schedulers_map",
    "set_samplers",
    "setup_img2img_steps",
    "visible_sampler_names",
]
