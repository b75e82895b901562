"""ControlNet units through `alwayson_scripts.controlnet.args`, as sd-webui-controlnet's API clients send them."""

from __future__ import annotations

import pytest
from controlnet_files import write_controlnet
from PIL import Image, ImageDraw
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, b64_png, client, decode, serving

from modules import infotext_utils, scripts
from modules.api.server import create_app
from modules.controlnet import files, loading


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-cn"), CHECKPOINTS, SETTINGS) as root:
        folder = root / "models" / "ControlNet"
        folder.mkdir(parents=True, exist_ok=True)
        write_controlnet(folder / "control_tiny_canny.pth", "sd1", "original", seed=1)  # a pickle, as 1.1 ships
        write_controlnet(folder / "control_tiny_xl.safetensors", "sdxl", "original", seed=4)
        files.refresh()
        scripts.load_scripts()
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c
    loading.unload_all()


def square_b64() -> str:
    picture = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(picture).rectangle([16, 16, 48, 48], fill="white")
    return b64_png(picture)


def body(*units: dict, **kw) -> dict:
    return {**FAST, **kw, "alwayson_scripts": {"controlnet": {"args": list(units)}}}


def test_an_old_style_client_unit(http):
    # the shape of the extension's wiki example: input_image, lowvram, string enums, no "enabled" key
    model = files.find("control_tiny_canny").title
    unit = {"input_image": square_b64(), "module": "canny", "model": model, "weight": 1.0,
            "resize_mode": "Crop and Resize", "lowvram": False, "processor_res": 64, "threshold_a": 100,
            "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
            "pixel_perfect": False}
    r = http.post("/sdapi/v1/txt2img", json=body(unit))
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 2  # the picture and the detected map, as the extension returns them
    params = infotext_utils.parse_generation_parameters(decode(images[0]).info["parameters"])
    assert params["ControlNet 0"].startswith(f"Module: canny, Model: {model}, Weight: 1.0, Resize Mode: Crop and "
                                             "Resize, Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0")
    assert decode(images[1]).size == (64, 64)


def test_a_new_style_client_unit_with_integer_enums_and_image_dict(http):
    unit = {"enabled": True, "image": {"image": square_b64(), "mask": None}, "module": "none",
            "model": "control_tiny_canny", "resize_mode": 0, "control_mode": 1, "pixel_perfect": True}
    r = http.post("/sdapi/v1/txt2img", json=body(unit))
    assert r.status_code == 200, r.text
    params = infotext_utils.parse_generation_parameters(decode(r.json()["images"][0]).info["parameters"])
    assert "Resize Mode: Just Resize" in params["ControlNet 0"]
    assert "Control Mode: My prompt is more important" in params["ControlNet 0"]
    assert len(r.json()["images"]) == 1  # module "none" draws no map


def test_disabled_units_and_empty_slots_do_nothing(http):
    plain = http.post("/sdapi/v1/txt2img", json=FAST)
    off = http.post("/sdapi/v1/txt2img", json=body({"enabled": False, "module": "canny", "model": "nothing"}, None))
    assert plain.status_code == off.status_code == 200, off.text
    assert plain.json()["images"] == off.json()["images"]


@pytest.mark.parametrize(("unit", "fragment"), [
    ({"module": "canny", "model": "control_tiny_canny", "input_image": "not base64!"}, "not valid base64"),
    ({"module": "canny", "model": "control_tiny_canny", "weight": 5}, "weight: 5"),
    ({"module": "canny", "model": "control_tiny_canny", "resize_mode": "Stretch"}, "resize_mode"),
    ({"module": "canny", "model": "control_tiny_canny", "guidance_start": 0.8, "guidance_end": 0.2},
     "guidance_start"),
    ({"module": "canny", "model": "control_tiny_canny", "advanced_weighting": [1.0] * 13},
     "advanced_weighting is not supported"),
    ({"module": "canny", "model": "control_tiny_canny", "surprise": 1}, "unknown field 'surprise'"),
])
def test_bad_units_are_refused_before_queueing(http, unit, fragment):
    detail = assert_error_json(http.post("/sdapi/v1/txt2img", json=body(unit)), 422)
    assert fragment in str(detail)


@pytest.mark.parametrize(("unit", "fragment"), [
    ({"model": "control_tiny_xl"}, "made for SDXL, the loaded model is SD1"),
    ({"model": "no_such_model"}, "ControlNet 0: model 'no_such_model' not found"),
    ({"module": "no_such_module"}, "no_such_module"),
])
def test_units_that_cannot_run_fail_with_a_clear_message(http, unit, fragment):
    full = {"input_image": square_b64(), "module": "canny", "model": "control_tiny_canny", **unit}
    r = http.post("/sdapi/v1/txt2img", json=body(full))
    assert r.status_code == 422, r.text
    assert fragment in r.text
    assert http.post("/sdapi/v1/txt2img", json=FAST).status_code == 200  # the server keeps serving
