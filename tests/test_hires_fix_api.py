"""Hires. fix over the HTTP API: A1111's field names, the ✨ button's firstpass_image, latent-upscale-modes."""

from __future__ import annotations

import pytest
from test_api_support import CHECKPOINTS, FAST, SETTINGS, b64_png, client, decode, serving

from modules import infotext_utils
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
