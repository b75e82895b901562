"""/sdapi/v1/depth, /sdapi/v1/depth-estimators and depth2img through /sdapi/v1/img2img, over real HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from depth_files import scene, write_estimator
from PIL import Image
from test_api_support import SETTINGS, assert_error_json, b64_png, client, decode, serving

from modules import paths, sd_models, shared
from modules.api.server import create_app
from modules.depth import estimators

CHECKPOINTS = {"sd2-depth.safetensors": {"family": "sd2", "variant": "depth", "seed": 2},
               "sd1.safetensors": {"family": "sd1", "seed": 3}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, isolated_data_dir):
    root = tmp_path_factory.mktemp("api")
    with isolated_data_dir(root, CHECKPOINTS, SETTINGS):
        paths.models_path = str(root / "models")
        write_estimator(root / "models", "midas_dpt_hybrid", seed=1)
        write_estimator(root / "models", "depth_anything_v2_small", seed=2)
        with serving(create_app(auth=None)) as running:
            yield running
    estimators.unload_all()


@pytest.fixture(scope="module")
def http(server):
    with client(server) as c:
        yield c


def use(name: str) -> None:
    sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def test_estimators_are_listed_with_availability(http):
    r = http.get("/sdapi/v1/depth-estimators")
    assert r.status_code == 200, r.text
    items = {item["name"]: item for item in r.json()}
    assert items["midas_dpt_hybrid"]["available"] and items["depth_anything_v2_small"]["available"]
    assert not items["midas_dpt_large"]["available"]
    assert items["midas_dpt_hybrid"]["default_resolution"] == 384


def test_depth_map_comes_back_as_16_bit_png_at_the_picture_size(http):
    r = http.post("/sdapi/v1/depth", json={"image": b64_png(scene(96, 64)), "estimator": "depth_anything_v2_small",
                                           "resolution": 112})
    assert r.status_code == 200, r.text
    body = r.json()
    depth = decode(body["depth"])
    assert depth.format == "PNG" and depth.mode in ("I;16", "I") and depth.size == (96, 64)
    values = np.asarray(depth, dtype=np.int64)
    assert values.min() == 0 and values.max() == 65535  # the whole 16-bit range
    grey, preview = decode(body["grey"]), decode(body["preview"])
    assert grey.mode == "L" and preview.mode == "RGB" and preview.size == (96, 64)
    assert "Depth estimator: depth_anything_v2_small" in body["info"]
    assert depth.info["parameters"] == body["info"]
    assert (body["width"], body["height"], body["saved"]) == (96, 64, [])
    inverted = http.post("/sdapi/v1/depth", json={"image": b64_png(scene(96, 64)), "resolution": 112,
                                                  "estimator": "depth_anything_v2_small", "invert": True}).json()
    flipped = np.asarray(decode(inverted["depth"]), dtype=np.int64)
    assert np.abs(flipped - (65535 - values)).max() <= 1


def test_near_far_clip_saturates_the_ends(http):
    r = http.post("/sdapi/v1/depth", json={"image": b64_png(scene(96, 64)), "near": 0.6, "far": 0.4,
                                           "resolution": 128, "save_images": True})
    assert r.status_code == 200, r.text
    values = np.asarray(decode(r.json()["depth"]), dtype=np.int64)
    assert (values == 0).mean() > 0.05 and (values == 65535).mean() > 0.05
    saved = r.json()["saved"]
    assert len(saved) == 3 and saved[0].replace("\\", "/").startswith("outputs/depth-images/")
    assert saved[1].endswith("-grey.png") and saved[2].endswith("-preview.png")
    on_disk = Image.open(f"{paths.data_path}/{saved[0]}")
    assert on_disk.mode in ("I;16", "I") and "Near clip: 0.6" in on_disk.info["parameters"]


def test_refusals_name_the_field(http):
    image = b64_png(scene(96, 64))
    assert_error_json(http.post("/sdapi/v1/depth", json={"image": image, "estimator": "zoe"}), 422, "estimator")
    assert_error_json(http.post("/sdapi/v1/depth", json={"image": image, "near": 0.2, "far": 0.5}), 422, "near")
    assert_error_json(http.post("/sdapi/v1/depth", json={"image": "not base64!"}), 422, "image")
    assert_error_json(http.post("/sdapi/v1/depth", json={"image": image, "resolution": 10}), 422, "resolution")
    missing = http.post("/sdapi/v1/depth", json={"image": image, "estimator": "midas_dpt_large"})
    body = assert_error_json(missing, 422)
    text = json.dumps(body).replace("\\\\", "/")
    assert "midas_dpt_large" in text and "models/depth/midas_dpt_large" in text
    assert paths.data_path.replace("\\", "/") not in text


def test_img2img_with_a_depth_model_uses_the_map_or_the_estimator(http):
    use("sd2-depth.safetensors")
    base = {"prompt": "a room", "steps": 3, "width": 96, "height": 64, "seed": 5, "denoising_strength": 0.8,
            "sampler_name": "Euler", "init_images": [b64_png(scene(96, 64))]}
    estimated = http.post("/sdapi/v1/img2img", json=base)
    assert estimated.status_code == 200, estimated.text
    assert "Depth estimator: midas_dpt_hybrid" in json.loads(estimated.json()["info"])["infotexts"][0]
    near_left = Image.fromarray(np.tile(np.linspace(255, 0, 96), (64, 1)).astype(np.uint8), "L")
    mapped = http.post("/sdapi/v1/img2img", json={**base, "depth_map": b64_png(near_left)})
    assert mapped.status_code == 200, mapped.text
    info = json.loads(mapped.json()["info"])["infotexts"][0]
    assert "Depth source: user map" in info and "Depth estimator" not in info
    assert mapped.json()["parameters"]["depth_map"] is None  # not echoed back, like init_images
    a = np.asarray(decode(estimated.json()["images"][0]), dtype=np.int16)
    b = np.asarray(decode(mapped.json()["images"][0]), dtype=np.int16)
    assert np.abs(a - b).mean() > 0.5
    other = http.post("/sdapi/v1/img2img", json={**base, "depth_estimator": "depth_anything_v2_small"})
    assert other.status_code == 200, other.text
    assert "Depth estimator: depth_anything_v2_small" in json.loads(other.json()["info"])["infotexts"][0]
    assert_error_json(http.post("/sdapi/v1/img2img", json={**base, "depth_estimator": "zoe"}), 422,
                      "depth_estimator")


def test_depth_fields_are_refused_without_a_depth_model(http):
    use("sd1.safetensors")
    try:
        r = http.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                 "init_images": [b64_png(scene(64, 64))],
                                                 "depth_map": b64_png(scene(64, 64))})
        body = assert_error_json(r, 422, "depth_map")
        assert "SD2 depth" in json.dumps(body)
    finally:
        shared.sd_model = None
