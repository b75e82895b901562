"""Bad input over real HTTP: each class gets a 4xx with A1111's error JSON naming the field, never a 500, and
the server keeps serving afterwards."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, b64_png, client, decode, serving

from modules import shared
from modules.api.server import create_app

SMALL = b64_png(Image.new("RGB", (64, 64), (200, 30, 30)))


def _png_declaring(width: int, height: int) -> str:
    """A valid-looking PNG of a few bytes whose header claims width x height (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def _img2img(**kw) -> dict:
    return {**FAST, "init_images": [SMALL], **kw}


# (id, path, json body, status, field named in "errors")
CASES = [
    # images
    ("malformed base64", "/sdapi/v1/img2img", _img2img(init_images=["@@not base64@@"]), 422, "init_images.0"),
    ("bad padding", "/sdapi/v1/img2img", _img2img(init_images=[SMALL[:-3]]), 422, "init_images.0"),
    ("not an image", "/sdapi/v1/img2img", _img2img(init_images=[base64.b64encode(b"hello world").decode()]), 422,
     "init_images.0"),
    ("truncated image", "/sdapi/v1/img2img", _img2img(init_images=[SMALL, base64.b64encode(
        base64.b64decode(SMALL)[:60]).decode()]), 422, "init_images.1"),
    ("data url not base64", "/sdapi/v1/img2img", _img2img(init_images=["data:image/png,abc"]), 422, "init_images.0"),
    ("url", "/sdapi/v1/img2img", _img2img(init_images=["http://127.0.0.1:1/x.png"]), 422, "init_images.0"),
    ("bomb 60000x60000", "/sdapi/v1/img2img", _img2img(init_images=[_png_declaring(60000, 60000)]), 422,
     "init_images.0"),
    ("bomb over our limit", "/sdapi/v1/img2img", _img2img(init_images=[_png_declaring(8000, 7000)]), 422,
     "init_images.0"),
    ("bomb mask", "/sdapi/v1/img2img", _img2img(mask=_png_declaring(60000, 60000)), 422, "mask"),
    ("bad mask", "/sdapi/v1/img2img", _img2img(mask="!!!"), 422, "mask"),
    ("png-info not image", "/sdapi/v1/png-info", {"image": base64.b64encode(b"GIF89a-no").decode()}, 422, "image"),
    ("png-info bomb", "/sdapi/v1/png-info", {"image": _png_declaring(60000, 60000)}, 422, "image"),
    ("no init images", "/sdapi/v1/img2img", {**FAST}, 422, "init_images"),
    ("too many init images", "/sdapi/v1/img2img", _img2img(init_images=[SMALL] * 17), 422, "init_images"),
    # limits
    ("width over limit", "/sdapi/v1/txt2img", {**FAST, "width": 8192}, 422, "width"),
    ("height huge", "/sdapi/v1/txt2img", {**FAST, "height": 100000}, 422, "height"),
    ("width not multiple of 8", "/sdapi/v1/txt2img", {**FAST, "width": 100}, 422, "width"),
    ("width zero", "/sdapi/v1/txt2img", {**FAST, "width": 0}, 422, "width"),
    ("height negative", "/sdapi/v1/img2img", _img2img(height=-64), 422, "height"),
    ("steps over limit", "/sdapi/v1/txt2img", {**FAST, "steps": 100000}, 422, "steps"),
    ("steps zero", "/sdapi/v1/txt2img", {**FAST, "steps": 0}, 422, "steps"),
    ("batch size", "/sdapi/v1/txt2img", {**FAST, "batch_size": 1000}, 422, "batch_size"),
    ("n_iter", "/sdapi/v1/txt2img", {**FAST, "n_iter": 10000}, 422, "n_iter"),
    ("seed resize huge", "/sdapi/v1/txt2img", {**FAST, "seed_resize_from_w": 100000}, 422, "seed_resize_from_w"),
    ("denoising > 1", "/sdapi/v1/img2img", _img2img(denoising_strength=1.5), 422, "denoising_strength"),
    # wrong types and values
    ("steps text", "/sdapi/v1/txt2img", {**FAST, "steps": "many"}, 422, "steps"),
    ("width list", "/sdapi/v1/txt2img", {**FAST, "width": [64]}, 422, "width"),
    ("prompt object", "/sdapi/v1/txt2img", {**FAST, "prompt": {"a": 1}}, 422, "prompt"),
    ("styles string", "/sdapi/v1/txt2img", {**FAST, "styles": "abc"}, 422, "styles"),
    ("cfg NaN", "/sdapi/v1/txt2img", '{"cfg_scale": NaN}', 422, "cfg_scale"),
    ("cfg infinite", "/sdapi/v1/txt2img", '{"cfg_scale": -Infinity, "steps": 1}', 422, "cfg_scale"),
    ("seed too big", "/sdapi/v1/txt2img", {**FAST, "seed": 2**70}, 422, "seed"),
    ("seed negative", "/sdapi/v1/txt2img", {**FAST, "seed": -5}, 422, "seed"),
    ("init_images not list", "/sdapi/v1/img2img", _img2img(init_images=SMALL), 422, "init_images"),
    ("inpainting_fill", "/sdapi/v1/img2img", _img2img(inpainting_fill=7), 422, "inpainting_fill"),
    ("override type", "/sdapi/v1/txt2img", {**FAST, "override_settings": {"CLIP_stop_at_last_layers": "two"}}, 422,
     "override_settings.CLIP_stop_at_last_layers"),
    ("override not dict", "/sdapi/v1/txt2img", {**FAST, "override_settings": [1]}, 422, "override_settings"),
    ("infotext bad value", "/sdapi/v1/txt2img", {"infotext": "x\nSteps: lots, Sampler: Euler, Seed: 1"}, 422,
     "infotext"),
    ("prompt nested too deep", "/sdapi/v1/txt2img", {**FAST, "prompt": "(" * 500 + "x" + ")" * 500}, 422, "prompt"),
    ("negative nested too deep", "/sdapi/v1/txt2img", {**FAST, "negative_prompt": "[" * 300}, 422, "negative_prompt"),
    # unknown names
    ("unknown sampler", "/sdapi/v1/txt2img", {**FAST, "sampler_name": "Nope"}, 422, "sampler_name"),
    ("unknown sampler_index", "/sdapi/v1/txt2img", {"sampler_index": "Nope", "steps": 1}, 422, "sampler_index"),
    ("unknown scheduler", "/sdapi/v1/txt2img", {**FAST, "scheduler": "Nope"}, 422, "scheduler"),
    ("unknown model override", "/sdapi/v1/txt2img", {**FAST, "override_settings": {"sd_model_checkpoint": "nope"}},
     422, "override_settings.sd_model_checkpoint"),
    ("unknown vae override", "/sdapi/v1/txt2img", {**FAST, "override_settings": {"sd_vae": "nope.pt"}}, 422,
     "override_settings.sd_vae"),
    ("unknown refiner", "/sdapi/v1/txt2img", {**FAST, "refiner_checkpoint": "nope", "refiner_switch_at": 0.5}, 422,
     "refiner_checkpoint"),
    ("unknown model option", "/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, 422, "sd_model_checkpoint"),
    ("unknown option", "/sdapi/v1/options", {"no_such_setting": 1}, 422, "no_such_setting"),
    ("option type", "/sdapi/v1/options", {"CLIP_stop_at_last_layers": "abc"}, 422, "CLIP_stop_at_last_layers"),
    ("unknown script", "/sdapi/v1/img2img", _img2img(script_name="outpainting mk2"), 422, "script_name"),
    ("unknown alwayson", "/sdapi/v1/txt2img", {**FAST, "alwayson_scripts": {"x": {"args": []}}}, 422,
     "alwayson_scripts.x"),
    ("hires upscaler", "/sdapi/v1/txt2img", {**FAST, "enable_hr": True, "hr_upscaler": "nope"}, 422, "hr_upscaler"),
    ("hires sampler", "/sdapi/v1/txt2img", {**FAST, "enable_hr": True, "hr_sampler_name": "nope"}, 422,
     "hr_sampler_name"),
    ("hires checkpoint", "/sdapi/v1/txt2img", {**FAST, "enable_hr": True, "hr_checkpoint_name": "nope"}, 422,
     "hr_checkpoint_name"),
    ("hires too large", "/sdapi/v1/txt2img", {**FAST, "enable_hr": True, "hr_scale": 1000}, 422, "hr_scale"),
    ("face restoration", "/sdapi/v1/txt2img", {**FAST, "restore_faces": True}, 422, "restore_faces"),
    ("token merging above 0.9", "/sdapi/v1/txt2img", {**FAST, "override_settings": {"token_merging_ratio": 0.95}},
     422, "override_settings.token_merging_ratio"),
    ("token merging field", "/sdapi/v1/txt2img", {**FAST, "token_merging_ratio": -0.5}, 422, "token_merging_ratio"),
    ("firstpass image", "/sdapi/v1/txt2img", {**FAST, "firstpass_image": SMALL}, 422, "firstpass_image"),
    ("latent mask", "/sdapi/v1/img2img", _img2img(latent_mask=SMALL), 422, "latent_mask"),
    ("s_churn negative", "/sdapi/v1/txt2img", {**FAST, "s_churn": -1}, 422, "s_churn"),
    ("s_min_uncond text", "/sdapi/v1/txt2img", {**FAST, "s_min_uncond": "lots"}, 422, "s_min_uncond"),
    ("output folder override", "/sdapi/v1/img2img", _img2img(override_settings={"outdir_img2img_samples": "/x"}),
     422, "override_settings.outdir_img2img_samples"),
    ("samples_format option", "/sdapi/v1/options", {"samples_format": "exe"}, 422, "samples_format"),
    ("emphasis option", "/sdapi/v1/options", {"emphasis": "Loud"}, 422, "emphasis"),
    # other routes
    ("progress without id", "/internal/progress", {}, 422, "id_task"),
    ("interrupt unknown task", "/sdapi/v1/interrupt", {"id_task": "task(nope)"}, 404, "id_task"),
    ("body not an object", "/sdapi/v1/txt2img", [1, 2], 422, "body"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-bad"), CHECKPOINTS, SETTINGS):
        shared.opts.data["api_max_input_pixels"] = 25_000_000
        with serving(create_app(auth=None)) as running:
            yield running


@pytest.fixture(scope="module")
def http(server):
    with client(server) as c:
        yield c


@pytest.mark.parametrize("path, body, status, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_naming_the_field(http, path, body, status, field):
    if isinstance(body, str):  # JSON that Python's encoder would refuse to write (NaN, Infinity)
        r = http.post(path, content=body.encode(), headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    error = assert_error_json(r, status, field)
    assert "Traceback" not in r.text
    assert len(r.text) < 20_000  # base64 inputs are not echoed back in full
    assert error["error"]


def test_invalid_json(http):
    r = http.post("/sdapi/v1/txt2img", content=b'{"steps": ', headers={"content-type": "application/json"})
    assert_error_json(r, 422)


def test_body_over_the_limit_is_413(http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_body_mb", 1)
    big = {**FAST, "prompt": "x" * (2 * 1024 * 1024)}
    assert_error_json(http.post("/sdapi/v1/txt2img", json=big), 413)

    def chunks():  # no Content-Length: counted while it arrives
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = http.post("/sdapi/v1/txt2img", content=chunks(), headers={"content-type": "application/json"})
    assert_error_json(r, 413)


def test_image_pixel_limit_is_a_setting(http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_input_pixels", 1000)
    assert_error_json(http.post("/sdapi/v1/img2img", json=_img2img()), 422, "init_images.0")
    assert_error_json(http.post("/sdapi/v1/png-info", json={"image": SMALL}), 422, "image")


def test_limits_are_settings(http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_steps", 3)
    assert_error_json(http.post("/sdapi/v1/txt2img", json=FAST), 422, "steps")


def test_server_still_serves_after_bad_input(http):
    for _, path, body, _, _ in CASES[:5]:
        http.post(path, json=body)
    assert http.get("/internal/ping").json() == {}
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "steps": 2})
    assert r.status_code == 200
    assert decode(r.json()["images"][0]).size == (64, 64)
    r = http.post("/sdapi/v1/img2img", json=_img2img(steps=2))
    assert r.status_code == 200


def test_jpeg_and_webp_inputs_are_accepted(http):
    for fmt in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format=fmt)
        r = http.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
        assert r.status_code == 200, (fmt, r.text)


def test_failures_inside_the_job_get_a_status_that_says_whose_fault(http, monkeypatch):
    from modules.api import generation
    from modules.sd_models import NoCheckpointError

    for error, status in ((RuntimeError("engine bug"), 500), (NoCheckpointError("No checkpoints found"), 503),
                          (RuntimeError("CUDA out of memory"), 503), (ValueError("bad value"), 422)):
        def fail(self, kind, error=error):
            raise error

        monkeypatch.setattr(generation.Prepared, "run", fail)
        body = assert_error_json(http.post("/sdapi/v1/txt2img", json=FAST), status)
        assert "Traceback" not in body["errors"]
    monkeypatch.undo()
    assert http.post("/sdapi/v1/txt2img", json={**FAST, "steps": 1}).status_code == 200
