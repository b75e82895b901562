"""Hires. fix over the HTTP API: A1111's field names, the ✨ button's firstpass_image, latent-upscale-modes."""

from __future__ import annotations

import pytest
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, b64_png, client, decode, serving

from modules import infotext_utils, request_validation, shared
from modules.api import models
from modules.api.server import create_app


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def test_txt2img_with_enable_hr_and_a1111_field_names(http):
    body = {**FAST, "steps": 2, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent (bicubic)",
            "hr_second_pass_steps": 2, "denoising_strength": 0.5, "hr_sampler_name": "DPM++ 2M",
            "hr_prompt": "a blue square", "hr_cfg": 4.0}
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    image = decode(r.json()["images"][0])
    assert image.size == (96, 96)
    params = infotext_utils.parse_generation_parameters(image.info["parameters"])
    assert params["Hires upscale"] == "1.5" and params["Hires upscaler"] == "Latent (bicubic)"
    assert params["Hires sampler"] == "DPM++ 2M" and params["Hires prompt"] == "a blue square"
    assert params["Hires CFG Scale"] == "4.0" and params["Denoising strength"] == "0.5"
    again = http.post("/sdapi/v1/txt2img", json={**body, "enable_hr": True, "firstpass_image": b64_png(image)})
    assert again.status_code == 200, again.text
    assert decode(again.json()["images"][0]).size == (96, 96)  # as A1111: the target comes from width/height


def test_latent_upscale_modes_route(http):
    names = [m["name"] for m in http.get("/sdapi/v1/latent-upscale-modes").json()]
    assert names == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]


def test_the_work_limit_counts_the_hires_pass(http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_work", 1)  # megapixel-steps
    first = {**FAST, "steps": 200}  # 64 × 64 × 200 / 1e6 = 0.82: within the limit alone
    hires = {**first, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 20}  # + 128 × 128 × 20 / 1e6
    assert request_validation.work_of(models.StableDiffusionTxt2ImgProcessingAPI(**first)) == pytest.approx(0.8192)
    assert request_validation.work_of(models.StableDiffusionTxt2ImgProcessingAPI(**hires)) == pytest.approx(1.1469,
                                                                                                          abs=1e-4)
    body = assert_error_json(http.post("/sdapi/v1/txt2img", json=hires), 413)
    assert "1.15 megapixel-steps" in body["detail"] and "hires pass included" in body["detail"]
    assert "(setting api_max_work)" in body["detail"]
    # Hires steps 0 are the first pass's steps again, at four times the pixels; batch and count multiply it too.
    assert_error_json(http.post("/sdapi/v1/txt2img", json={**hires, "hr_second_pass_steps": 0, "steps": 50}), 413,
                      "api_max_work")
    small = {**FAST, "steps": 2, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "batch_size": 4}
    assert http.post("/sdapi/v1/txt2img", json=small).status_code == 200
    assert_error_json(http.post("/sdapi/v1/txt2img", json={**small, "hr_second_pass_steps": 16}), 413)


def test_sd_upscale_script_over_the_api_with_the_upscaler_by_name(http):
    from PIL import Image

    from modules import scripts

    scripts.load_scripts()  # the built-in scripts, as the app loads them at start-up
    picture = Image.new("RGB", (64, 48), (30, 90, 200))
    body = {**FAST, "steps": 2, "init_images": [b64_png(picture)], "denoising_strength": 0.3,
            "script_name": "SD upscale", "script_args": [None, 16, "Nearest", 2]}
    r = http.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    image = decode(r.json()["images"][0])
    assert image.size == (128, 96)  # the picture, twice the size, redrawn in 64x64 tiles
    params = infotext_utils.parse_generation_parameters(image.info["parameters"])
    assert params["SD upscale upscaler"] == "Nearest" and params["SD upscale overlap"] == "16"
    refused = http.post("/sdapi/v1/img2img", json={**body, "script_args": [None, 16, "4x-NoSuchModel", 2]})
    assert refused.status_code == 422 and "SD upscale: unknown upscaler '4x-NoSuchModel'" in refused.text
