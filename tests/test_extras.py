"""The Extras tab's postprocessing (modules/postprocessing.py and the Upscale / GFPGAN / CodeFormer scripts):
sizes for Scale by / Scale to (crop or not), the second upscaler's blend, infotext and PNG chunks, the output
folder, batch uploads, batch from a directory and its refusals, and the two API routes with A1111's fields."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_api_support import assert_error_json, b64_png, client, decode, pixels, serving

from modules import paths, postprocessing, scripts_postprocessing, shared, upscaler
from modules.ui import extras as extras_ui

NEAREST, LANCZOS = Image.Resampling.NEAREST, Image.Resampling.LANCZOS


@pytest.fixture(autouse=True)
def builtin_upscalers(monkeypatch):
    """None, Lanczos and Nearest, the registry's first three entries (model upscalers are not needed here)."""
    entries = [s for cls in (upscaler.UpscalerNone, upscaler.UpscalerLanczos, upscaler.UpscalerNearest)
               for s in cls().scalers]
    monkeypatch.setattr(shared, "sd_upscalers", entries)
    monkeypatch.setattr(shared, "face_restorers", [])
    monkeypatch.setitem(shared.opts.data, "postprocessing_operation_order", [])


@pytest.fixture
def data_dir(tmp_path, isolated_data_dir):
    with isolated_data_dir(tmp_path, None, {"samples_format": "png"}) as root:
        yield root


def picture(w: int = 16, h: int = 12, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def args(**kwargs) -> list:
    return postprocessing.extras_args(**kwargs)


def run(image: Image.Image, save: bool = False, **kwargs) -> postprocessing.ExtrasResult:
    return postprocessing.postprocess([image], args(**kwargs), save_output=save)


def test_scale_by_makes_the_picture_that_many_times_larger_with_the_chosen_upscaler():
    src = picture()
    result = run(src, upscaling_resize=2, extras_upscaler_1="Nearest")
    out = result.images[0]
    assert out.size == (32, 24)
    assert np.array_equal(np.asarray(out), np.asarray(src.resize((32, 24), NEAREST)))
    assert result.infotexts == ["Postprocess upscale by: 2, Postprocess upscaler: Nearest"]


def test_scale_by_a_fraction_and_max_side_length():
    assert run(picture(), upscaling_resize=2.5, extras_upscaler_1="Lanczos").images[0].size == (40, 30)
    limited = run(picture(), upscaling_resize=4, extras_upscaler_1="Lanczos", max_side_length=32)
    assert limited.images[0].size == (32, 24)  # 64x48 would pass the limit of 32: the larger side is 32
    assert "Max side length: 32" in limited.infotexts[0]


def test_scale_to_with_crop_gives_exactly_that_size_and_says_so():
    result = run(picture(), resize_mode=1, upscaling_resize_w=20, upscaling_resize_h=20, upscaling_crop=True,
                 extras_upscaler_1="Nearest")
    assert result.images[0].size == (20, 20)
    assert result.infotexts == ["Postprocess upscale to: 20x20, Postprocess crop to fit: True, Postprocess upscaler: Nearest"]


def test_scale_to_without_crop_keeps_the_aspect_and_covers_the_size():
    result = run(picture(), resize_mode=1, upscaling_resize_w=20, upscaling_resize_h=20, upscaling_crop=False,
                 extras_upscaler_1="Nearest")
    assert result.images[0].size == (26, 20)  # 16x12 scaled by max(20/16, 20/12)
    assert "crop" not in result.infotexts[0]


def test_upscaler_1_none_leaves_the_picture_as_it_is():
    src = picture()
    result = run(src, upscaling_resize=2, extras_upscaler_1="None")
    assert result.images[0].size == src.size and result.infotexts == [""]


def test_second_upscaler_blends_in_by_its_visibility():
    src = picture()
    u1 = np.asarray(src.resize((32, 24), NEAREST), dtype=np.float64)
    u2 = np.asarray(run(src, upscaling_resize=2, extras_upscaler_1="Lanczos").images[0], dtype=np.float64)
    result = run(src, upscaling_resize=2, extras_upscaler_1="Nearest", extras_upscaler_2="Lanczos",
                 extras_upscaler_2_visibility=0.25)
    blended = np.asarray(result.images[0], dtype=np.float64)
    assert np.abs(blended - (u1 + 0.25 * (u2 - u1))).max() <= 1.0
    assert np.abs(blended - u1).max() > 10  # the blend changed pixels
    assert result.infotexts == ["Postprocess upscale by: 2, Postprocess upscaler: Nearest, "
                                "Postprocess upscaler 2: Lanczos"]
    plain = run(src, upscaling_resize=2, extras_upscaler_1="Nearest", extras_upscaler_2="Lanczos")
    assert np.array_equal(np.asarray(plain.images[0]), u1.astype(np.uint8))  # visibility 0: no blend


def test_unknown_upscaler_is_refused_by_name():
    with pytest.raises(ValueError, match="ESRGAN_9x"):
        run(picture(), extras_upscaler_1="ESRGAN_9x")


def _png_with_parameters(path, text="a cat\nSteps: 20, Sampler: Euler, Seed: 1"):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    picture().save(path, pnginfo=info)
    return path


def test_single_image_is_saved_to_the_extras_folder_with_a1111_chunks(data_dir, tmp_path):
    source = _png_with_parameters(tmp_path / "source.png")
    script_args = args(upscaling_resize=2, extras_upscaler_1="Nearest")
    result = postprocessing.run(postprocessing.SINGLE, str(source), None, "", "", True, script_args)
    saved = list((data_dir / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 1 and saved[0].name == "00000.png"
    with Image.open(saved[0]) as im:
        assert im.size == (32, 24)
        assert im.info["parameters"] == "a cat\nSteps: 20, Sampler: Euler, Seed: 1"  # kept from the source
        assert im.info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
        assert im.info["postprocessing"] == im.info["extras"]
    assert result.images[0].already_saved_as == str(saved[0])


def test_outdir_setting_moves_the_results(data_dir, tmp_path):
    shared.opts.data["outdir_extras_samples"] = str(tmp_path / "elsewhere")
    postprocessing.postprocess([picture()], args(upscaling_resize=1, extras_upscaler_1="Nearest"))
    assert len(list((tmp_path / "elsewhere").glob("*.png"))) == 1


def test_batch_process_keeps_the_uploaded_names(data_dir, tmp_path):
    uploads = tmp_path / "up"
    uploads.mkdir()
    files = [str(_png_with_parameters(uploads / name)) for name in ("first.png", "second.png")]
    result = postprocessing.run(postprocessing.BATCH, None, files, "", "", True,
                                args(upscaling_resize=2, extras_upscaler_1="Nearest"))
    assert [im.size for im in result.images] == [(32, 24), (32, 24)]
    names = sorted(p.name for p in (data_dir / "outputs" / "extras-images").glob("*.png"))
    assert names == ["first.png", "second.png"]


def test_batch_with_an_unreadable_upload_names_it(data_dir, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="notes.png"):
        postprocessing.run(postprocessing.BATCH, None, [str(bad)], "", "", True, args(extras_upscaler_1="Nearest"))


def test_batch_from_directory_inside_the_data_dir(data_dir):
    folder = data_dir / "in"
    folder.mkdir()
    picture().save(folder / "one.png")
    (folder / "readme.txt").write_text("hello")
    (folder / "broken.png").write_text("not a picture")
    result = postprocessing.run(postprocessing.DIRECTORY, None, None, "in", "out", False,
                                args(upscaling_resize=2, extras_upscaler_1="Nearest"))
    assert result.images == []  # "Show result images" off
    assert [p.name for p in (data_dir / "out").glob("*.png")] == ["one.png"]
    assert "broken.png" in result.comments


@pytest.mark.parametrize("flags, message", [
    (["--listen"], "--allow-batch-dirs-when-listening"),
    (["--hide-ui-dir-config"], "--hide-ui-dir-config"),
])
def test_batch_from_directory_refused_where_the_server_does_not_allow_it(data_dir, monkeypatch, flags, message):
    (data_dir / "in").mkdir()
    picture().save(data_dir / "in" / "one.png")
    ns = argparse.Namespace(**{**vars(shared.cmd_opts), **{f.lstrip("-").replace("-", "_"): True for f in flags}})
    monkeypatch.setattr(shared, "cmd_opts", ns)
    with pytest.raises(ValueError, match=message):
        extras_ui.make_work(postprocessing.DIRECTORY, None, None, "in", "", True,
                            args(extras_upscaler_1="Nearest"))


def test_batch_from_directory_outside_the_allowed_folders_is_refused(data_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    picture().save(outside / "one.png")
    with pytest.raises(ValueError, match="must be inside"):
        extras_ui.make_work(postprocessing.DIRECTORY, None, None, str(outside), "", True,
                            args(extras_upscaler_1="Nearest"))


def test_page_refuses_an_unknown_upscaler_before_queueing(tmp_path):
    source = _png_with_parameters(tmp_path / "s.png")
    with pytest.raises(ValueError, match="could not find upscaler named Gone"):
        extras_ui.make_work(postprocessing.SINGLE, str(source), None, "", "", True, args(extras_upscaler_1="Gone"))
    with pytest.raises(ValueError, match="Add an image first"):
        extras_ui.make_work(postprocessing.SINGLE, None, None, "", "", True, args(extras_upscaler_1="Nearest"))


class FakeRestorer:
    """Stands in for engineer C's restorers: inverts the picture and remembers the sizes it saw."""

    def __init__(self, name: str):
        self._name, self.seen, self.weights = name, [], []

    def name(self) -> str:
        return self._name

    def restore(self, np_image: np.ndarray, w: float | None = None) -> np.ndarray:
        self.seen.append(np_image.shape[:2])
        self.weights.append(w)
        return 255 - np_image


def test_face_restoration_without_a_model_is_refused_by_name():
    with pytest.raises(ValueError, match="no GFPGAN model in models/GFPGAN: put GFPGANv1.4.pth there"):
        run(picture(), extras_upscaler_1="None", gfpgan_visibility=1)
    with pytest.raises(ValueError, match="CodeFormer"):
        run(picture(), extras_upscaler_1="None", codeformer_visibility=1)


def test_face_restorers_blend_by_visibility_and_write_their_keys(monkeypatch):
    gfpgan, codeformer = FakeRestorer("GFPGAN"), FakeRestorer("CodeFormer")
    monkeypatch.setattr(shared, "face_restorers", [gfpgan, codeformer])
    src = picture()
    result = run(src, extras_upscaler_1="None", gfpgan_visibility=0.5)
    expected = np.asarray(src, dtype=np.float64) * 0.5 + (255 - np.asarray(src, dtype=np.float64)) * 0.5
    assert np.abs(np.asarray(result.images[0], dtype=np.float64) - expected).max() <= 1
    assert result.infotexts == ["GFPGAN visibility: 0.5"]
    result = run(src, extras_upscaler_1="None", codeformer_visibility=1, codeformer_weight=0.3)
    assert np.array_equal(np.asarray(result.images[0]), 255 - np.asarray(src))
    assert codeformer.weights == [0.3]
    assert result.infotexts == ["CodeFormer visibility: 1, CodeFormer weight: 0.3"]


def test_operation_order_option_and_upscale_first(monkeypatch):
    gfpgan = FakeRestorer("GFPGAN")
    monkeypatch.setattr(shared, "face_restorers", [gfpgan])
    monkeypatch.setitem(shared.opts.data, "postprocessing_operation_order", ["GFPGAN", "Upscale"])
    kwargs = dict(upscaling_resize=2, extras_upscaler_1="Nearest", gfpgan_visibility=1)
    run(picture(), **kwargs)
    assert gfpgan.seen == [(12, 16)]  # restored before the upscale, as the option says
    with postprocessing.upscale_order(True):
        run(picture(), **kwargs)
    assert gfpgan.seen[-1] == (24, 32)  # upscale_first: after it
    assert [s.name for s in scripts_postprocessing.runner().scripts_in_preferred_order()][:2] == ["GFPGAN", "Upscale"]


# --- API -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    from modules.api.server import create_app

    with isolated_data_dir(tmp_path_factory.mktemp("extras-api"), None, {"samples_format": "png"}):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def test_api_single_image_with_a1111_fields(http):
    src = picture()
    body = {"image": b64_png(src, parameters="a dog\nSteps: 5, Sampler: Euler, Seed: 3"), "resize_mode": 0,
            "upscaling_resize": 2, "upscaler_1": "Nearest", "upscaler_2": "Lanczos",
            "extras_upscaler_2_visibility": 0, "show_extras_results": True, "gfpgan_visibility": 0,
            "codeformer_visibility": 0, "codeformer_weight": 0, "upscaling_crop": True, "upscale_first": False}
    r = http.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"html_info", "image"}
    image = decode(out["image"])
    assert image.size == (32, 24)
    assert np.array_equal(pixels(image), pixels(src.resize((32, 24), NEAREST)))
    assert "Postprocess upscale by: 2, Postprocess upscaler: Nearest" in out["html_info"]
    assert image.info["parameters"].startswith("a dog")
    assert image.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"


def test_api_batch_images_scale_to(http):
    body = {"imageList": [{"data": b64_png(picture(seed=i)), "name": f"p{i}.png"} for i in range(2)],
            "resize_mode": 1, "upscaling_resize_w": 40, "upscaling_resize_h": 20, "upscaling_crop": True,
            "upscaler_1": "Lanczos"}
    r = http.post("/sdapi/v1/extra-batch-images", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"html_info", "images"}
    assert [decode(x).size for x in out["images"]] == [(40, 20), (40, 20)]


@pytest.mark.parametrize("field, value", [("upscaler_1", "4x-Nothing"), ("upscaler_2", "Missing 2x")])
def test_api_unknown_upscaler_is_a_422_naming_it(http, field, value):
    r = http.post("/sdapi/v1/extra-single-image", json={"image": b64_png(picture()), "upscaler_1": "Nearest",
                                                         field: value})
    assert_error_json(r, 422, field)
    assert value in r.text


def test_api_refusals_name_the_field(http):
    image = b64_png(picture())
    assert_error_json(http.post("/sdapi/v1/extra-single-image", json={"image": image, "gfpgan_visibility": 1}),
                      422, "gfpgan_visibility")
    assert_error_json(http.post("/sdapi/v1/extra-single-image", json={"image": image, "resize_mode": 2}), 422,
                      "resize_mode")
    assert_error_json(http.post("/sdapi/v1/extra-single-image", json={"image": "not base64!"}), 422, "image")
    assert_error_json(http.post("/sdapi/v1/extra-single-image", json={}), 422, "image")
    shared.opts.data["api_max_width"] = 64
    try:
        r = http.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "Nearest",
                                                             "upscaling_resize": 8})
        assert_error_json(r, 422, "upscaling_resize")
    finally:
        shared.opts.data.pop("api_max_width", None)
    assert_error_json(http.post("/sdapi/v1/extra-batch-images", json={"imageList": []}), 422, "imageList")


def test_api_does_not_save(http):
    r = http.post("/sdapi/v1/extra-single-image", json={"image": b64_png(picture()), "upscaler_1": "Nearest"})
    assert r.status_code == 200
    assert not list(Path(paths.data_path).glob("outputs/**/*.png"))  # A1111's API returns, never saves
