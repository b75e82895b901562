"""Samplers, schedules and the A1111-shaped registry, checked against analytic denoisers (no model, CPU).

Two closed-form "models":
- a single data point x0: the ideal denoiser returns x0 for any input, so every sampler must end exactly at x0;
- Gaussian data N(MU, S^2) per element: denoised = MU + S^2 / (S^2 + sigma^2) * (x - MU), and the
  probability-flow ODE has the exact solution x(sigma) - MU = (x(sigma_max) - MU) * sqrt((S^2 + sigma^2) /
  (S^2 + sigma_max^2)), which measures accuracy; SDE samplers must reproduce the data's mean and spread.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

import modules.sd_samplers as sd_samplers
import modules.sd_samplers_common as sd_samplers_common
import modules.sd_schedulers as sd_schedulers
from modules.engine.sampling import registry, schedules
from modules.engine.sampling.beta_dist import beta_ppf
from modules.engine.sampling.common import InterruptedException
from modules.engine.sampling.denoiser import (
    Denoiser,
    DiscreteSchedule,
    make_alphas_cumprod,
    rescale_zero_terminal_snr,
)
from modules.engine.sampling.lcm import LCMDenoiser
from modules.engine.sampling.noise import BrownianTreeNoiseSampler, brownian_tree_noise_sampler
from modules.engine.sampling.sampler import KSampler, ScheduleSettings, setup_img2img_steps
from modules.engine.sampling.samplers_dpm_solver import fast_orders
from modules.engine.sampling.samplers_k import sample_euler

MU, S = 0.3, 0.5
SHAPE = (2, 4, 8, 8)
ALL_NAMES = [d.name for d in registry.all_samplers]
SCHEDULE_LABELS = [s.label for s in schedules.schedulers]
STOPS_AT_SIGMA_MIN = {"DPM fast", "DPM adaptive"}  # k-diffusion's DPM-Solver ends at sigma_min, not 0
DETERMINISTIC = ["Euler", "Heun", "LMS", "DPM2", "DPM++ 2M", "DDIM", "PLMS", "UniPC"]
STOCHASTIC = ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"]


def point_denoiser(x0: torch.Tensor):
    def model(x, sigma, **kwargs):
        return x0.expand_as(x).to(x.dtype)

    return model


def gaussian_denoiser(x, sigma, **kwargs):
    sigma = sigma.view(-1, *[1] * (x.ndim - 1))
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def ode_solution(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    return MU + (x_start - MU) * math.sqrt((S**2 + sigma_end**2) / (S**2 + sigma_start**2))


def noise(shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def run(name: str, steps: int, model, scheduler: str = "Automatic", seeds=(1, 2), shape=SHAPE, **options):
    sampler = registry.create_sampler(name)
    sigmas = sampler.get_sigmas(steps, scheduler)
    x = noise(shape, seed=99) * sigmas[0]
    noise_sampler = sampler.create_noise_sampler(x, sigmas, seeds=list(seeds))
    return sampler.sample(model, x, sigmas, noise_sampler=noise_sampler, **options), sigmas


@pytest.fixture
def restore_registry():
    """Tests that register samplers put the registry back as it was."""
    saved_list, saved_map = list(registry.all_samplers), dict(registry.all_samplers_map)
    yield
    registry.all_samplers[:] = saved_list
    registry.all_samplers_map.clear()
    registry.all_samplers_map.update(saved_map)
    registry.set_samplers()


# --- every sampler with every schedule type ---


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_sampler_with_every_schedule_runs_and_reaches_the_data_point(name):
    x0 = noise(seed=7)
    for label in SCHEDULE_LABELS:
        for steps in (4, 9):
            out, sigmas = run(name, steps, point_denoiser(x0), label)
            assert out.shape == SHAPE and out.dtype == torch.float32
            assert torch.isfinite(out).all(), (name, label, steps)
            tolerance = 5 * float(sigmas[sigmas > 0].min()) if name in STOPS_AT_SIGMA_MIN else 1e-4
            assert (out - x0).abs().max() < tolerance, (name, label, steps)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_follow_the_ode(name):
    out, sigmas = run(name, 20, gaussian_denoiser)
    x_start = noise(seed=99) * sigmas[0]
    exact = ode_solution(x_start, float(sigmas[0]), 0.0)
    euler, _ = run("Euler", 20, gaussian_denoiser)
    error, euler_error = (out - exact).abs().max(), (euler - exact).abs().max()
    assert error < 0.35
    if name not in ("Euler", "DDIM"):  # first-order methods; the rest must clearly beat Euler
        assert error < 0.75 * euler_error


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sde_samplers_reproduce_the_data_distribution(name):
    steps = 60 if name == "Euler a" else 20  # Euler a is biased towards low variance at few steps
    out, _ = run(name, steps, gaussian_denoiser, seeds=(3, 4), shape=(2, 4, 64, 64))
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() / S - 1) < 0.1


def test_dpm_adaptive_accuracy_and_info():
    from modules.engine.sampling.samplers_dpm_solver import sample_dpm_adaptive

    sigmas = DiscreteSchedule().get_sigmas(10)
    x = noise(seed=3) * sigmas[0]
    out, info = sample_dpm_adaptive(gaussian_denoiser, x, sigmas, return_info=True)
    exact = ode_solution(x, float(sigmas[0]), float(sigmas[-2]))
    assert (out - exact).abs().max() < 0.05
    assert info["n_accept"] > 0 and info["steps"] == info["n_accept"] + info["n_reject"]


# --- callbacks and interruption ---


@pytest.mark.parametrize("name", ALL_NAMES)
def test_callback_once_per_step_with_increasing_index(name):
    sampler = registry.create_sampler(name)
    sigmas = sampler.get_sigmas(8)
    seen: list[dict] = []
    x = noise() * sigmas[0]
    sampler.sample(point_denoiser(noise(seed=1)), x, sigmas, callback=seen.append)
    indices = [d["i"] for d in seen]
    assert indices == list(range(len(seen)))
    assert all({"x", "i", "sigma", "sigma_hat", "denoised"} <= d.keys() for d in seen)
    if name == "DPM fast":
        assert len(seen) == len(fast_orders(len(sigmas) - 1))
    elif name != "DPM adaptive":
        assert len(seen) == len(sigmas) - 1


@pytest.mark.parametrize("name", ALL_NAMES)
def test_exception_in_callback_stops_sampling(name):
    sampler = registry.create_sampler(name)
    sigmas = sampler.get_sigmas(10)
    calls = 0

    def model(x, sigma, **kwargs):
        nonlocal calls
        calls += 1
        return torch.zeros_like(x)

    def callback(d):
        if d["i"] == 2:
            raise InterruptedException

    with pytest.raises(InterruptedException):
        sampler.sample(model, noise() * sigmas[0], sigmas, callback=callback)
    assert calls <= 3 * 3 + 1  # at most three steps of the costliest sampler (DPM fast: 3 calls each)


def test_extra_args_reach_the_model():
    received = []

    def model(x, sigma, cond=None, cond_scale=None):
        received.append((cond, cond_scale))
        return torch.zeros_like(x)

    sigmas = schedules.karras(3, 0.1, 10.0)
    sample_euler(model, noise() * 10, sigmas, extra_args={"cond": "c", "cond_scale": 7.0})
    assert received == [("c", 7.0)] * 3


# --- randomness: only the supplied noise ---


@pytest.mark.parametrize("name", STOCHASTIC + ["DPM fast", "DPM adaptive", "Restart", "LCM"])
def test_same_seed_gives_identical_output_and_global_rng_is_not_used(name):
    steps = 24 if name == "Restart" else 8  # Restart only adds restarts from 20 steps
    torch.manual_seed(1)
    first, _ = run(name, steps, gaussian_denoiser, seeds=(5, 6))
    torch.manual_seed(2)  # a different global RNG state must not matter
    second, _ = run(name, steps, gaussian_denoiser, seeds=(5, 6))
    other, _ = run(name, steps, gaussian_denoiser, seeds=(7, 8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_an_image_does_not_depend_on_its_batch_mates(name):
    batch, _ = run(name, 8, gaussian_denoiser, seeds=(5, 6), shape=(2, 4, 8, 8))
    sampler = registry.create_sampler(name)
    sigmas = sampler.get_sigmas(8)
    x = noise((2, 4, 8, 8), seed=99)[:1] * sigmas[0]
    alone = sampler.sample(gaussian_denoiser, x, sigmas, noise_sampler=sampler.create_noise_sampler(x, sigmas, [5]))
    torch.testing.assert_close(batch[:1], alone)


def test_brownian_noise_is_unit_variance_and_consistent_over_nested_intervals():
    x = torch.zeros(1, 4, 32, 32)
    ns = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    a, b = ns(torch.tensor(10.0), torch.tensor(1.0)), ns(torch.tensor(1.0), torch.tensor(0.1))
    whole = ns(torch.tensor(10.0), torch.tensor(0.1))
    assert abs(a.std().item() - 1) < 0.05
    # W is additive: the normalised increments recombine into the whole interval's increment.
    torch.testing.assert_close(whole * 9.9**0.5, a * 9.0**0.5 + b * 0.9**0.5, atol=1e-4, rtol=1e-4)


def test_brownian_noise_falls_back_to_seeded_gaussian_without_torchsde(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsde", None)  # makes `import torchsde` raise ImportError
    x = torch.zeros(2, 4, 8, 8)
    one = brownian_tree_noise_sampler(x, 0.1, 10.0, seed=[1, 2])(torch.tensor(5.0), torch.tensor(4.0))
    two = brownian_tree_noise_sampler(x, 0.1, 10.0, seed=[1, 2])(torch.tensor(5.0), torch.tensor(4.0))
    assert torch.equal(one, two) and one.shape == x.shape


# --- schedules ---


@pytest.mark.parametrize("label", SCHEDULE_LABELS[1:])
@pytest.mark.parametrize("n", [4, 7, 10, 25])
def test_schedules_are_decreasing_end_in_zero_and_stay_in_range(label, n):
    model = DiscreteSchedule()
    scheduler = schedules.schedulers_map[label]
    sigmas = schedules.build_sigmas(scheduler, n, model.sigma_min, model.sigma_max, "cpu", model)
    expected = len(range(1, 1000, 1000 // n)) + 1 if label == "DDIM" else n + 1
    assert sigmas.dtype == torch.float32 and len(sigmas) == expected
    assert sigmas[-1] == 0 and (sigmas[:-1] > 0).all()
    assert (sigmas[1:] < sigmas[:-1]).all()
    slack = 1e-2 if label == "Align Your Steps" else 1e-6  # AYS: its published 14.615 ... 0.029
    assert sigmas[0] <= model.sigma_max * (1 + slack) and sigmas[-2] >= model.sigma_min * (1 - slack)


def test_karras_endpoints_and_rho_spacing():
    sigmas = schedules.karras(10, 0.0292, 14.6146, rho=7.0)
    torch.testing.assert_close(sigmas[[0, -2]], torch.tensor([14.6146, 0.0292]))
    steps = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(steps[1:] - steps[:-1], (steps[1] - steps[0]).expand(9))


def test_exponential_is_log_spaced_and_polyexponential_rho1_matches_it():
    sigmas = schedules.exponential(8, 0.03, 14.0)
    ratios = sigmas[1:-1] / sigmas[:-2]
    torch.testing.assert_close(ratios, ratios[0].expand_as(ratios))
    torch.testing.assert_close(schedules.polyexponential(8, 0.03, 14.0), sigmas)


def test_uniform_simple_and_sgm_uniform_use_the_model_noise_levels():
    model = DiscreteSchedule()
    torch.testing.assert_close(schedules.uniform(5, 0, 0, inner_model=model), model.get_sigmas(5))
    simple = schedules.simple(4, 0, 0, inner_model=model)
    torch.testing.assert_close(simple[:-1], model.sigmas[[999, 749, 499, 249]])
    sgm = schedules.sgm_uniform(4, model.sigma_min, model.sigma_max, inner_model=model)
    torch.testing.assert_close(sgm[:-1], model.t_to_sigma(torch.tensor([999.0, 749.25, 499.5, 249.75])))
    ddim = schedules.ddim_uniform(10, 0, 0, inner_model=model)
    torch.testing.assert_close(ddim[:-1], model.sigmas[list(range(901, 0, -100))])


def test_align_your_steps_uses_the_published_lists():
    sd1 = schedules.align_your_steps(11, 0, 0)
    torch.testing.assert_close(sd1[:-1], torch.tensor(schedules.AYS_SIGMAS_SD1))
    sdxl = schedules.align_your_steps(11, 0, 0, inner_model=Denoiser(lambda x, t: x, is_sdxl=True))
    torch.testing.assert_close(sdxl[:-1], torch.tensor(schedules.AYS_SIGMAS_SDXL))
    resampled = schedules.align_your_steps(21, 0, 0)  # interpolating at the midpoints in log-sigma
    torch.testing.assert_close(
        resampled[1:-1:2] ** 2, torch.tensor(schedules.AYS_SIGMAS_SD1[:-1]) * torch.tensor(schedules.AYS_SIGMAS_SD1[1:])
    )


def test_beta_schedule_endpoints_and_inverse_cdf():
    sigmas = schedules.beta_schedule(10, 0.03, 14.0)
    torch.testing.assert_close(sigmas[[0, -2, -1]], torch.tensor([14.0, 0.03, 0.0]))
    q = np.linspace(0, 1, 11)
    stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(beta_ppf(q, 0.6, 0.6), stats.beta.ppf(q, 0.6, 0.6), atol=1e-12)
    np.testing.assert_allclose(beta_ppf(q, 2.0, 5.0), stats.beta.ppf(q, 2.0, 5.0), atol=1e-12)


def test_kl_optimal_is_uniform_in_arctan():
    sigmas = schedules.kl_optimal(6, 0.03, 14.0)
    angles = torch.atan(sigmas[:-1].double())
    torch.testing.assert_close(angles[1:] - angles[:-1], (angles[1] - angles[0]).expand(5), rtol=1e-5, atol=1e-6)
    assert abs(angles[0].item() - math.atan(14.0)) < 1e-6


def test_scheduler_registry_names_labels_and_defaults():
    assert [s.name for s in sd_schedulers.schedulers] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform",
        "kl_optimal", "align_your_steps", "simple", "normal", "ddim", "beta",
    ]  # fmt: skip
    assert sd_schedulers.schedulers_map["Karras"] is sd_schedulers.schedulers_map["karras"]
    assert sd_schedulers.schedulers_map["karras"].default_rho == 7.0
    assert sd_schedulers.schedulers_map["polyexponential"].default_rho == 1.0
    assert sd_schedulers.schedulers_map["sgm_uniform"].aliases == ["SGMUniform"]
    assert schedules.find_scheduler("sgmuniform").name == "sgm_uniform"


def test_register_scheduler():
    custom = schedules.Scheduler("linear_test", "Linear Test", lambda n, sigma_min, sigma_max, device: torch.cat(
        [torch.linspace(sigma_max, sigma_min, n), torch.zeros(1)]))  # fmt: skip
    try:
        schedules.register_scheduler(custom)
        sigmas = registry.create_sampler("Euler").get_sigmas(5, "Linear Test")
        assert len(sigmas) == 6 and sigmas[-1] == 0
    finally:
        schedules.schedulers.remove(custom)
        schedules._rebuild_map()


# --- the sampler object: A1111's steps logic ---


def test_automatic_uses_the_sampler_default_schedule_and_reports_it():
    model = DiscreteSchedule()
    infotext: dict = {}
    sigmas = registry.create_sampler("DPM++ 2M").get_sigmas(10, "Automatic", model, infotext=infotext)
    torch.testing.assert_close(sigmas, schedules.karras(10, model.sigma_min, model.sigma_max))
    assert infotext == {"Schedule type": "Karras"}
    euler = registry.create_sampler("Euler").get_sigmas(10, "Automatic", model)
    torch.testing.assert_close(euler, model.get_sigmas(10))
    unknown = registry.create_sampler("DPM++ 2M").get_sigmas(10, "no such schedule", model)
    torch.testing.assert_close(unknown, model.get_sigmas(10))


def test_get_sigmas_finds_the_schedule_through_a_wrapper():
    class CFGWrapper:
        def __init__(self, inner):
            self.inner_model = inner

    model = DiscreteSchedule(rescale_zero_terminal_snr(make_alphas_cumprod()))
    sigmas = registry.create_sampler("Euler").get_sigmas(5, "Automatic", CFGWrapper(model))
    torch.testing.assert_close(sigmas, model.get_sigmas(5))
    with pytest.raises(TypeError):
        registry.create_sampler("Euler").get_sigmas(5, "Automatic", object())


def test_second_order_samplers_keep_steps_and_dpm2_discards_the_penultimate_sigma():
    model = DiscreteSchedule()
    assert len(registry.create_sampler("Heun").get_sigmas(10)) == 11
    sigmas = registry.create_sampler("DPM2").get_sigmas(10, "Automatic", model)
    full = schedules.karras(11, model.sigma_min, model.sigma_max)
    torch.testing.assert_close(sigmas, torch.cat([full[:-2], full[-1:]]))
    infotext: dict = {}
    settings = ScheduleSettings(always_discard_next_to_last_sigma=True)
    assert len(registry.create_sampler("Euler").get_sigmas(10, "Karras", model, settings, infotext)) == 11
    assert infotext["Discard penultimate sigma"] is True


def test_schedule_settings_override_rho_and_sigma_range():
    model = DiscreteSchedule()
    infotext: dict = {}
    settings = ScheduleSettings(rho=3.0, sigma_max=10.0)
    sigmas = registry.create_sampler("Euler").get_sigmas(6, "Karras", model, settings, infotext)
    torch.testing.assert_close(sigmas, schedules.karras(6, model.sigma_min, 10.0, rho=3.0))
    assert infotext == {"Schedule type": "Karras", "Schedule max sigma": 10.0, "Schedule rho": 3.0}
    assert ScheduleSettings.from_options({"rho": 2.0, "unrelated": 1}).rho == 2.0


@pytest.mark.parametrize(
    ("steps", "strength", "fix", "expected"), [(20, 0.75, False, (20, 15)), (20, 0.5, True, (40, 19))]
)
def test_img2img_tail(steps, strength, fix, expected):
    assert setup_img2img_steps(steps, strength, fix) == expected
    sampler = registry.create_sampler("Euler")
    tail = sampler.sigmas_for_img2img(steps, strength, fix_steps=fix)
    full = sampler.get_sigmas(expected[0])
    assert len(tail) == expected[1] + 2
    torch.testing.assert_close(tail, full[-len(tail) :])


def test_timestep_samplers_use_a1111_grids_and_ignore_the_schedule_type():
    model = DiscreteSchedule()
    ddim = registry.create_sampler("DDIM")
    sigmas = ddim.get_sigmas(20, "Karras", model)
    assert len(sigmas) == 20  # A1111's DDIM does 19 steps for 20: timesteps 951 ... 51, then (here) 0
    torch.testing.assert_close(sigmas[:-1], model.sigmas[list(range(951, 1, -50))])
    assert len(ddim.get_sigmas(30)) == 31
    assert len(ddim.sigmas_for_img2img(20, 0.5)) == 10 + 2
    unipc = registry.create_sampler("UniPC").get_sigmas(20, "Automatic", model)
    assert len(unipc) == 21 and abs(unipc[0].item() - model.sigma_max) < 1e-3
    logsnr = registry.create_sampler("UniPC").get_sigmas(10, settings=ScheduleSettings(uni_pc_skip_type="logSNR"))
    torch.testing.assert_close(logsnr[:-1], torch.linspace(math.log(model.sigma_max), math.log(logsnr[-2]), 10).exp())


def test_dpm_fast_and_adaptive_use_the_model_range_in_txt2img():
    model = DiscreteSchedule()
    for name in ("DPM fast", "DPM adaptive"):
        sampler = registry.create_sampler(name)
        torch.testing.assert_close(sampler.get_sigmas(8, "SGM Uniform", model), model.get_sigmas(8))
        assert sampler.default_options["eta"] == 1.0  # A1111 passes eta_ancestral


def test_sampler_kwargs_follow_a1111_settings():
    settings = {"eta_ancestral": 0.7, "eta_ddim": 0.2, "s_churn": 0.5, "s_noise": 1.0, "s_tmax": 0, "uni_pc_order": 2}
    infotext: dict = {}
    assert registry.create_sampler("Euler a").sampler_kwargs(settings, infotext=infotext) == {"eta": 0.7}
    assert infotext == {"Eta": 0.7}
    euler = registry.create_sampler("Euler").sampler_kwargs(settings)
    assert euler == {"s_churn": 0.5, "s_noise": 1.0, "s_tmax": float("inf")}
    assert registry.create_sampler("DDIM").sampler_kwargs(settings, eta=0.0) == {"eta": 0.0}
    assert registry.create_sampler("UniPC").sampler_kwargs(settings) == {"order": 2}
    # sample() drops options the function does not take, so callers can pass a common superset
    sampler = registry.create_sampler("DPM++ 2M")
    sigmas = sampler.get_sigmas(4)
    sampler.sample(point_denoiser(noise()), noise() * sigmas[0], sigmas, eta=0.5, s_churn=1.0)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
def test_unipc_variants_and_grids(variant, skip_type):
    sampler = registry.create_sampler("UniPC")
    sigmas = sampler.get_sigmas(8, settings=ScheduleSettings(uni_pc_skip_type=skip_type))
    x = noise() * sigmas[0]
    out = sampler.sample(gaussian_denoiser, x, sigmas, variant=variant)
    assert (out - ode_solution(x, float(sigmas[0]), 0.0)).abs().max() < 0.6


def test_restart_renoises_from_twenty_steps():
    sampler = registry.create_sampler("Restart")
    for steps, restarts in ((19, False), (20, True)):
        seen: list[dict] = []
        sigmas = sampler.get_sigmas(steps)
        sampler.sample(point_denoiser(noise(seed=1)), noise() * sigmas[0], sigmas, callback=seen.append)
        # The step budget is kept (A1111): restarts replace main steps; they show as the noise level going up.
        assert [d["i"] for d in seen] == list(range(steps))
        levels = [float(d["sigma"]) for d in seen]
        assert any(b > a for a, b in zip(levels, levels[1:], strict=False)) == restarts


# --- denoiser ---


def test_sd_default_schedule():
    model = DiscreteSchedule()
    assert abs(model.sigma_min - 0.029168) < 1e-5 and abs(model.sigma_max - 14.614642) < 1e-4
    t = torch.tensor([0.0, 10.5, 500.25, 999.0])
    torch.testing.assert_close(model.sigma_to_t(model.t_to_sigma(t)), t, atol=1e-3, rtol=0)
    assert model.sigma_to_t(torch.tensor(5.0), quantize=True) == model.sigma_to_t(torch.tensor(5.0)).round()


def test_sigma_to_t_equals_k_diffusions_cumulative_search_for_every_kind_of_sigma():
    """The search for the nearest training levels gives exactly k-diffusion's result (cumsum over all levels)."""
    model = DiscreteSchedule()
    log_sigmas = model.log_sigmas
    sigma = torch.cat([model.sigmas, model.sigmas * 1.0001, model.sigmas * 0.9999,
                       torch.tensor([1e-5, 1e3]), torch.rand(500, generator=torch.Generator().manual_seed(0)) * 15])
    log_sigma = sigma.log()
    low = (log_sigma - log_sigmas[:, None]).ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0, 1)
    expected = (1 - w) * low + w * (low + 1)
    assert torch.equal(model.sigma_to_t(sigma), expected)
    assert torch.equal(model.sigma_to_t(sigma.view(2, -1)), expected.view(2, -1))


def test_eps_denoiser_formula():
    calls = []

    def model_fn(x_in, t, **cond):
        calls.append((x_in, t, cond))
        return torch.full_like(x_in, 0.25)

    denoiser = Denoiser(model_fn)
    x = torch.full((2, 1, 2, 2), 3.0)
    sigma = torch.tensor([2.0, 0.5])
    out = denoiser(x, sigma, cond="c")
    expected = 3.0 - sigma.view(-1, 1, 1, 1) * 0.25
    torch.testing.assert_close(out, expected.expand_as(x))
    x_in, t, cond = calls[0]
    torch.testing.assert_close(x_in, x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5)
    torch.testing.assert_close(t, denoiser.sigma_to_t(sigma))
    assert cond == {"cond": "c"}


def test_v_prediction_denoiser_formula_by_hand():
    denoiser = Denoiser(lambda x_in, t: torch.full_like(x_in, 0.5), prediction_type="v_prediction")
    x, sigma = torch.full((1, 1, 1, 1), 2.0), torch.tensor([3.0])
    # c_skip = 1 / (9 + 1) = 0.1; c_out = -3 / sqrt(10); denoised = 0.1 * 2 - 3 / sqrt(10) * 0.5
    expected = 0.1 * 2.0 - 3.0 / math.sqrt(10.0) * 0.5
    assert abs(denoiser(x, sigma).item() - expected) < 1e-6
    with pytest.raises(ValueError):
        Denoiser(lambda x, t: x, prediction_type="sample")


def test_v_prediction_of_exact_velocity_recovers_the_clean_latent():
    x0, eps = noise(seed=1), noise(seed=2)
    sigma = torch.full((SHAPE[0],), 1.7)
    alpha = 1 / (1 + 1.7**2) ** 0.5  # VP scaling of this noise level
    v = alpha * eps - 1.7 * alpha * x0  # v = alpha_t * eps - sigma_t(VP) * x0, sigma_t(VP) = 1.7 * alpha
    out = Denoiser(lambda x_in, t: v, prediction_type="v_prediction")(x0 + 1.7 * eps, sigma)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_zero_terminal_snr_and_configs():
    ac = rescale_zero_terminal_snr(make_alphas_cumprod())
    assert ac[-1] == 0
    model = DiscreteSchedule(ac)
    assert math.isfinite(model.sigma_max) and 4000 < model.sigma_max < 5000
    assert torch.isfinite(model.get_sigmas(10)).all()
    config = {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    denoiser = Denoiser.from_scheduler_config(lambda x, t: x, config)
    assert denoiser.prediction_type == "v_prediction" and denoiser.sigma_max > 4000
    linear = make_alphas_cumprod(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    assert linear.shape == (1000,) and (linear[1:] < linear[:-1]).all()


def test_lcm_denoiser_grid_and_boundary_condition():
    seen_t = []

    def model_fn(x_in, t):
        seen_t.append(t)
        return torch.zeros_like(x_in)  # eps = 0: the plain denoised is x itself

    sampler = registry.create_sampler("LCM")
    denoiser = sampler.make_denoiser(model_fn)
    assert isinstance(denoiser, LCMDenoiser)
    sigmas = sampler.get_sigmas(4, "Automatic", denoiser)
    full = DiscreteSchedule()
    torch.testing.assert_close(sigmas[[0, -2]], full.sigmas[[999, 19]])
    x = torch.ones(1, 1, 1, 1)
    out = denoiser(x, sigmas[1:2])
    t = seen_t[-1].item()
    assert t % 20 == 19
    scaled = t * 10
    c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25) ** 0.5
    assert abs(out.item() - (c_out + c_skip)) < 1e-6


# --- registry and A1111 compatibility ---


def test_registry_order_names_and_options():
    assert ALL_NAMES == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
        "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "PLMS", "UniPC",
        "LCM",
    ]  # fmt: skip
    options = registry.all_samplers_map
    assert options["DPM++ 2M"].options == {"scheduler": "karras"}
    assert options["DPM++ 3M SDE"].options["discard_next_to_last_sigma"] is True
    assert options["DPM++ SDE"].options["brownian_noise"] and options["DPM++ SDE"].options["second_order"]
    assert options["Euler a"].options == {"uses_ensd": True}
    assert registry.create_sampler("DPM++ 2M SDE Heun").default_options == {"solver_type": "heun"}


def test_samplers_map_and_find_sampler_config():
    assert sd_samplers.samplers_map["k_euler_a"] == "Euler a"
    assert sd_samplers.samplers_map["euler a"] == "Euler a"
    assert sd_samplers.find_sampler_config("k_euler_a").name == "Euler a"
    assert sd_samplers.find_sampler_config(None).name == "DPM++ 2M"
    assert sd_samplers.find_sampler_config("nope") is None
    assert sd_samplers.samplers is sd_samplers.all_samplers is registry.all_samplers
    assert sd_samplers.samplers_for_img2img is sd_samplers.all_samplers


@pytest.mark.parametrize(
    ("sampler", "scheduler", "expected"),
    [
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Automatic")),  # Karras is DPM++ 2M's default
        ("DPM++ 2M", "Exponential", ("DPM++ 2M", "Exponential")),
        ("Euler a Karras", "Automatic", ("Euler a", "Karras")),
        ("DPM++ 2M SDE Heun Karras", None, ("DPM++ 2M SDE Heun", "Karras")),
        ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Automatic")),
        ("LMS Karras", None, ("LMS", "Karras")),
        ("Euler SGMUniform", None, ("Euler", "SGM Uniform")),
        ("k_euler_a", None, ("Euler a", "Automatic")),
        ("unknown sampler", "karras", ("DPM++ 2M", "Automatic")),
        (None, None, ("DPM++ 2M", "Automatic")),
        ("DDIM", "DDIM", ("DDIM", "DDIM")),
    ],
)
def test_get_sampler_and_scheduler(sampler, scheduler, expected):
    assert sd_samplers.get_sampler_and_scheduler(sampler, scheduler) == expected


def test_old_combined_names_without_automatic_conversion():
    result = sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None, convert_automatic=False)
    assert result == ("DPM++ 2M", "Karras")

    class P:
        sampler_name, scheduler = "DPM2 a Karras", None

    sd_samplers.fix_p_invalid_sampler_and_scheduler(P)
    assert (P.sampler_name, P.scheduler) == ("DPM2 a", "Karras")
    assert sd_samplers.get_hr_sampler_and_scheduler({"Sampler": "Euler", "Schedule type": "Karras"}) == (
        "Use same sampler",
        "Use same scheduler",
    )


def test_register_sampler_makes_it_findable_by_name_and_alias(restore_registry):
    def sample_half(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
        return model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))

    data = registry.SamplerData("Half Test", lambda model: KSampler(sample_half, model), ["half_test"], {})
    registry.register_sampler(data)
    assert sd_samplers.find_sampler_config("Half Test") is data
    assert sd_samplers.samplers_map["half_test"] == "Half Test"
    assert "Half Test" in sd_samplers.visible_sampler_names()
    sampler = sd_samplers.create_sampler("half_test")
    x0 = noise(seed=1)
    sigmas = sampler.get_sigmas(3)
    torch.testing.assert_close(sampler.sample(point_denoiser(x0), noise() * sigmas[0], sigmas), x0)
    registry.register_sampler(data._replace(aliases=["half_again"]))  # same name: replaced, not duplicated
    assert [d.name for d in registry.all_samplers].count("Half Test") == 1


def test_the_a1111_extension_way_of_adding_a_sampler(restore_registry):
    data = sd_samplers_common.SamplerData("Ext Test", lambda model: KSampler(sample_euler, model), ["ext_test"], {})
    sd_samplers.all_samplers.append(data)
    sd_samplers.all_samplers_map[data.name] = data
    sd_samplers.set_samplers()
    assert sd_samplers.samplers_map["ext_test"] == "Ext Test"
    assert data in sd_samplers.samplers and data in sd_samplers.samplers_for_img2img
    assert sd_samplers.get_sampler_and_scheduler("Ext Test Karras", None) == ("Ext Test", "Karras")


def test_hidden_samplers(restore_registry):
    sd_samplers.set_samplers(hidden=["PLMS"])
    try:
        assert "PLMS" not in sd_samplers.visible_sampler_names()
        assert sd_samplers.find_sampler_config("PLMS") is not None  # hidden, still usable
    finally:
        sd_samplers.set_samplers(hidden=[])


def test_sd_samplers_common_helpers():
    class P:
        steps, denoising_strength, sampler_name, eta = 20, 0.5, "Euler a", None

    assert sd_samplers_common.setup_img2img_steps(P) == (20, 10)
    assert sd_samplers_common.setup_img2img_steps(P, steps=10) == (20, 9)
    assert sd_samplers_common.is_sampler_using_eta_noise_seed_delta(P)
    P.sampler_name = "Euler"
    assert not sd_samplers_common.is_sampler_using_eta_noise_seed_delta(P)
    assert issubclass(sd_samplers_common.InterruptedException, BaseException)
