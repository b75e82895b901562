"""The one request check (modules.request_validation) at every door, the sampler fields it lets through taking
effect (s_churn & co, s_min_uncond, ddim_discretize), and the settings the code reads being registered with
A1111's keys and defaults: listed by GET /sdapi/v1/options, accepted by POST, shown by the Settings page."""

from __future__ import annotations

import json
import math
import pathlib
import re
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, b64_png, client, decode, pixels, serving

from modules import processing, prompt_parser, request_validation, shared
from modules.api.server import create_app
from modules.engine.cfg_denoiser import CFGDenoiser, StepConditioning
from modules.engine.sampling import registry
from modules.engine.sampling.sampler import ScheduleSettings, quad_timesteps, settings_for_request
from modules.engine.sampling.schedules import default_schedule
from modules.options import OptionInfo
from modules.request_validation import RequestError
from modules.ui import settings as settings_page

# The settings this change registers, with A1111's defaults (None: A1111's "", see sd_checkpoint_hash).
NEW_SETTINGS: dict[str, Any] = {
    "samples_save": True, "samples_format": "png", "samples_filename_pattern": "", "save_images_add_number": True,
    "save_images_replace_action": "Replace", "grid_save": True, "grid_format": "png", "grid_extended_filename": False,
    "grid_prevent_empty_spots": False, "n_rows": -1, "font": "", "grid_text_active_color": "#000000",
    "grid_text_inactive_color": "#999999", "grid_background_color": "#ffffff", "jpeg_quality": 80,
    "webp_lossless": False, "img_max_size_mp": 200,
    "outdir_samples": "", "outdir_txt2img_samples": "", "outdir_img2img_samples": "", "outdir_grids": "",
    "outdir_txt2img_grids": "", "outdir_img2img_grids": "", "outdir_save": "log/images", "save_selected_only": True,
    "use_save_to_dirs_for_ui": False, "save_to_dirs": True, "grid_save_to_dirs": True,
    "directories_filename_pattern": "[date]", "directories_max_prompt_words": 8,
    "list_hidden_files": True,
    "emphasis": "Original", "comma_padding_backtrack": 20, "s_min_uncond": 0.0, "auto_backcompat": True,
    "use_old_karras_scheduler_sigmas": False, "use_old_hires_fix_width_height": False,
    "eta_ddim": 0.0, "ddim_discretize": "uniform", "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0,
    "s_tmax": 0.0, "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0,
    "always_discard_next_to_last_sigma": False, "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3, "uni_pc_lower_order_final": True, "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6,
    "enable_pnginfo": True, "save_txt": False, "disable_weights_auto_swap": True, "infotext_skip_pasting": [],
    "infotext_styles": "Apply if any", "return_grid": True, "sd_checkpoint_hash": None,
}  # fmt: skip
OUTDIRS = [k for k in NEW_SETTINGS if k.startswith("outdir_")]


def info_of(response) -> str:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["infotexts"][0]


# --- the check itself ---------------------------------------------------------------------------------------


def request(**fields: Any) -> SimpleNamespace:
    """A script's request: the processing defaults, with `fields` set."""
    base = {"width": 64, "height": 64, "steps": 4, "batch_size": 1, "n_iter": 1, "prompt": "x", "negative_prompt": "",
            "sampler_name": "Euler", "sampler_index": None, "scheduler": None, "override_settings": {}}
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize("fields, field", [
    ({"width": 65}, "width"),
    ({"height": 32}, "height"),
    ({"steps": 0}, "steps"),
    ({"n_iter": 0}, "n_iter"),
    ({"prompt": ["ok", "(" * 200]}, "prompt"),
    ({"negative_prompt": "a\ud800"}, "negative_prompt"),
    ({"enable_hr": True, "hr_upscaler": "nope"}, "hr_upscaler"),
    ({"enable_hr": True, "hr_scale": 0}, "hr_scale"),
    ({"firstpass_image": Image.new("RGB", (8, 8))}, "firstpass_image"),
    ({"latent_mask": Image.new("L", (8, 8))}, "latent_mask"),
    ({"token_merging_ratio": 0.95}, "token_merging_ratio"),  # token merging: 0 to 0.9, as its settings
    ({"token_merging_ratio_hr": -0.3}, "token_merging_ratio_hr"),
    ({"token_merging_ratio": "half"}, "token_merging_ratio"),
    ({"s_churn": -1.0}, "s_churn"),
    ({"s_noise": math.nan}, "s_noise"),
    ({"s_min_uncond": "lots"}, "s_min_uncond"),
    ({"s_min_uncond": 16}, "s_min_uncond"),
    ({"s_noise": 1.2}, "s_noise"),
    ({"eta": -0.5}, "eta"),
    ({"ddim_discretize": "cubic"}, "ddim_discretize"),
    ({"sampler_name": "Nope"}, "sampler_name"),
    ({"sampler_name": None, "sampler_index": 999}, "sampler_index"),
    ({"scheduler": "Nope"}, "scheduler"),
    ({"override_settings": {"token_merging_ratio": 0.95}}, "override_settings.token_merging_ratio"),
    ({"override_settings": {"token_merging_ratio_img2img": "-0.2"}}, "override_settings.token_merging_ratio_img2img"),
    ({"override_settings": {"samples_format": "exe"}}, "override_settings.samples_format"),
    ({"override_settings": {"s_noise": 5}}, "override_settings.s_noise"),
])
def test_a_refused_request_names_its_field(fields, field):
    with pytest.raises(RequestError) as refused:
        request_validation.validate(request(**fields))
    assert refused.value.field in (field, tuple(field.split(".")))
    assert str(refused.value).startswith(f"{field}: ")


def test_what_leaves_a_feature_off_passes():
    names = request_validation.validate(request(
        enable_hr=False, restore_faces=None, token_merging_ratio=0.5, token_merging_ratio_hr=0.9, firstpass_image=None,
        s_churn=0.5, s_tmin=0, s_tmax=0, s_noise=1, s_min_uncond=2.0, eta=None, ddim_discretize="quad",
        override_settings={"token_merging_ratio": "0.3", "token_merging_ratio_img2img": 0.2, "no_such_setting": 1,
                           "s_churn": 1.5}))
    assert names == ("Euler", None)
    assert request_validation.validate(request(sampler_name=None, sampler_index=1)) == (registry.samplers[1].name, None)


def test_override_settings_keep_known_keys_and_drop_unknown_ones():
    kept = request_validation.check_override_settings({"s_churn": "1.5", "no_such_setting": 1, "eta_ddim": None})
    assert kept == {"s_churn": 1.5}


def test_settings_the_api_may_not_change_are_refused_there_only_when_changed(monkeypatch):
    monkeypatch.setitem(shared.opts.data, "outdir_txt2img_samples", "")
    with pytest.raises(RequestError, match="cannot be changed through the API"):
        request_validation.check_override_settings({"outdir_txt2img_samples": "elsewhere"}, is_api=True)
    assert request_validation.check_override_settings({"outdir_txt2img_samples": ""}, is_api=True) == {
        "outdir_txt2img_samples": ""}  # what a client read back
    assert request_validation.check_override_settings({"outdir_txt2img_samples": "elsewhere"}) == {
        "outdir_txt2img_samples": "elsewhere"}  # a script on the server may


def test_hide_ui_dir_config_freezes_folders_and_file_names(monkeypatch):
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--hide-ui-dir-config"]))
    monkeypatch.setitem(shared.opts.data, "samples_filename_pattern", "")
    for key in ("samples_filename_pattern", "directories_filename_pattern", "outdir_samples"):
        with pytest.raises(RequestError, match="--hide-ui-dir-config"):
            request_validation.check_setting(key, "[seed]-x", (key,))
    assert request_validation.check_setting("samples_filename_pattern", "", ("x",)) == ""
    with gr.Blocks():
        widget = settings_page.component_for("outdir_samples", shared.opts.data_labels["outdir_samples"])
    assert widget.interactive is False


def test_processing_refuses_with_the_same_check():
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", width=64, height=64, steps=1, token_merging_ratio=1)
    with pytest.raises(ValueError, match="token_merging_ratio: 1 is more than 0.9"):
        processing.process_images(p)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", width=64, height=64, steps=1, s_churn=-1)
    with pytest.raises(ValueError, match="s_churn: -1 is not a number of 0 or more"):
        processing.process_images(p)


# --- sampler fields take effect -----------------------------------------------------------------------------


def test_request_fields_win_over_settings_unless_none():
    settings = {"s_churn": 0.0, "s_noise": 1.0, "ddim_discretize": "uniform", "eta_ddim": 0.0}
    merged = settings_for_request(settings, SimpleNamespace(s_churn=2.0, s_noise=None, ddim_discretize="quad"))
    assert merged == {"s_churn": 2.0, "s_noise": 1.0, "ddim_discretize": "quad", "eta_ddim": 0.0}
    assert ScheduleSettings.from_options(merged).ddim_discretize == "quad"


def test_sampler_kwargs_pass_and_record_sigma_params_like_a1111():
    settings = {"s_churn": 2.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "eta_ancestral": 1.0}
    infotext: dict[str, Any] = {}
    kwargs = registry.create_sampler("Euler").sampler_kwargs(settings, infotext=infotext)
    assert kwargs == {"s_churn": 2.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
    assert infotext == {"Sigma churn": 2.0}  # defaults are not written; s_tmax 0 means infinity
    infotext = {}
    assert registry.create_sampler("DPM2 a").sampler_kwargs({**settings, "s_noise": 0.9}, infotext=infotext) == {
        "eta": 1.0, "s_noise": 0.9}  # DPM2 a takes no churn
    assert "s_noise" not in registry.create_sampler("Euler a").sampler_kwargs(settings)  # not in A1111's list
    assert infotext == {"Sigma noise": 0.9}
    assert "s_churn" not in registry.create_sampler("DPM++ 2M").sampler_kwargs(settings)


def test_ngms_goes_to_the_cfg_denoiser_and_is_recorded():
    infotext: dict[str, Any] = {}
    for name in ("Euler", "DDIM", "UniPC"):
        kwargs = registry.create_sampler(name).sampler_kwargs({"s_min_uncond": 1.5}, infotext=infotext)
        assert kwargs["s_min_uncond"] == 1.5
    assert infotext == {"NGMS": 1.5}
    seen: list[dict[str, Any]] = []

    def denoiser(x, sigma, **extra):
        seen.append(extra)
        return x * 0

    sigmas = torch.tensor([1.0, 0.5, 0.0])
    registry.create_sampler("Euler").sample(denoiser, torch.zeros(1, 4, 2, 2), sigmas, s_min_uncond=1.5)
    assert seen and all(extra == {"s_min_uncond": 1.5} for extra in seen)


def _denoiser(calls: list[int]) -> CFGDenoiser:
    """CFG over a fake UNet that returns each row's context mean: 1 for the prompt, 0 for the negative."""
    row = prompt_parser.ScheduledPromptConditioning
    cond = prompt_parser.MulticondLearnedConditioning((1,), [[prompt_parser.ComposableScheduledPromptConditioning(
        [row(100, torch.ones(2, 3))])]])
    conditioning = StepConditioning(cond=cond, uncond=[[row(100, torch.zeros(2, 3))]], cfg_scale=7.0)

    def unet(x, sigma, context, added=None, image_cond=None, **_hook_info):
        calls.append(x.shape[0])
        return context.mean(dim=(1, 2)).view(-1, 1, 1, 1).expand_as(x).clone()

    return CFGDenoiser(unet, conditioning, is_sdxl=False)


def test_ngms_skips_the_negative_prompt_on_odd_steps_below_the_sigma():
    calls: list[int] = []
    cfg = _denoiser(calls)
    x = torch.zeros(1, 4, 2, 2)
    results = [float(cfg(x, torch.tensor([sigma]), s_min_uncond=1.0)[0, 0, 0, 0]) for sigma in (0.5, 0.5, 2.0, 2.0)]
    assert calls == [2, 1, 2, 2]  # step 1 is odd and below 1.0; steps 2 and 3 are above it
    assert results == [7.0, 1.0, 7.0, 7.0]  # skipped: the prompt's result at guidance 1
    calls.clear()
    assert float(_denoiser(calls)(x, torch.tensor([0.5]))[0, 0, 0, 0]) == 7.0 and calls == [2]  # off by default


def test_quad_discretize_is_a1111s_and_only_changes_ddim_img2img():
    assert quad_timesteps(5) == [int(t) + 1 for t in np.linspace(0, np.sqrt(800), 5) ** 2] == [1, 51, 201, 451, 801]
    quad, uniform = ScheduleSettings(ddim_discretize="quad"), ScheduleSettings()

    def img2img(name: str, settings: ScheduleSettings) -> torch.Tensor:
        return registry.create_sampler(name).sigmas_for_img2img(10, 0.5, settings=settings)

    assert not torch.equal(img2img("DDIM", quad), img2img("DDIM", uniform))
    assert torch.equal(img2img("PLMS", quad), img2img("PLMS", uniform))  # "img2img DDIM discretize"
    ddim = registry.create_sampler("DDIM")
    assert torch.equal(ddim.get_sigmas(10, settings=quad), ddim.get_sigmas(10, settings=uniform))  # txt2img
    tail = img2img("DDIM", quad)
    assert float(tail[-1]) == 0 and bool((tail[:-1] >= default_schedule().sigmas.min()).all())


# --- settings the code reads are registered -----------------------------------------------------------------

_READS = re.compile(r"""\b(?:_opt|shared_opt|_shared_opt)\(\s*["'](\w+)["']|opts\.data\.get\(\s*["'](\w+)["']"""
                    r"""|getattr\(shared\.opts,\s*["'](\w+)["']|\bshared\.opts\.([a-z]\w*)"""
                    r"""|settings\.get\(\s*["'](\w+)["']""")
# Read, but nothing backs them yet, so registering them would offer a setting that changes nothing:
# img2img_fix_steps only by the A1111 helper extensions call (sd_samplers_common).
_NOT_YET = {"img2img_fix_steps"}


def test_every_setting_the_code_reads_is_registered():
    modules_dir = pathlib.Path(__file__).resolve().parent.parent / "modules"
    methods = {n for n in dir(shared.opts) if not n.startswith("_")} | {"data", "data_labels", "restricted_opts"}
    missing = {}
    for path in modules_dir.rglob("*.py"):
        for match in _READS.finditer(path.read_text(encoding="utf8")):
            key = next(g for g in match.groups() if g)
            if key in shared.opts.data_labels or key in methods or key in _NOT_YET or hasattr(shared.cmd_opts, key):
                continue
            missing[key] = path.name
    assert not missing


def test_new_settings_have_a1111_defaults_and_restrictions():
    for key, default in NEW_SETTINGS.items():
        assert shared.opts.data_labels[key].default == default, key
        assert shared.opts.validate(key, default) == default, key
    for key in OUTDIRS:
        assert shared.opts.data_labels[key].restrict_api and key in shared.opts.restricted_opts, key
    assert {"samples_filename_pattern", "directories_filename_pattern"} <= shared.opts.restricted_opts
    assert shared.opts.data_labels["s_churn"].infotext == "Sigma churn"
    assert shared.opts.data_labels["s_min_uncond"].infotext == "NGMS"


def test_the_settings_page_shows_every_new_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "config_filename", str(tmp_path / "config.json"))
    with gr.Blocks():
        page = settings_page.build()
    shown = set(page.keys)
    assert set(NEW_SETTINGS) - {"sd_checkpoint_hash"} <= shown  # the hash is a hidden option, as in A1111
    assert "sd_checkpoint_hash" not in shown
    ids = {getattr(c, "elem_id", None) for c in page.components}
    assert {"setting_samples_format", "setting_s_churn", "setting_emphasis", "setting_outdir_samples"} <= ids


# --- over the API -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-fields"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def txt2img(http, **fields: Any):
    return http.post("/sdapi/v1/txt2img", json={**FAST, **fields})


def test_s_churn_changes_the_picture_and_is_recorded(http):
    plain, churned = txt2img(http), txt2img(http, s_churn=1.0)
    assert "Sigma churn" not in info_of(plain) and "Sigma churn: 1.0" in info_of(churned)
    assert not np.array_equal(pixels(decode(plain.json()["images"][0])), pixels(decode(churned.json()["images"][0])))
    # the request field and the setting are the same knob; an explicit null falls back to the setting
    by_setting = txt2img(http, s_churn=None, override_settings={"s_churn": 1.0})
    assert np.array_equal(pixels(decode(by_setting.json()["images"][0])), pixels(decode(churned.json()["images"][0])))
    assert "Sigma churn: 1.0" in info_of(by_setting)


def test_pasted_sigma_churn_is_applied_again(http):
    churned = info_of(txt2img(http, s_churn=1.0))
    again = http.post("/sdapi/v1/txt2img", json={"infotext": churned, "steps": 4})
    assert "Sigma churn: 1.0" in info_of(again)


def test_s_noise_and_ngms_change_the_picture(http):
    base = pixels(decode(txt2img(http, sampler_name="DPM2 a").json()["images"][0]))
    quiet = txt2img(http, sampler_name="DPM2 a", s_noise=0.5)
    assert "Sigma noise: 0.5" in info_of(quiet)
    assert not np.array_equal(base, pixels(decode(quiet.json()["images"][0])))
    plain = pixels(decode(txt2img(http).json()["images"][0]))
    ngms = txt2img(http, s_min_uncond=10.0)
    assert "NGMS: 10.0" in info_of(ngms)
    assert not np.array_equal(plain, pixels(decode(ngms.json()["images"][0])))


def test_ddim_discretize_changes_ddim_img2img_only(http):
    init = b64_png(Image.new("RGB", (64, 64), (30, 120, 200)))
    body = {**FAST, "sampler_name": "DDIM", "init_images": [init], "denoising_strength": 0.6, "steps": 8}

    def picture(kind: str, discretize: str, **extra: Any) -> np.ndarray:
        r = http.post(f"/sdapi/v1/{kind}", json={**body, **extra, "override_settings": {"ddim_discretize": discretize}})
        assert r.status_code == 200, r.text
        return pixels(decode(r.json()["images"][0]))

    assert not np.array_equal(picture("img2img", "uniform"), picture("img2img", "quad"))
    assert np.array_equal(picture("txt2img", "uniform"), picture("txt2img", "quad"))


@pytest.mark.parametrize("fields, field", [
    ({"override_settings": {"token_merging_ratio": 0.95}}, "override_settings.token_merging_ratio"),
    ({"override_settings": {"token_merging_ratio_hr": -1}}, "override_settings.token_merging_ratio_hr"),
    ({"token_merging_ratio": 2}, "token_merging_ratio"),
    ({"s_churn": -0.1}, "s_churn"),
    ({"firstpass_image": b64_png(Image.new("RGB", (8, 8)))}, "firstpass_image"),
    ({"override_settings": {"outdir_txt2img_samples": "elsewhere"}}, "override_settings.outdir_txt2img_samples"),
])
def test_refused_over_the_api_naming_the_field(http, fields, field):
    r = txt2img(http, **fields)
    assert field in assert_error_json(r, 422, field)["errors"]


def _another_value(key: str, info: OptionInfo) -> Any:
    """A valid value of setting `key` other than its default (the default itself where it has no other)."""
    choices = info.allowed_choices()
    if choices is not None:
        return next((c for c in choices if c != info.default), info.default)
    if isinstance(info.default, bool):
        return not info.default
    if isinstance(info.default, int | float):
        low, high = info.bounds()
        value = info.default + 1 if high is None or info.default + 1 <= high else (low or 0)
        return type(info.default)(value)
    if isinstance(info.default, list):
        return ["Seed"]
    return "#123456" if "color" in key else "[seed]"


def test_every_new_setting_is_listed_and_can_be_posted(http):
    listed = http.get("/sdapi/v1/options").json()
    assert set(NEW_SETTINGS) - {"sd_checkpoint_hash"} <= set(listed)
    wanted = {key: _another_value(key, shared.opts.data_labels[key]) for key in NEW_SETTINGS}
    r = http.post("/sdapi/v1/options", json=wanted)
    assert r.status_code == 200, r.text
    try:
        after = http.get("/sdapi/v1/options").json()
        for key, value in wanted.items():
            expected = listed.get(key) if shared.opts.data_labels[key].restrict_api else value
            assert after.get(key) == expected, key  # output folders cannot be moved over the API
    finally:
        r = http.post("/sdapi/v1/options", json={k: v for k, v in NEW_SETTINGS.items() if v is not None})
        assert r.status_code == 200, r.text


def test_options_read_can_be_posted_back_unchanged(http):
    txt2img(http, steps=1)  # a loaded model puts sd_checkpoint_hash into the options
    listed = http.get("/sdapi/v1/options").json()
    r = http.post("/sdapi/v1/options", json=listed)
    assert r.status_code == 200, r.text
