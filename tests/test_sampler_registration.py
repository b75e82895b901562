"""A sampler and a schedule type registered the way A1111 extensions do it (reference §6.5) show in the UI lists
and the API, generate, and round-trip through infotext."""

from __future__ import annotations

import json

import pytest
import torch
from test_api_support import CHECKPOINTS, SETTINGS, client, decode, pixels, serving

from modules import infotext_utils, sd_samplers, sd_samplers_common, sd_schedulers
from modules.api.server import create_app
from modules.engine.sampling import registry, schedules
from modules.engine.sampling.sampler import ScheduleSettings
from modules.sd_samplers_kdiffusion import KDiffusionSampler
from modules.ui import params

NAME, ALIAS = "Test Euler Ext", "k_test_euler_ext"
SCHEDULE_NAME, SCHEDULE_LABEL = "test_linear", "Test Linear"


def sample_test_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """An extension's k-diffusion function: Euler, written out, without the arguments ours take (noise_sampler)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def linear_sigmas(n, sigma_min, sigma_max, device):
    """An extension's schedule: evenly spaced in sigma."""
    return torch.cat([torch.linspace(sigma_max, sigma_min, n), torch.zeros(1)]).to(device)


@pytest.fixture
def registered():
    """Register both the A1111 way; take them out again afterwards (the registries are process-wide)."""
    data = sd_samplers_common.SamplerData(
        NAME, lambda model: KDiffusionSampler(sample_test_euler, model), [ALIAS], {"scheduler": SCHEDULE_NAME})
    sd_samplers.all_samplers.append(data)
    sd_samplers.all_samplers_map[data.name] = data
    sd_samplers.set_samplers()
    scheduler = sd_schedulers.Scheduler(SCHEDULE_NAME, SCHEDULE_LABEL, linear_sigmas)
    sd_schedulers.schedulers.append(scheduler)
    sd_schedulers.schedulers_map[scheduler.name] = sd_schedulers.schedulers_map[scheduler.label] = scheduler
    try:
        yield data
    finally:
        registry.all_samplers[:] = [s for s in registry.all_samplers if s.name != NAME]
        registry.all_samplers_map.pop(NAME, None)
        sd_samplers.set_samplers()
        schedules.schedulers[:] = [s for s in schedules.schedulers if s.name != SCHEDULE_NAME]
        schedules.register_scheduler(schedules.schedulers[0])  # rebuilds schedulers_map from the list


def test_registered_sampler_is_in_every_list(registered):
    assert NAME in params.sampler_names() and SCHEDULE_LABEL in params.scheduler_labels()
    assert sd_samplers.samplers_map[NAME.lower()] == NAME and sd_samplers.samplers_map[ALIAS] == NAME
    assert registered in sd_samplers.samplers and registered in sd_samplers.samplers_for_img2img
    assert sd_samplers.find_sampler_config(ALIAS) is registered
    assert schedules.find_scheduler(SCHEDULE_LABEL).function is linear_sigmas


def test_rebinding_the_lists_as_some_extensions_do_still_registers(registered):
    extra = sd_samplers_common.SamplerData("Test Rebound", lambda model: KDiffusionSampler("sample_euler", model),
                                           [], {})
    sd_samplers.all_samplers += [extra]
    sd_samplers.all_samplers_map = {x.name: x for x in sd_samplers.all_samplers}  # a new dict, not the engine's
    sd_samplers.set_samplers()
    try:
        assert registry.all_samplers_map["Test Rebound"] is extra and "Test Rebound" in params.sampler_names()
        assert sd_samplers.all_samplers_map is registry.all_samplers_map
    finally:
        registry.all_samplers.remove(extra)
        registry.all_samplers_map.pop("Test Rebound")
        sd_samplers.set_samplers()


def test_automatic_schedule_is_the_samplers_default_and_infotext_names_it(registered):
    sampler = sd_samplers.create_sampler(NAME)
    assert isinstance(sampler, KDiffusionSampler) and sampler.config is registered
    notes: dict = {}
    sigmas = sampler.get_sigmas(4, "Automatic", None, ScheduleSettings(), notes)
    schedule = schedules.default_schedule()
    assert torch.allclose(sigmas, linear_sigmas(4, schedule.sigma_min, schedule.sigma_max, "cpu"))
    assert notes["Schedule type"] == SCHEDULE_LABEL


def test_constructor_contract():
    bare = sd_samplers_common.SamplerData("Test Bare", lambda model: sample_test_euler, [], {})
    wrong = sd_samplers_common.SamplerData("Test Wrong", lambda model: object(), [], {})
    registry.register_sampler(bare)
    registry.register_sampler(wrong)
    try:
        assert sd_samplers.create_sampler("Test Bare").func is sample_test_euler  # a bare function is wrapped
        with pytest.raises(TypeError, match="Test Wrong.*KDiffusionSampler"):
            sd_samplers.create_sampler("Test Wrong")
    finally:
        for name in ("Test Bare", "Test Wrong"):
            registry.all_samplers[:] = [s for s in registry.all_samplers if s.name != name]
            registry.all_samplers_map.pop(name)
        sd_samplers.set_samplers()
    assert KDiffusionSampler("sample_dpmpp_2m").funcname == "sample_dpmpp_2m"
    with pytest.raises(ValueError, match="sample_nothing"):
        KDiffusionSampler("sample_nothing")


def test_schedule_that_needs_the_model_gets_it_even_through_kwargs():
    seen = {}

    def needs_model(n, sigma_min, sigma_max, device, **kwargs):
        seen.update(kwargs)
        return linear_sigmas(n, sigma_min, sigma_max, device)

    model = schedules.default_schedule()
    scheduler = sd_schedulers.Scheduler("test_needs", "Test Needs", needs_model, need_inner_model=True)
    schedules.build_sigmas(scheduler, 3, 0.1, 10.0, "cpu", model)
    assert seen["inner_model"] is model


# --- through the API: listed, generates, infotext round trip ---


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("samplers"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def txt2img(http, **kw) -> dict:
    body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 7, "cfg_scale": 5, **kw}
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_api_lists_generates_and_infotext_round_trips(http, registered):
    samplers = {s["name"]: s for s in http.get("/sdapi/v1/samplers").json()}
    assert samplers[NAME]["aliases"] == [ALIAS] and samplers[NAME]["options"] == {"scheduler": SCHEDULE_NAME}
    assert {"name": SCHEDULE_NAME, "label": SCHEDULE_LABEL} in [
        {k: s[k] for k in ("name", "label")} for s in http.get("/sdapi/v1/schedulers").json()]

    ours = txt2img(http, sampler_name=NAME, scheduler=SCHEDULE_LABEL)
    info = json.loads(ours["info"])
    assert info["sampler_name"] == NAME
    text = decode(ours["images"][0]).info["parameters"]
    assert f"Sampler: {NAME}" in text and f"Schedule type: {SCHEDULE_LABEL}" in text
    parsed = infotext_utils.parse_generation_parameters(text)
    assert (parsed["Sampler"], parsed["Schedule type"]) == (NAME, SCHEDULE_LABEL)
    assert sd_samplers.get_sampler_from_infotext(parsed) == NAME
    assert sd_samplers.get_scheduler_from_infotext(parsed) == "Automatic"  # A1111: it is the sampler's default

    # The extension's Euler is Euler: the same picture as the built-in one on the same schedule.
    builtin = txt2img(http, sampler_name="Euler", scheduler=SCHEDULE_LABEL)
    parsed = infotext_utils.parse_generation_parameters(decode(builtin["images"][0]).info["parameters"])
    assert sd_samplers.get_scheduler_from_infotext(parsed) == SCHEDULE_LABEL
    difference = abs(pixels(decode(ours["images"][0])) - pixels(decode(builtin["images"][0])))
    assert difference.max() <= 1


def test_api_accepts_the_alias_and_the_automatic_schedule(http, registered):
    info = json.loads(txt2img(http, sampler_name=ALIAS)["info"])
    assert info["sampler_name"] == NAME
    assert f"Schedule type: {SCHEDULE_LABEL}" in info["infotexts"][0]  # "Automatic" is the sampler's default
