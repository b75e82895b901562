"""Every /sdapi/v1 and /internal endpoint over real HTTP (uvicorn on loopback, tiny model): shapes, A1111
defaults, txt2img infotext, img2img with a mask, options, png-info, infotext field, scripts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image, ImageDraw
from test_api_support import (
    CHECKPOINTS,
    FAST,
    SETTINGS,
    assert_error_json,
    assert_unique_operation_ids,
    b64_png,
    client,
    decode,
    pixels,
    serving,
)

from modules import infotext_utils, scripts, shared, upscalers
from modules.api import models
from modules.api.server import create_app, mount


@pytest.fixture(scope="module")
def no_scripts():
    """A server with no scripts loaded (the lists below say so), whatever earlier test modules loaded."""
    saved = list(scripts.scripts_data)
    scripts.scripts_data.clear()
    scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts.scripts_img2img.initialize_scripts(is_img2img=True)
    yield
    scripts.scripts_data[:] = saved
    scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts.scripts_img2img.initialize_scripts(is_img2img=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, isolated_data_dir, no_scripts):
    with isolated_data_dir(tmp_path_factory.mktemp("api"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running:
            yield running


@pytest.fixture(scope="module")
def http(server):
    with client(server) as c:
        yield c


def test_request_models_have_a1111_api_defaults():
    t = models.StableDiffusionTxt2ImgProcessingAPI()
    assert (t.steps, t.sampler_index, t.sampler_name, t.width, t.height, t.cfg_scale) == (50, "Euler", None, 512, 512, 7.0)
    assert (t.denoising_strength, t.send_images, t.save_images, t.override_settings_restore_afterwards) == (
        0.75, True, False, True)
    assert (t.seed, t.subseed, t.batch_size, t.n_iter, t.script_args, t.alwayson_scripts) == (-1, -1, 1, 1, [], {})
    i = models.StableDiffusionImg2ImgProcessingAPI()
    assert (i.inpainting_fill, i.inpaint_full_res, i.inpaint_full_res_padding, i.mask_blur_x, i.mask_blur_y) == (
        0, True, 0, 4, 4)
    assert (i.denoising_strength, i.resize_mode, i.mask_round, i.include_init_images, i.init_images) == (
        0.75, 0, True, False, None)


def test_txt2img_png_infotext_equals_info(http):
    r = http.post("/sdapi/v1/txt2img", json=FAST)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert isinstance(body["info"], str)
    info = json.loads(body["info"])
    for key in ("prompt", "all_prompts", "seed", "all_seeds", "width", "height", "sampler_name", "cfg_scale", "steps",
                "sd_model_name", "sd_model_hash", "infotexts", "job_timestamp", "version"):
        assert key in info
    assert len(body["images"]) == 1
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    assert image.info["parameters"] == info["infotexts"][0]
    params = infotext_utils.parse_generation_parameters(image.info["parameters"])
    assert (params["Prompt"], params["Steps"], params["Seed"], params["Sampler"]) == ("a red circle", "4", "42", "Euler")
    assert body["parameters"]["prompt"] == "a red circle" and body["parameters"]["steps"] == 4


def test_txt2img_api_defaults_apply(http):
    r = http.post("/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64, "send_images": False})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert r.json()["images"] == []
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 7.0 and info["seed"] >= 0


def test_batch_gives_each_image_its_seed(http):
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "steps": 2, "batch_size": 2, "n_iter": 2, "seed": 10})
    assert r.status_code == 200, r.text
    seeds = [infotext_utils.parse_generation_parameters(decode(b).info["parameters"])["Seed"]
             for b in r.json()["images"]]
    assert seeds == ["10", "11", "12", "13"]  # no grid: save_images is off, as in A1111


def _noise_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("full_res", [True, False], ids=["only-masked", "whole-picture"])
def test_img2img_with_mask_leaves_pixels_outside_it(http, full_res):
    init = _noise_image()
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    inside = np.asarray(mask) > 0
    r = http.post("/sdapi/v1/img2img", json={
        **FAST, "init_images": [b64_png(init)], "mask": b64_png(mask), "mask_blur": 0, "inpainting_fill": 1,
        "inpaint_full_res": full_res, "denoising_strength": 0.9})
    assert r.status_code == 200, r.text
    out = decode(r.json()["images"][0])
    diff = np.abs(pixels(out) - pixels(init))
    assert diff[~inside].max() == 0
    assert diff[inside].mean() > 10
    text = out.info["parameters"]
    assert "Mask blur: 0" in text and ("Inpaint area: Only masked" in text) == full_res
    assert r.json()["parameters"]["init_images"] is None and r.json()["parameters"]["mask"] is None


def test_img2img_plain_and_include_init_images(http):
    init = b64_png(_noise_image(1))
    r = http.post("/sdapi/v1/img2img", json={**FAST, "init_images": [f"data:image/png;base64,{init}"],
                                            "include_init_images": True})
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["init_images"] == [f"data:image/png;base64,{init}"]
    assert "Denoising strength: 0.75" in decode(r.json()["images"][0]).info["parameters"]


def test_png_info(http):
    text = "a cat\nNegative prompt: a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    r = http.post("/sdapi/v1/png-info", json={"image": b64_png(_noise_image(), parameters=text, Software="x")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == text
    assert body["items"] == {"Software": "x"}
    assert body["parameters"]["Prompt"] == "a cat" and body["parameters"]["Size-2"] == "768"
    r = http.post("/sdapi/v1/png-info", json={"image": b64_png(_noise_image())})
    assert r.json()["info"] == ""


def test_infotext_fills_only_unset_fields(http):
    text = "a cat\nNegative prompt: a dog\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 7, Size: 64x72, Clip skip: 2"
    r = http.post("/sdapi/v1/txt2img", json={"infotext": text, "steps": 2, "send_images": False})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"]) == ("a cat", "a dog", 2)
    assert (info["sampler_name"], info["cfg_scale"], info["seed"], info["width"], info["height"]) == (
        "Euler a", 5.0, 7, 64, 72)
    assert "Clip skip: 2" in info["infotexts"][0]  # via override_settings, restored afterwards
    assert shared.opts.CLIP_stop_at_last_layers == 1


def test_override_settings_applied_and_restored(http):
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "steps": 2, "override_settings": {
        "CLIP_stop_at_last_layers": 2, "some_a1111_setting_we_lack": 1}})
    assert r.status_code == 200, r.text
    assert "Clip skip: 2" in decode(r.json()["images"][0]).info["parameters"]
    assert http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_override_settings_kept_when_asked(http):
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "steps": 1, "send_images": False,
                                             "override_settings": {"eta_noise_seed_delta": 31337},
                                             "override_settings_restore_afterwards": False})
    assert r.status_code == 200, r.text
    try:
        assert http.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] == 31337
    finally:
        shared.opts.data["eta_noise_seed_delta"] = 0


def test_list_endpoints_shapes(http):
    samplers = http.get("/sdapi/v1/samplers").json()
    assert {"name": "Euler", "aliases": ["k_euler"], "options": {}} in samplers
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    schedulers = http.get("/sdapi/v1/schedulers").json()
    assert schedulers[0] == {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0,
                             "need_inner_model": False}
    upscalers.refresh()  # webui.initialize() does this at start-up; the test data dir has no model files
    assert [u["name"] for u in http.get("/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert http.get("/sdapi/v1/realesrgan-models").json() == []
    sd_models = http.get("/sdapi/v1/sd-models").json()
    assert sorted(m["model_name"] for m in sd_models) == ["other", "tiny"]
    assert all(set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"} for m in sd_models)
    assert http.get("/sdapi/v1/sd-vae").json() == []
    assert http.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert http.get("/sdapi/v1/script-info").json() == []
    memory = http.get("/sdapi/v1/memory").json()
    assert set(memory) == {"ram", "cuda"} and memory["ram"]["total"] > 0
    flags = http.get("/sdapi/v1/cmd-flags").json()
    assert "api_auth" in flags and "data_dir" in flags
    progress = http.get("/sdapi/v1/progress").json()
    assert set(progress) == {"progress", "eta_relative", "state", "current_image", "textinfo", "current_task"}
    assert set(progress["state"]) >= {"skipped", "interrupted", "job", "job_count", "job_no", "sampling_step",
                                      "sampling_steps", "job_timestamp"}
    assert http.post("/sdapi/v1/interrupt").json() == {}
    assert http.post("/sdapi/v1/skip").json() is None
    assert http.get("/internal/ping").json() == {}
    assert http.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}
    internal = http.post("/internal/progress", json={"id_task": "task(unknown)"}).json()
    assert internal["textinfo"] == "Waiting..." and internal["active"] is False
    # routes of features that do not exist are not served
    assert http.get("/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert http.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}


def test_prompt_styles(http, monkeypatch):
    monkeypatch.setattr(shared, "prompt_styles", None, raising=False)  # made from this data dir's styles.csv
    path = os.path.join(shared.data_path, "styles.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("name,prompt,negative_prompt\nshiny,\"{prompt}, shiny\",dull\n")
    try:
        assert http.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "shiny", "prompt": "{prompt}, shiny", "negative_prompt": "dull"}]
    finally:
        os.remove(path)


def test_cmd_flags_hide_secrets(http, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "alice:secret")
    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", "bob:hunter2")
    text = http.get("/sdapi/v1/cmd-flags").text
    assert "secret" not in text and "hunter2" not in text
    assert http.get("/sdapi/v1/cmd-flags").json()["api_auth"] == "<redacted>"


def test_options_get_post_switches_model_and_saves(http):
    options = http.get("/sdapi/v1/options").json()
    assert "sd_model_checkpoint" in options and "api_max_width" in options
    r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny.safetensors", "CLIP_stop_at_last_layers": 2,
                                             "api_max_width": 99999})
    assert r.status_code == 200, r.text
    try:
        assert shared.sd_model.sd_checkpoint_info.model_name == "tiny"
        after = http.get("/sdapi/v1/options").json()
        assert after["CLIP_stop_at_last_layers"] == 2
        assert after["api_max_width"] == 4096  # restrict_api: the API cannot raise its own limits
        assert after["sd_model_checkpoint"].startswith("tiny.safetensors")
        with open(shared.config_filename, encoding="utf8") as f:
            saved = json.load(f)
        assert saved["CLIP_stop_at_last_layers"] == 2 and saved["sd_model_checkpoint"].startswith("tiny")
        info = json.loads(http.post("/sdapi/v1/txt2img", json={**FAST, "send_images": False}).json()["info"])
        assert info["sd_model_name"] == "tiny"
    finally:
        http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors",
                                             "CLIP_stop_at_last_layers": 1})
    assert shared.sd_model.sd_checkpoint_info.model_name == "other"


def test_unknown_script_is_422_with_a1111_message(http):
    body = assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "script_name": "X/Y/Z plot"}), 422,
                             "script_name")
    assert body["detail"] == "Script 'X/Y/Z plot' not found"
    body = assert_error_json(http.post("/sdapi/v1/txt2img", json={**FAST, "alwayson_scripts": {"animatediff": {}}}),
                             422, "alwayson_scripts")
    assert body["detail"] == "always on script animatediff not found"


def test_unload_reload_and_refresh(http):
    assert http.post("/sdapi/v1/refresh-checkpoints").json() is None
    assert http.post("/sdapi/v1/refresh-vae").json() is None
    assert http.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert shared.sd_model is None
    assert http.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert shared.sd_model is not None


def test_docs_and_openapi(http):
    assert http.get("/docs").status_code == 200
    schema = http.get("/openapi.json").json()
    assert "/sdapi/v1/txt2img" in schema["paths"] and "/internal/progress" in schema["paths"]
    assert_unique_operation_ids(schema)
    assert http.get("/sdapi/v1/txt2img").headers["content-type"].startswith("application/json")  # 405, as JSON


def test_mount_adds_routes_in_front_and_keeps_the_apps_internal_routes(server):
    app = FastAPI()

    @app.post("/internal/progress")
    def ui_progress() -> dict:
        return {"from": "ui"}

    @app.get("/{anything:path}")  # a catch-all, as gradio has
    def catch_all(anything: str) -> dict:
        return {"catch": anything}

    mount(app)
    with serving(app) as other, client(other) as c:
        assert c.post("/internal/progress", json={"id_task": "x"}).json() == {"from": "ui"}
        assert c.get("/internal/pending-tasks").json() == {"size": 0, "tasks": []}
        assert isinstance(c.get("/sdapi/v1/samplers").json(), list)
        assert c.get("/elsewhere").json() == {"catch": "elsewhere"}
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "width": 65})
        assert_error_json(r, 422, "width")  # the error JSON, even in an app without our handlers


def test_api_only_server_settings():
    from modules.api.server import DEFAULT_PORT, uvicorn_config

    app = FastAPI()
    config = uvicorn_config(app, shared.parser.parse_args(["--nowebui"]))
    assert (config.host, config.port, config.root_path) == ("127.0.0.1", DEFAULT_PORT, "") and DEFAULT_PORT == 7861
    config = uvicorn_config(app, shared.parser.parse_args(["--nowebui", "--port", "9000", "--listen",
                                                           "--subpath", "sd/", "--timeout-keep-alive", "5"]))
    assert (config.host, config.port, config.root_path, config.timeout_keep_alive) == ("0.0.0.0", 9000, "/sd", 5)


# --- POST /sdapi/v1/options checks every value before writing any -------------------------------------------


def _config_bytes() -> bytes | None:
    try:
        with open(shared.config_filename, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"eta_noise_seed_delta": 2**80}, "eta_noise_seed_delta",
     "1208925819614629174706176 is out of range (0 to 4294967295)"),
    ({"randn_source": "../../x"}, "randn_source", "'../../x' is not one of: GPU, CPU, NV"),
    ({"sd_checkpoints_limit": -5}, "sd_checkpoints_limit", "-5 is out of range (1 to 10)"),
    ({"sd_checkpoints_limit": 2.5}, "sd_checkpoints_limit", "expected a whole number"),
    ({"live_previews_enable": "maybe"}, "live_previews_enable", "expected true/false"),
    ({"show_progress_type": ["Full"]}, "show_progress_type", "is not text"),
    ({"eta_noise_seed_delta": None}, "eta_noise_seed_delta", "a value is required"),
    # a good value beside a bad one is not written either
    ({"CLIP_stop_at_last_layers": 2, "sd_checkpoints_limit": -5}, "sd_checkpoints_limit", "out of range"),
])
def test_options_post_refuses_a_bad_value_and_writes_nothing(http, body, field, reason):
    before, options_before = _config_bytes(), http.get("/sdapi/v1/options").json()
    error = assert_error_json(http.post("/sdapi/v1/options", json=body), 422, field)
    assert error["errors"] == f"{field}: {error['detail'][0]['msg']}" and reason in error["errors"]
    assert error["detail"][0]["loc"] == ["body", field]
    assert _config_bytes() == before
    assert http.get("/sdapi/v1/options").json() == options_before


def test_options_post_refuses_nan(http):
    r = http.post("/sdapi/v1/options", content=b'{"show_progress_every_n_steps": NaN}',
                  headers={"content-type": "application/json"})
    assert "expected a finite number" in assert_error_json(r, 422, "show_progress_every_n_steps")["errors"]
    assert shared.opts.show_progress_every_n_steps == 10


def test_refused_ensd_leaves_euler_a_working(http):
    assert_error_json(http.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 2**80}), 422,
                      "eta_noise_seed_delta")
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "sampler_name": "Euler a", "steps": 2, "send_images": False})
    assert r.status_code == 200, r.text
    # the same value as an override of one request is refused up front too, not as a failed job
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "sampler_name": "Euler a", "steps": 2,
                                             "override_settings": {"eta_noise_seed_delta": 2**80}})
    assert "out of range" in assert_error_json(r, 422, "override_settings.eta_noise_seed_delta")["errors"]


def test_options_post_saves_good_values_in_their_type(http):
    r = http.post("/sdapi/v1/options", json={"eta_noise_seed_delta": "31337", "randn_source": "CPU",
                                             "sd_checkpoints_limit": 2.0})
    assert r.status_code == 200, r.text
    try:
        with open(shared.config_filename, encoding="utf8") as f:
            saved = json.load(f)
        assert (saved["eta_noise_seed_delta"], saved["randn_source"], saved["sd_checkpoints_limit"]) == (31337, "CPU", 2)
        assert isinstance(saved["sd_checkpoints_limit"], int)
        r = http.post("/sdapi/v1/txt2img", json={**FAST, "sampler_name": "Euler a", "steps": 2, "send_images": False})
        assert r.status_code == 200, r.text
    finally:
        http.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0, "randn_source": "GPU",
                                             "sd_checkpoints_limit": 1})
    assert shared.opts.eta_noise_seed_delta == 0 and shared.opts.randn_source == "GPU"
