"""The sampler registry, shaped like A1111's `modules/sd_samplers.py` so its extensions work unchanged.

A sampler is a `SamplerData(name, constructor, aliases, options)`. Adding one is a single
`register_sampler(data)` call, or the A1111 way: `all_samplers.append(d); all_samplers_map[d.name] = d;
set_samplers()`. `samplers` and `samplers_for_img2img` are the very same list as `all_samplers` (as in A1111
after set_samplers()), and the maps are updated in place, so modules that imported these names keep seeing the
current registry.

What `constructor(model)` must return: an engine sampler, i.e. an object with `KSampler`'s methods
(`make_denoiser`, `get_sigmas`, `sigmas_for_img2img`, `create_noise_sampler`, `sampler_kwargs`, `sample`) and
`options`; `create_sampler` checks this. Extensions write it as in A1111:

    SamplerData("My sampler", lambda model: KDiffusionSampler(sample_my, model), ["my"], {"scheduler": "karras"})

where `sample_my(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)` is a k-diffusion
style function: it calls `model(x, sigma * s_in, **extra_args)` for the CFG-combined denoised latent, reports
each step with `callback({"x", "i", "sigma", "sigma_hat", "denoised"})` and returns the final latent. It gets
only the arguments it declares (`noise_sampler`, `eta`, `s_noise`, ... when its signature names them). A
constructor that returns such a function itself is accepted too: it is wrapped in `KDiffusionSampler`. The
sampler's `options` work as for the built-in ones (`scheduler` is its "Automatic" schedule type,
`discard_next_to_last_sigma`, `brownian_noise`, `uses_ensd`, `second_order`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import samplers_k as k
from .lcm import sample_lcm
from .sampler import DPMSolverSampler, KSampler, LCMSampler, SamplerData, TimestepSampler, UniPCSampler
from .samplers_dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from .samplers_restart import sample_restart
from .samplers_timestep import sample_ddim, sample_plms
from .schedules import find_scheduler, schedulers
from .unipc import sample_unipc

log = logging.getLogger(__name__)


# A1111's `sampler_extra_params`: the settings each k-diffusion function receives from the request.
sampler_extra_params: dict[str, list[str]] = {
    "sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_heun": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_2": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_dpm_fast": ["s_noise"],
    "sample_dpm_2_ancestral": ["s_noise"],
    "sample_dpmpp_2s_ancestral": ["s_noise"],
    "sample_dpmpp_sde": ["s_noise"],
    "sample_dpmpp_2m_sde": ["s_noise"],
    "sample_dpmpp_3m_sde": ["s_noise"],
}

# (label, function, aliases, options) in A1111's order; option values are A1111's.
samplers_k_diffusion: list[tuple[str, Callable[..., Any], list[str], dict[str, Any]]] = [
    ("DPM++ 2M", k.sample_dpmpp_2m, ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("DPM++ SDE", k.sample_dpmpp_sde, ["k_dpmpp_sde"], {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    ("DPM++ 2M SDE", k.sample_dpmpp_2m_sde, ["k_dpmpp_2m_sde"], {"scheduler": "exponential", "brownian_noise": True}),
    ("DPM++ 2M SDE Heun", k.sample_dpmpp_2m_sde, ["k_dpmpp_2m_sde_heun"], {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}),
    ("DPM++ 2S a", k.sample_dpmpp_2s_ancestral, ["k_dpmpp_2s_a"], {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    ("DPM++ 3M SDE", k.sample_dpmpp_3m_sde, ["k_dpmpp_3m_sde"], {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}),
    ("Euler a", k.sample_euler_ancestral, ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", k.sample_euler, ["k_euler"], {}),
    ("LMS", k.sample_lms, ["k_lms"], {}),
    ("Heun", k.sample_heun, ["k_heun"], {"second_order": True}),
    ("DPM2", k.sample_dpm_2, ["k_dpm_2"], {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    ("DPM2 a", k.sample_dpm_2_ancestral, ["k_dpm_2_a"], {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True}),
    ("DPM fast", sample_dpm_fast, ["k_dpm_fast"], {"uses_ensd": True}),
    ("DPM adaptive", sample_dpm_adaptive, ["k_dpm_ad"], {"uses_ensd": True}),
    ("Restart", sample_restart, ["restart"], {"scheduler": "karras", "second_order": True}),
]  # fmt: skip

# Options that A1111 turns into function arguments rather than schedule choices.
_FUNCTION_OPTIONS = ("solver_type",)


def _k_constructor(func: Callable[..., Any], options: Mapping[str, Any]) -> Callable[..., KSampler]:
    defaults = {key: options[key] for key in _FUNCTION_OPTIONS if key in options}
    extra = sampler_extra_params.get(func.__name__, [])
    if func in (sample_dpm_fast, sample_dpm_adaptive):
        # A1111 passes eta = eta_ancestral (1.0) to every function that takes it, these two included.
        defaults["eta"] = 1.0
        return functools.partial(DPMSolverSampler, func, default_options=defaults, extra_params=extra)
    return functools.partial(KSampler, func, default_options=defaults, extra_params=extra)


samplers_data_k_diffusion: list[SamplerData] = [
    SamplerData(label, _k_constructor(func, options), aliases, options)
    for label, func, aliases, options in samplers_k_diffusion
]

samplers_data_timesteps: list[SamplerData] = [
    SamplerData("DDIM", functools.partial(TimestepSampler, sample_ddim), ["ddim"], {}),
    SamplerData("PLMS", functools.partial(TimestepSampler, sample_plms), ["plms"], {}),
    SamplerData("UniPC", functools.partial(UniPCSampler, sample_unipc), ["unipc"], {}),
]

samplers_data_lcm: list[SamplerData] = [
    SamplerData("LCM", functools.partial(LCMSampler, sample_lcm), ["lcm"], {}),
]

# The methods the engine calls on what a constructor returns (see the module docstring).
SAMPLER_INTERFACE = ("make_denoiser", "get_sigmas", "sigmas_for_img2img", "create_noise_sampler", "sampler_kwargs",
                     "sample", "options")


def _k_function(funcname: str) -> Callable[..., Any]:
    """A k-diffusion function by its k-diffusion name ("sample_euler", ...), as A1111 looks them up."""
    functions = {f.__name__: f for _, f, _, _ in samplers_k_diffusion}
    functions.update({name: getattr(k, name) for name in k.__all__ if name.startswith("sample_")})
    if funcname not in functions:
        raise ValueError(f"no k-diffusion sampler function named {funcname!r}; pass the function itself")
    return functions[funcname]


class KDiffusionSampler(KSampler):
    """A1111's `KDiffusionSampler(funcname, sd_model, options=None)` over a k-diffusion style function (or the
    name of a built-in one). Unlike the built-in samplers' functions, an extension's function may not take every
    argument the engine offers (noise_sampler, disable ...): it gets only those its signature names."""

    def __init__(self, funcname: str | Callable[..., Any], sd_model: Any = None,
                 options: Mapping[str, Any] | None = None) -> None:
        func = funcname if callable(funcname) else _k_function(funcname)
        super().__init__(func, sd_model, extra_params=sampler_extra_params.get(getattr(func, "__name__", ""), []))
        self.own_options = dict(options or {})

    @property
    def options(self) -> dict[str, Any]:
        return {**self.own_options, **(self.config.options if self.config is not None else {})}

    def sample(self, denoiser: Any, x: Any, sigmas: Any, extra_args: dict[str, Any] | None = None,
               callback: Any = None, noise_sampler: Any = None, disable: bool | None = None, **options: Any) -> Any:
        offered = {"extra_args": extra_args or {}, "callback": callback, "disable": disable,
                   "noise_sampler": noise_sampler}
        offered.update({key: self.options[key] for key in _FUNCTION_OPTIONS if key in self.options})
        offered.update(self.default_options)
        offered.update(options)
        try:
            params = inspect.signature(self.func).parameters.values()
        except (TypeError, ValueError):  # no signature to read: offer everything
            params = ()
        names = {p.name for p in params}
        takes_any = not names or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        kwargs = {key: value for key, value in offered.items() if takes_any or key in names}
        return self.func(denoiser, x, sigmas.to(x.device), **kwargs)


all_samplers: list[SamplerData] = [*samplers_data_k_diffusion, *samplers_data_timesteps, *samplers_data_lcm]
all_samplers_map: dict[str, SamplerData] = {x.name: x for x in all_samplers}
samplers: list[SamplerData] = all_samplers
samplers_for_img2img: list[SamplerData] = all_samplers
samplers_map: dict[str, str] = {}  # lower-cased name or alias -> name
samplers_hidden: set[str] = set()


def set_samplers(hidden: Iterable[str] | None = None) -> None:
    """Rebuild the lookup maps after all_samplers changed; `hidden` is the "hide_samplers" setting
    (kept from the last call when None)."""
    if hidden is not None:
        samplers_hidden.clear()
        samplers_hidden.update(hidden)
    samplers_map.clear()
    for sampler in all_samplers:
        all_samplers_map.setdefault(sampler.name, sampler)  # an extension may have only appended
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases or []:
            samplers_map[alias.lower()] = sampler.name


def register_sampler(data: SamplerData) -> None:
    """Add a sampler (or replace the one with the same name); findable by name and aliases at once."""
    for i, existing in enumerate(all_samplers):
        if existing.name == data.name:
            all_samplers[i] = data
            break
    else:
        all_samplers.append(data)
    all_samplers_map[data.name] = data
    set_samplers()


def _lookup(name: str) -> SamplerData | None:
    """Exact name first (A1111), then any name or alias, case-insensitively."""
    if name in all_samplers_map:
        return all_samplers_map[name]
    canonical = samplers_map.get(name.lower())
    return all_samplers_map.get(canonical) if canonical is not None else None


def find_sampler_config(name: str | None) -> SamplerData | None:
    """The SamplerData for a name or alias; None -> the first sampler; unknown -> None."""
    if name is None:
        return all_samplers[0]
    return _lookup(name)


def create_sampler(name: str | None, model: Any = None) -> Any:
    """Construct a sampler object by name (A1111's create_sampler)."""
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"bad sampler name: {name}")
    sampler = config.constructor(model)
    if callable(sampler) and not hasattr(sampler, "sample"):  # a bare k-diffusion function
        sampler = KDiffusionSampler(sampler, model)
    missing = [attr for attr in SAMPLER_INTERFACE if not hasattr(sampler, attr)]
    if missing:
        raise TypeError(f"sampler {config.name!r}: its constructor returned a {type(sampler).__name__}, which lacks "
                        f"{', '.join(missing)}; return a KDiffusionSampler (modules.sd_samplers_kdiffusion)")
    sampler.config = config
    return sampler


def visible_samplers() -> list[SamplerData]:
    return [x for x in samplers if x.name not in samplers_hidden]


def visible_sampler_names() -> list[str]:
    return [x.name for x in visible_samplers()]


def get_sampler_and_scheduler(
    sampler_name: str | None, scheduler_name: str | None, *, convert_automatic: bool = True
) -> tuple[str, str]:
    """(sampler name, schedule type label) from possibly old combined names ("DPM++ 2M Karras").

    As A1111: a schedule-type suffix of the sampler name wins over `scheduler_name`; unknown samplers fall
    back to the first one; and with `convert_automatic` a schedule type equal to the sampler's default is
    reported as "Automatic" (so "DPM++ 2M Karras" -> ("DPM++ 2M", "Automatic"), Karras being its default).
    """
    default_sampler = samplers[0]
    found = find_scheduler(scheduler_name) or schedulers[0]  # also finds schedulers an extension only appended
    name = sampler_name or default_sampler.name
    for scheduler in schedulers:
        for option in [scheduler.label, *(scheduler.aliases or [])]:
            if name.endswith(" " + option):
                found = scheduler
                name = name[: -len(option) - 1]
                break
    sampler = _lookup(name) or default_sampler
    if convert_automatic and sampler.options.get("scheduler") == found.name:
        found = schedulers[0]
    return sampler.name, found.label


def get_sampler_from_infotext(d: Mapping[str, Any]) -> str:
    return get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))[0]


def get_scheduler_from_infotext(d: Mapping[str, Any]) -> str:
    return get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))[1]


def get_hr_sampler_and_scheduler(d: Mapping[str, Any]) -> tuple[str, str]:
    """Hires-fix sampler/schedule from infotext; "Use same ..." when they equal the first pass's."""
    hr_sampler = d.get("Hires sampler", "Use same sampler")
    sampler = d.get("Sampler") if hr_sampler == "Use same sampler" else hr_sampler
    hr_scheduler = d.get("Hires schedule type", "Use same scheduler")
    scheduler = d.get("Schedule type") if hr_scheduler == "Use same scheduler" else hr_scheduler
    sampler, scheduler = get_sampler_and_scheduler(sampler, scheduler)
    sampler = sampler if sampler != d.get("Sampler") else "Use same sampler"
    scheduler = scheduler if scheduler != d.get("Schedule type") else "Use same scheduler"
    return sampler, scheduler


def get_hr_sampler_from_infotext(d: Mapping[str, Any]) -> str:
    return get_hr_sampler_and_scheduler(d)[0]


def get_hr_scheduler_from_infotext(d: Mapping[str, Any]) -> str:
    return get_hr_sampler_and_scheduler(d)[1]


def fix_p_invalid_sampler_and_scheduler(p: Any) -> None:
    """Normalise p.sampler_name / p.scheduler in place (combined or unknown names), logging any change."""
    before = (p.sampler_name, p.scheduler)
    p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)
    if (p.sampler_name, p.scheduler) != before:
        log.warning(
            'Sampler Scheduler autocorrection: "%s" -> "%s", "%s" -> "%s"',
            before[0],
            p.sampler_name,
            before[1],
            p.scheduler,
        )


set_samplers()
