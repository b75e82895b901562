"""The object a registry constructor returns: one sampling function plus A1111's rules for its sigmas.

The engine's use, per generation:
    sampler = create_sampler("DPM++ 2M")                       # registry.create_sampler
    denoiser = sampler.make_denoiser(unet_fn, alphas_cumprod, prediction_type)
    sigmas = sampler.get_sigmas(steps, "Karras", denoiser)     # or sigmas_for_img2img(...)
    noise = sampler.create_noise_sampler(x, sigmas, seeds=..., generators=...)
    x = sampler.sample(cfg_denoiser, x * sigmas[0], sigmas, extra_args, callback, noise, **sampler_kwargs)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import schedules
from .common import Callback, DenoiserFn, NoiseSampler
from .denoiser import Denoiser, DiscreteSchedule, ModelFn
from .lcm import LCMDenoiser
from .noise import brownian_tree_noise_sampler, default_noise_sampler, generator_noise_sampler
from .samplers_timestep import a1111_timesteps, timestep_grid_sigmas
from .unipc import unipc_sigmas

Tensor = torch.Tensor
# what a registry entry is (modules.engine.sampling.registry holds the list): A1111's namedtuple
SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])
SamplerFn = Callable[..., Tensor]


@dataclasses.dataclass
class ScheduleSettings:
    """A1111's "Sampler parameters" settings that shape the sigmas (same names as its `opts` keys).

    0 for sigma_min / sigma_max / rho means "the model's / the schedule's own value".
    """

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_dist_alpha: float = 0.6
    beta_dist_beta: float = 0.6
    always_discard_next_to_last_sigma: bool = False
    use_old_karras_scheduler_sigmas: bool = False
    uni_pc_skip_type: str = "time_uniform"
    ddim_discretize: str = "uniform"  # img2img DDIM timesteps: "uniform" or "quad" (DDIM_DISCRETIZE)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ScheduleSettings:
        """Pick the known keys out of a settings mapping (e.g. `shared.opts.data`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})


DDIM_DISCRETIZE = ("uniform", "quad")

# A1111's request fields that win over the setting of the same name unless None (p.s_churn, else opts.s_churn).
REQUEST_OVERRIDES = ("s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond", "ddim_discretize")

# The k-diffusion functions' own defaults for A1111's extra params, and the infotext keys of other values.
SIGMA_PARAM_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
SIGMA_PARAM_INFOTEXT = {
    "s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise",
}


def settings_for_request(settings: Mapping[str, Any], request: Any) -> dict[str, Any]:
    """The settings a sampler reads, with the request's own REQUEST_OVERRIDES where it sets them."""
    merged = dict(settings)
    for name in REQUEST_OVERRIDES:
        value = getattr(request, name, None)
        if value is not None and value != "":
            merged[name] = value
    return merged


def ngms_kwargs(settings: Mapping[str, Any], infotext: dict[str, Any] | None) -> dict[str, Any]:
    """A1111's "Negative Guidance minimum sigma" (setting/field s_min_uncond) for the CFG denoiser, which
    receives it through extra_args; recorded as NGMS. Nothing when it is 0 (off)."""
    value = float(settings.get("s_min_uncond", 0.0) or 0.0)
    if value <= 0:
        return {}
    if infotext is not None:
        infotext["NGMS"] = value
    return {"s_min_uncond": value}


def quad_timesteps(steps: int) -> list[int]:
    """Pre-1.6 A1111's (CompVis) "quad" DDIM timesteps, ascending: denser where the noise is low."""
    return [int(t) + 1 for t in np.linspace(0, np.sqrt(1000 * 0.8), steps) ** 2]


def quad_grid_sigmas(steps: int, schedule: DiscreteSchedule) -> Tensor:
    """Sigmas for the quad timesteps, as `timestep_grid_sigmas` builds them for the uniform ones."""
    timesteps = quad_timesteps(steps)[::-1]
    starts = timesteps[:-1] or [len(schedule.sigmas) - 1]
    sigmas = schedule.t_to_sigma(torch.tensor(starts, dtype=torch.float32))
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def setup_img2img_steps(steps: int, denoising_strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """A1111's (steps, t_enc): the schedule length and how many of its last steps img2img runs, minus 1.

    With `fix_steps` (setting "img2img_fix_steps") the schedule is stretched so exactly `steps` steps run.
    """
    if fix_steps:
        if denoising_strength <= 0:
            raise ValueError("denoising_strength must be > 0 when img2img steps are fixed")
        return int(steps / min(denoising_strength, 0.999)), steps - 1
    return steps, int(min(denoising_strength, 0.999) * steps)


def schedule_of(denoiser: Any) -> DiscreteSchedule:
    """The model's noise schedule: `denoiser` itself or, through `.inner_model` links (a CFG wrapper around
    a Denoiser, say), the first DiscreteSchedule; the SD default when `denoiser` is None."""
    if denoiser is None:
        return schedules.default_schedule()
    model = denoiser
    while not isinstance(model, DiscreteSchedule):
        model = getattr(model, "inner_model", None)
        if model is None:
            raise TypeError(f"{type(denoiser).__name__} is not a DiscreteSchedule and wraps none")
    return model


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Parameter names of fn and whether it takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    return {p.name for p in params}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class KSampler:
    """A k-diffusion-style sampler: sigmas from the chosen schedule type (or the sampler's default)."""

    eta_option_field = "eta_ancestral"
    eta_infotext_field = "Eta"
    eta_default = 1.0

    def __init__(
        self,
        func: SamplerFn,
        model: Any = None,
        default_options: Mapping[str, Any] | None = None,
        extra_params: Sequence[str] = (),
    ) -> None:
        self.func = func
        self.funcname = getattr(func, "__name__", type(func).__name__)
        self.model = model
        self.config: SamplerData | None = None  # set by create_sampler, as in A1111
        self.default_options = dict(default_options or {})
        self.extra_params = tuple(extra_params)  # A1111's per-function settings (s_churn, s_noise ...)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.config.options) if self.config is not None else {}

    def make_denoiser(
        self, model_fn: ModelFn, alphas_cumprod: Tensor | None = None, prediction_type: str = "epsilon", **kwargs: Any
    ) -> Denoiser:
        """The k-diffusion wrapper this sampler expects around the raw UNet function."""
        return Denoiser(model_fn, alphas_cumprod, prediction_type, **kwargs)

    def _discard_penultimate(self, settings: ScheduleSettings, infotext: dict[str, Any] | None) -> bool:
        if self.options.get("discard_next_to_last_sigma", False):
            return True
        if settings.always_discard_next_to_last_sigma:
            if infotext is not None:
                infotext["Discard penultimate sigma"] = True
            return True
        return False

    def get_sigmas(
        self,
        steps: int,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
    ) -> Tensor:
        """steps + 1 sigmas (CPU, float32) the way A1111's KDiffusionSampler.get_sigmas picks them.

        "Automatic" means the sampler's default schedule type, else the model's uniform one. Second-order
        samplers still get `steps` steps (A1111 does not halve them). `infotext` receives the entries A1111
        adds to the generation parameters ("Schedule type", "Schedule rho", ...).
        """
        settings = settings or ScheduleSettings()
        model = schedule_of(denoiser)
        discard = self._discard_penultimate(settings, infotext)
        n = steps + 1 if discard else steps

        scheduler = schedules.find_scheduler(scheduler_name or "Automatic")
        if scheduler is not None and scheduler.function is None:  # Automatic: the sampler's default type
            default = self.options.get("scheduler")
            scheduler = schedules.find_scheduler(default) if default else None
        if scheduler is None or scheduler.function is None:  # no default, or a name we do not know
            sigmas = model.get_sigmas(n)
        else:
            sigmas = self._scheduled(scheduler, n, model, settings, infotext)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

    def _scheduled(
        self,
        scheduler: schedules.Scheduler,
        n: int,
        model: DiscreteSchedule,
        settings: ScheduleSettings,
        infotext: dict[str, Any] | None,
    ) -> Tensor:
        notes: dict[str, Any] = {"Schedule type": scheduler.label} if scheduler.label != "Automatic" else {}
        m_min, m_max = model.sigma_min, model.sigma_max
        sigma_min, sigma_max = (0.1, 10.0) if settings.use_old_karras_scheduler_sigmas else (m_min, m_max)
        if settings.sigma_min and settings.sigma_min != m_min:
            sigma_min = notes["Schedule min sigma"] = settings.sigma_min
        if settings.sigma_max and settings.sigma_max != m_max:
            sigma_max = notes["Schedule max sigma"] = settings.sigma_max
        options: dict[str, Any] = {}
        if scheduler.default_rho != -1 and settings.rho:
            options["rho"] = notes["Schedule rho"] = settings.rho
        if scheduler.name == "beta":
            options["alpha"] = notes["Beta schedule alpha"] = settings.beta_dist_alpha
            options["beta"] = notes["Beta schedule beta"] = settings.beta_dist_beta
        if infotext is not None:
            infotext.update(notes)
        return schedules.build_sigmas(scheduler, n, sigma_min, sigma_max, "cpu", model, **options)

    def img2img_tail(self, sigmas: Tensor, steps: int, t_enc: int) -> Tensor:
        """The part of a full schedule img2img runs: A1111's sigmas[steps - t_enc - 1:]."""
        return sigmas[max(steps - t_enc - 1, 0) :]

    def sigmas_for_img2img(
        self,
        steps: int,
        denoising_strength: float,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
        fix_steps: bool = False,
    ) -> Tensor:
        """The sigmas img2img steps through: t_enc + 1 steps, the first sigma being the init-image noise level.

        For SDE samplers, build the Brownian noise from the *full* schedule (`get_sigmas`), as A1111 does.
        """
        full_steps, t_enc = setup_img2img_steps(steps, denoising_strength, fix_steps)
        sigmas = self.get_sigmas(full_steps, scheduler_name, denoiser, settings, infotext)
        return self.img2img_tail(sigmas, full_steps, t_enc)

    def create_noise_sampler(
        self,
        x: Tensor,
        sigmas: Tensor,
        seeds: Sequence[int] | None = None,
        generators: Sequence[torch.Generator] | None = None,
        cpu: bool = False,
    ) -> NoiseSampler:
        """Brownian-tree noise (one tree per seed) for samplers marked brownian_noise, else Gaussian noise
        from the per-image generators (or fresh ones seeded with `seeds`)."""
        if self.options.get("brownian_noise", False):
            positive = sigmas[sigmas > 0]
            seed: int | list[int] = list(seeds) if seeds is not None else 0  # 0: one tree for the whole batch
            return brownian_tree_noise_sampler(x, positive.min(), sigmas.max(), seed=seed, cpu=cpu)
        if generators is not None:
            return generator_noise_sampler(x, generators)
        if seeds is not None:
            return generator_noise_sampler(x, [torch.Generator(device=x.device).manual_seed(int(s)) for s in seeds])
        return default_noise_sampler(x)

    def sampler_kwargs(
        self, settings: Mapping[str, Any], eta: float | None = None, infotext: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Function options from A1111 settings: eta (request's, else the eta_* setting) and the
        per-function extra params; records a non-default eta in `infotext` like A1111."""
        params, _ = _parameters(self.func)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            value = eta if eta is not None else settings.get(self.eta_option_field, self.eta_default)
            kwargs["eta"] = value
            if infotext is not None and value != self.eta_default:
                infotext[self.eta_infotext_field] = value
        kwargs.update(self._sigma_params(settings, params, infotext))
        kwargs.update(ngms_kwargs(settings, infotext))
        return kwargs

    def _sigma_params(
        self, settings: Mapping[str, Any], params: set[str], infotext: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A1111's extra params (s_churn, s_tmin, s_tmax, s_noise) this function takes; values other than the
        function's defaults are recorded in the infotext ("Sigma churn" ...) as A1111 records them."""
        kwargs: dict[str, Any] = {}
        for name in self.extra_params:
            if name not in settings or name not in params:
                continue
            value = float(settings[name])
            if name == "s_tmax" and value == 0:
                value = float("inf")  # A1111: 0 means "no upper bound"
            kwargs[name] = value
            if infotext is not None and value != SIGMA_PARAM_DEFAULTS.get(name):
                infotext[SIGMA_PARAM_INFOTEXT[name]] = value
        return kwargs

    def sample(
        self,
        denoiser: DenoiserFn,
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict[str, Any] | None = None,
        callback: Callback | None = None,
        noise_sampler: NoiseSampler | None = None,
        disable: bool | None = None,
        **options: Any,
    ) -> Tensor:
        """Run the function; `x` must already be at noise level sigmas[0]. Options the function does not
        take are dropped, so callers may pass a common superset (eta, s_noise ...)."""
        if "s_min_uncond" in options:  # for the CFG denoiser, as A1111 passes it, not for the function
            extra_args = {**(extra_args or {}), "s_min_uncond": options.pop("s_min_uncond")}
        params, takes_any = _parameters(self.func)
        kwargs = dict(self.default_options)
        kwargs.update({k: v for k, v in options.items() if takes_any or k in params})
        return self.func(
            denoiser,
            x,
            sigmas.to(x.device),
            extra_args=extra_args,
            callback=callback,
            disable=disable,
            noise_sampler=noise_sampler,
            **kwargs,
        )


class DPMSolverSampler(KSampler):
    """DPM fast / DPM adaptive take only a sigma range (and a step count). As in A1111, txt2img uses the
    model's full range whatever the schedule type; img2img uses the range of the scheduled tail."""

    def get_sigmas(
        self,
        steps: int,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
    ) -> Tensor:
        model = schedule_of(denoiser)
        return model.get_sigmas(steps).cpu()

    def sigmas_for_img2img(
        self,
        steps: int,
        denoising_strength: float,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
        fix_steps: bool = False,
    ) -> Tensor:
        full_steps, t_enc = setup_img2img_steps(steps, denoising_strength, fix_steps)
        sigmas = KSampler.get_sigmas(self, full_steps, scheduler_name, denoiser, settings, infotext)
        return self.img2img_tail(sigmas, full_steps, t_enc)


class TimestepSampler(KSampler):
    """A1111's DDIM/PLMS: sigmas from its fixed timestep grid; the schedule type is ignored (as in A1111)."""

    eta_option_field = "eta_ddim"
    eta_infotext_field = "Eta DDIM"
    eta_default = 0.0

    def _grid(self, n: int, model: DiscreteSchedule, settings: ScheduleSettings) -> Tensor:
        return timestep_grid_sigmas(n, model)

    def get_sigmas(
        self,
        steps: int,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
    ) -> Tensor:
        settings = settings or ScheduleSettings()
        model = schedule_of(denoiser)
        n = steps + 1 if self._discard_penultimate(settings, infotext) else steps
        return self._grid(n, model, settings).cpu()

    def img2img_tail(self, sigmas: Tensor, steps: int, t_enc: int) -> Tensor:
        # The grid's length is not steps + 1, so count the t_enc + 1 steps from the end.
        return sigmas[max(len(sigmas) - t_enc - 2, 0) :]

    def sigmas_for_img2img(
        self,
        steps: int,
        denoising_strength: float,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
        fix_steps: bool = False,
    ) -> Tensor:
        """As KSampler's; DDIM on the "quad" grid when the setting ddim_discretize asks for it (A1111 before
        1.6 applied it to img2img DDIM only)."""
        settings = settings or ScheduleSettings()
        if settings.ddim_discretize != "quad" or self.funcname != "sample_ddim":
            return super().sigmas_for_img2img(steps, denoising_strength, scheduler_name, denoiser, settings,
                                              infotext, fix_steps)
        full_steps, t_enc = setup_img2img_steps(steps, denoising_strength, fix_steps)
        n = full_steps + 1 if self._discard_penultimate(settings, infotext) else full_steps
        return self.img2img_tail(quad_grid_sigmas(n, schedule_of(denoiser)).cpu(), full_steps, t_enc)


class UniPCSampler(TimestepSampler):
    """A1111's UniPC: its own time grid (setting uni_pc_skip_type) and the uni_pc_* settings."""

    def _grid(self, n: int, model: DiscreteSchedule, settings: ScheduleSettings) -> Tensor:
        return unipc_sigmas(len(a1111_timesteps(n)), model, settings.uni_pc_skip_type)

    def sampler_kwargs(
        self, settings: Mapping[str, Any], eta: float | None = None, infotext: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        names = {"uni_pc_order": "order", "uni_pc_variant": "variant", "uni_pc_lower_order_final": "lower_order_final"}
        return {arg: settings[key] for key, arg in names.items() if key in settings} | ngms_kwargs(settings, infotext)


class LCMSampler(KSampler):
    """LCM: needs the LCM denoiser (50-step grid, boundary condition); "Automatic" is that grid."""

    def make_denoiser(
        self, model_fn: ModelFn, alphas_cumprod: Tensor | None = None, prediction_type: str = "epsilon", **kwargs: Any
    ) -> Denoiser:
        kwargs.pop("quantize", None)  # always quantized to the LCM grid
        return LCMDenoiser(model_fn, alphas_cumprod, prediction_type, **kwargs)

    def get_sigmas(
        self,
        steps: int,
        scheduler_name: str | None = "Automatic",
        denoiser: Any = None,  # a Denoiser, or a wrapper reaching one via .inner_model
        settings: ScheduleSettings | None = None,
        infotext: dict[str, Any] | None = None,
    ) -> Tensor:
        model = schedule_of(denoiser)
        if not isinstance(model, LCMDenoiser):
            is_sdxl = bool(getattr(model, "is_sdxl", False))
            model = LCMDenoiser(lambda x, t, **_: x, model.alphas_cumprod, is_sdxl=is_sdxl)
        denoiser = model
        return super().get_sigmas(steps, scheduler_name, denoiser, settings, infotext)
