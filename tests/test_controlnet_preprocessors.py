"""ControlNet preprocessor registry and the model-free preprocessors: what a user sees in the detected map, the
extension's names, aliases and sliders, and refusals by name."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from modules import paths
from modules.controlnet import preprocessors as registry
from modules.controlnet import preprocessors_basic, preprocessors_depth
from modules.controlnet.preprocessors import MissingWeights, Preprocessor, Slider, UnknownPreprocessor

INVERT = "invert (from white bg & black line)"
LINEART_STANDARD = "lineart_standard (from white bg & black line)"
MODEL_FREE = ["none", INVERT, "canny", "threshold", "scribble", "scribble_xdog", LINEART_STANDARD, "tile_resample",
              "blur_gaussian", "t2ia_color_grid", "shuffle", "recolor_luminance", "recolor_intensity", "inpaint_only"]
USES_RESOLUTION = ["canny", "threshold", "scribble", "scribble_xdog", LINEART_STANDARD, "blur_gaussian",
                   "t2ia_color_grid", "shuffle"]


def square(height: int = 96, width: int = 128, top: int = 24, left: int = 32, side: int = 48) -> np.ndarray:
    """A white square on black, RGB."""
    image = np.zeros((height, width, 3), np.uint8)
    image[top:top + side, left:left + side] = 255
    return image


def photo(height: int = 80, width: int = 120, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a dark disc: something with both flat areas and edges."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width * 200 + 30, yy / height * 180 + 40, np.full_like(xx, 120)], axis=2)
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 4) ** 2
    image[disc] = (20, 15, 10)
    noise = np.random.default_rng(seed).normal(0, 2, image.shape)
    return (image + noise).clip(0, 255).astype(np.uint8)


# --- every built-in -------------------------------------------------------------------------------------------

def test_builtins_are_listed_in_the_extensions_order():
    names = registry.names()
    assert names[:2] == ["none", INVERT]
    assert set(MODEL_FREE) <= set(names)
    assert names[2:] == sorted(names[2:])
    for left_out in ("reference_only", "inpaint_only+lama", "tile_colorfix"):
        assert left_out not in names


@pytest.mark.parametrize("name", MODEL_FREE)
def test_output_is_rgb_uint8_at_the_processor_resolution(name):
    image = photo(80, 120)
    result = registry.run(name, image, resolution=128)
    assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
    assert result.flags.c_contiguous
    if name in USES_RESOLUTION:
        assert result.shape[:2] == (128, 192)  # short side = resolution, aspect kept
    else:
        assert result.shape[:2] == image.shape[:2]
    assert registry.get(name).model_free


def test_none_and_inpaint_only_hand_the_image_back_without_sharing_it():
    image = photo()
    for name in ("none", "inpaint_only"):
        result = registry.run(name, image)
        assert np.array_equal(result, image)
        result[:] = 0
        assert image.any()  # the caller's image is untouched


# --- what a user sees ---------------------------------------------------------------------------------------

def test_canny_finds_the_edges_of_a_drawn_square():
    result = registry.run("canny", square(), resolution=96)  # the input's own size: no resampling
    edges = result[:, :, 0] > 0
    assert set(np.unique(result)) == {0, 255}
    assert np.array_equal(result[:, :, 0], result[:, :, 1])
    ys, xs = np.nonzero(edges)
    assert abs(ys.min() - 24) <= 1 and abs(ys.max() - 71) <= 1
    assert abs(xs.min() - 32) <= 1 and abs(xs.max() - 79) <= 1
    assert not edges[30:66, 38:74].any()  # inside the square
    assert not edges[:20].any() and not edges[76:].any()  # far background
    for side in (edges[47, 31:34], edges[47, 78:81], edges[23:26, 55], edges[70:73, 55]):
        assert side.any()  # each side of the square has its edge


def test_canny_thresholds_decide_which_edges_count():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 60  # a faint step
    assert registry.run("canny", image, 64, 10, 20).any()
    assert not registry.run("canny", image, 64, 250, 255).any()


def test_invert_inverts_and_answers_to_its_old_name():
    image = photo()
    assert np.array_equal(registry.run(INVERT, image), 255 - image)
    assert np.array_equal(registry.run("invert", image), 255 - image)


def test_transparent_pixels_count_as_white_like_the_extension():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, 3] = 255  # top half opaque black, bottom half transparent
    result = registry.run("none", rgba)
    assert (result[:4] == 0).all() and (result[4:] == 255).all()
    grey = np.full((8, 8), 200, np.uint8)
    assert (registry.run("none", grey) == 200).all()


def test_threshold_is_binary_and_follows_its_slider():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    image = np.repeat(ramp[:, :, None], 3, axis=2)
    result = registry.run("threshold", image, resolution=64, threshold_a=100)[:, :, 0]
    assert set(np.unique(result)) == {0, 255}
    white = result.mean(axis=0) > 127
    # the image was scaled to 64 rows; its columns keep their left-to-right order, so the cut is a step
    columns = np.nonzero(white)[0]
    assert columns.size and (np.diff(columns) == 1).all() and columns[-1] == white.size - 1
    higher = registry.run("threshold", image, resolution=64, threshold_a=200)[:, :, 0]
    assert (higher > 0).sum() < (result > 0).sum()


def test_scribble_turns_dark_strokes_into_white_lines():
    drawing = np.full((64, 64, 3), 255, np.uint8)
    drawing[30:34, 8:56] = 0
    result = registry.run("scribble", drawing, resolution=64)
    assert (result[31, 10:54] == 255).all() and (result[5:20] == 0).all()


def test_scribble_xdog_draws_binary_lines_at_the_edges_only():
    result = registry.run("scribble_xdog", square(), resolution=96, threshold_a=32)[:, :, 0]
    assert set(np.unique(result)) <= {0, 255} and result.any()
    assert not result[40:56, 48:64].any()  # flat middle of the square
    assert not result[:10].any()  # flat background
    fewer = registry.run("scribble_xdog", square(), resolution=96, threshold_a=64)[:, :, 0]
    assert (fewer > 0).sum() < (result > 0).sum()


def test_lineart_standard_makes_a_black_line_on_white_a_bright_line_on_black():
    drawing = np.full((96, 96, 3), 255, np.uint8)
    drawing[46:50, 10:86] = 0
    result = registry.run(LINEART_STANDARD, drawing, resolution=96)[:, :, 0]
    assert result[47, 20:76].min() > 100
    assert result[5:30].max() < 10 and result[70:].max() < 10
    blank = registry.run(LINEART_STANDARD, np.full((64, 64, 3), 255, np.uint8), resolution=64)
    assert not blank.any()


def test_tile_resample_downsamples_by_its_rate():
    image = photo(80, 120)
    assert registry.run("tile_resample", image, threshold_a=2.0).shape[:2] == (40, 60)
    assert registry.run("tile_resample", image, threshold_a=4.0).shape[:2] == (20, 30)
    assert np.array_equal(registry.run("tile_resample", image), image)  # default rate 1: unchanged
    assert registry.run("tile_resample", image, threshold_a=100).shape[:2] == (10, 15)  # clamped to 8


def test_blur_gaussian_blurs_by_sigma():
    image = square(64, 64, 16, 16, 32)
    sharp = registry.run("blur_gaussian", image, resolution=64, threshold_a=0.01)
    blurred = registry.run("blur_gaussian", image, resolution=64, threshold_a=8)
    assert np.array_equal(sharp, image)
    assert 0 < blurred[32, 16, 0] < 255 and blurred.std() < image.std()


def test_color_grid_is_flat_in_cells_of_64_pixels():
    result = registry.run("t2ia_color_grid", photo(128, 192), resolution=128)
    assert result.shape[:2] == (128, 192)
    for top in (0, 64):
        for left in (0, 64, 128):
            cell = result[top:top + 64, left:left + 64].reshape(-1, 3)
            assert (cell == cell[0]).all()
    assert not (result == result[0, 0]).all()  # but not one colour overall


def test_recolor_gives_grey_and_gamma_darkens():
    image = photo()
    for name in ("recolor_luminance", "recolor_intensity"):
        plain = registry.run(name, image)
        assert (plain[:, :, 0] == plain[:, :, 1]).all() and (plain[:, :, 1] == plain[:, :, 2]).all()
        assert registry.run(name, image, threshold_a=2.0).mean() < plain.mean()
    # intensity is HSV's value: the brightest channel
    assert np.abs(registry.run("recolor_intensity", image)[:, :, 0].astype(int) - image.max(axis=2)).max() <= 1


def test_shuffle_is_seeded_and_deterministic():
    image = photo(96, 96)
    first = registry.run("shuffle", image, resolution=96)
    assert np.array_equal(first, registry.run("shuffle", image, resolution=96))
    assert not np.array_equal(first, image)
    assert np.abs(first.astype(int) - image.astype(int)).mean() > 10  # the layout moved
    # colours come from the image: remap only interpolates between its pixels
    assert first.min() >= image.min() and first.max() <= image.max()
    a = preprocessors_basic.content_shuffle(image, 96, seed=1)
    assert np.array_equal(a, preprocessors_basic.content_shuffle(image, 96, seed=1))
    assert not np.array_equal(a, preprocessors_basic.content_shuffle(image, 96, seed=2))


# --- names, aliases, sliders ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("alias", "name"), [
    ("depth", "depth_midas"), ("INVERT", INVERT), ("Canny", "canny"), ("color", "t2ia_color_grid"),
    ("lineart_standard", LINEART_STANDARD), (" threshold ", "threshold"), (LINEART_STANDARD.upper(), LINEART_STANDARD),
])
def test_get_by_name_or_alias_case_insensitive(alias, name):
    assert registry.get(alias).name == name


def test_api_names_use_the_extensions_internal_keys():
    internal = registry.api_names(alias_names=False)
    assert "depth" in internal and "invert" in internal and "lineart_standard" in internal and "color" in internal
    assert "scribble" in internal and "canny" in internal
    assert "depth_midas" in registry.api_names(alias_names=True)
    assert registry.api_names() == registry.names()


def test_sliders_are_clamped_and_negative_means_default():
    image = square()
    assert np.array_equal(registry.run("canny", image, 96, 1000, 1000), registry.run("canny", image, 96, 255, 255))
    assert np.array_equal(registry.run("canny", image, 96, -1, -1), registry.run("canny", image, 96, 100, 200))
    assert np.array_equal(registry.run("canny", image, 96), registry.run("canny", image, 96, 100, 200))
    assert registry.run("threshold", image, resolution=8).shape[:2] == (64, 85)  # 64 at least
    assert registry.run("threshold", image, resolution=-1).shape[:2] == (512, 683)  # the default
    assert min(registry.run("threshold", image[:10, :10], resolution=10**6).shape[:2]) == 2048  # at most
    with pytest.raises(ValueError, match="Canny Low Threshold"):
        registry.run("canny", image, 96, float("nan"))


def test_unknown_name_is_refused_by_name():
    with pytest.raises(UnknownPreprocessor) as caught:
        registry.run("no_such_thing", square())
    message = str(caught.value)
    assert message.startswith('ControlNet preprocessor "no_such_thing" does not exist; known: none, ')
    assert "canny" in message
    assert isinstance(caught.value, KeyError)


def test_bad_images_are_refused_by_preprocessor_name():
    with pytest.raises(ValueError, match='"canny".*uint8'):
        registry.run("canny", square().astype(np.float32))
    with pytest.raises(ValueError, match='"canny".*HxW'):
        registry.run("canny", np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ValueError, match='"canny".*largest side'):
        registry.run("canny", np.zeros((1, registry.MAX_IMAGE_SIDE + 1), np.uint8))
    with pytest.raises(ValueError, match='"canny": a 4000x2 image scaled to resolution 512 would be longer'):
        registry.run("canny", np.zeros((2, 4000, 3), np.uint8))  # 1024000 pixels long: refused, not allocated
    assert registry.run("tile_resample", np.zeros((2, 4000, 3), np.uint8)).shape == (2, 4000, 3)  # no resizing


def test_register_replaces_by_name_and_refuses_taken_names():
    def half(image, resolution, a, b):
        return image // 2

    p = Preprocessor("test_half", "Test Type", half, resolution=None, aliases=("test_halve",),
                     slider_a=Slider("Strength", 0, 1, 0.5, 0.1))
    registry.register(p)
    try:
        assert registry.run("test_halve", np.full((4, 4, 3), 200, np.uint8)).max() == 100
        registry.register(p)  # again: replaced, no error
        with pytest.raises(ValueError, match='"canny".*already used by "canny"'):
            registry.register(Preprocessor("other", "Canny", half, aliases=("canny",)))
        types_ = registry.control_types()
        assert types_["Test Type"]["module_list"] == ["none", "test_half"]
        assert registry.module_detail()["test_half"]["sliders"] == [
            None, {"name": "Strength", "value": 0.5, "min": 0, "max": 1, "step": 0.1}]
    finally:
        registry.unregister("test_half")
    assert "test_half" not in registry.names()
    with pytest.raises(UnknownPreprocessor):
        registry.get("test_halve")


def test_module_detail_has_the_extensions_shape():
    detail = registry.module_detail()
    assert list(detail) == registry.names()
    assert detail["none"] == {"model_free": False, "sliders": []}
    assert detail["canny"]["sliders"] == [
        {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]
    assert detail["tile_resample"]["sliders"] == [
        None, {"name": "Down Sampling Rate", "value": 1.0, "min": 1.0, "max": 8.0, "step": 0.01}]
    assert detail["threshold"]["sliders"][1]["name"] == "Binarization Threshold"
    # "model_free" there means "needs no ControlNet model": none of ours
    assert not any(entry["model_free"] for entry in detail.values())
    internal = registry.module_detail(alias_names=False)
    assert "depth" in internal and "invert" in internal and "depth_midas" not in internal


def test_control_types_have_the_extensions_shape():
    types_ = registry.control_types()
    assert list(types_)[:3] == ["All", "Canny", "Depth"]
    assert types_["All"]["module_list"] == registry.names()
    canny = types_["Canny"]
    assert canny == {"module_list": ["none", INVERT, "canny"], "model_list": [], "default_option": "canny",
                     "default_model": "None"}
    assert types_["Depth"]["default_option"] == "depth_midas"
    assert set(types_["Depth"]["module_list"]) >= {"none", "depth_midas", "depth_anything_v2"}
    assert types_["Lineart"]["default_option"] == LINEART_STANDARD
    assert INVERT in types_["Scribble/Sketch"]["module_list"]
    assert types_["Tile/Blur"]["module_list"] == ["none", "blur_gaussian", "tile_resample"]
    # a type whose default preprocessor is not here falls back to the first made for it (not invert), or "none"
    if "scribble_pidinet" not in registry.names():
        assert types_["Scribble/Sketch"]["default_option"] == "scribble"
    assert types_["IP-Adapter"]["module_list"] == ["none", "ip-adapter-auto", "ip-adapter_clip_sd15",
                                                  "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith"]
    assert types_["IP-Adapter"]["default_option"] == "ip-adapter_clip_sd15"
    for entry in types_.values():
        assert entry["module_list"][0] == "none" and entry["default_option"] in entry["module_list"]


# --- weights on disk ------------------------------------------------------------------------------------------

@pytest.fixture
def data_dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "models_path", str(tmp_path / "models"))
    monkeypatch.setattr(paths, "extensions_dir", str(tmp_path / "extensions"))
    return tmp_path


def test_weights_path_prefers_models_folder_then_the_extensions_downloads(data_dirs):
    downloads = data_dirs / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads" / "openpose"
    downloads.mkdir(parents=True)
    (downloads / "body.pth").write_bytes(b"x")
    assert registry.weights_path("openpose", "openpose", "body.pth") == str(downloads / "body.pth")
    ours = data_dirs / "models" / "ControlNetPreprocessor" / "openpose"
    ours.mkdir(parents=True)
    (ours / "body.pth").write_bytes(b"x")
    assert registry.weights_path("openpose", "openpose", "body.pth") == str(ours / "body.pth")


def test_missing_weights_are_refused_by_preprocessor_and_path(data_dirs):
    expected = os.path.join(str(data_dirs), "models", "ControlNetPreprocessor", "lineart", "sk_model.pth")
    with pytest.raises(MissingWeights) as caught:
        registry.weights_path("lineart_realistic", "lineart", "sk_model.pth")
    assert caught.value.path == expected
    assert '"lineart_realistic"' in str(caught.value) and expected in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize("relative", [("..", "secret.pth"), ("a/../../b.pth",), ("/etc/passwd",), ()])
def test_weights_path_stays_inside_its_folders(data_dirs, relative):
    with pytest.raises(ValueError, match="bad weights path"):
        registry.weights_path("x", *relative)


def test_weights_path_follows_data_dir(tmp_path, monkeypatch):
    for name in ("data_path", "models_path", "extensions_dir", "sd_model_dir", "vae_dir"):
        monkeypatch.setattr(paths, name, getattr(paths, name))  # restored afterwards
    paths.configure(str(tmp_path / "data"))  # what --data-dir does at start-up
    with pytest.raises(MissingWeights) as caught:
        registry.weights_path("x", "w.pth")
    assert caught.value.path == str(tmp_path / "data" / "models" / "ControlNetPreprocessor" / "w.pth")
    paths.configure(str(tmp_path / "data"), str(tmp_path / "elsewhere"))  # --models-dir
    with pytest.raises(MissingWeights) as caught:
        registry.weights_path("x", "w.pth")
    assert caught.value.path == str(tmp_path / "elsewhere" / "ControlNetPreprocessor" / "w.pth")
    legacy = tmp_path / "data" / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads"
    legacy.mkdir(parents=True)
    (legacy / "w.pth").write_bytes(b"x")
    assert registry.weights_path("x", "w.pth") == str(legacy / "w.pth")


# --- depth adapters -------------------------------------------------------------------------------------------

class FakeMissingDepthWeights(FileNotFoundError):
    """The depth registry's refusal, as modules/depth/weights.py defines it: (estimator, expected path)."""

    def __init__(self, name: str, expected: str):
        super().__init__(2, f'depth estimator "{name}": no weights at {expected}', expected)
        self.path = expected


@pytest.fixture
def depth_estimators(monkeypatch):
    """The depth registry's `estimate`, replaced by a left-to-right ramp (near = 1 on the right); `available` says
    which estimators have weights. Works with or without modules/depth/estimators.py on disk."""
    try:
        from modules.depth import estimators as module
    except ModuleNotFoundError:  # the depth registry has not landed: a stand-in with its interface
        module = types.ModuleType("modules.depth.estimators")
        module.MissingDepthWeights = FakeMissingDepthWeights
        package = types.ModuleType("modules.depth")
        package.estimators = module
        monkeypatch.setitem(sys.modules, "modules.depth", package)
        monkeypatch.setitem(sys.modules, "modules.depth.estimators", module)
    calls: list[tuple[str, tuple[int, int], int]] = []
    available = {"midas_dpt_hybrid", "depth_anything_v2_large", "depth_anything_v2_base", "depth_anything_v2_small"}

    def estimate(name, image, resolution=512):
        calls.append((name, image.size, resolution))
        if name not in available:
            raise module.MissingDepthWeights(name, f"/weights/{name}.safetensors")
        width, height = image.size
        return np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))

    monkeypatch.setattr(module, "estimate", estimate, raising=False)
    return types.SimpleNamespace(calls=calls, available=available)


def test_depth_midas_gives_a_grey_map_near_is_bright(depth_estimators):
    result = registry.run("depth", photo(80, 120), resolution=128)
    assert result.shape == (128, 192, 3) and result.dtype == np.uint8
    assert (result[:, :, 0] == result[:, :, 2]).all()
    assert result[:, 0].max() == 0 and result[:, -1].min() == 255
    assert depth_estimators.calls == [("midas_dpt_hybrid", (192, 128), 128)]


def test_depth_anything_v2_takes_the_largest_present(depth_estimators):
    depth_estimators.available.discard("depth_anything_v2_large")
    registry.run("depth_anything_v2", photo(), resolution=64)
    assert [c[0] for c in depth_estimators.calls] == ["depth_anything_v2_large", "depth_anything_v2_base"]


def test_missing_depth_weights_are_refused_by_preprocessor(depth_estimators):
    depth_estimators.available.clear()
    with pytest.raises(MissingWeights) as caught:
        registry.run("depth_midas", photo())
    assert caught.value.preprocessor == "depth_midas"
    assert "/weights/midas_dpt_hybrid.safetensors" in str(caught.value)
    with pytest.raises(MissingWeights, match="depth_anything_v2_large"):
        registry.run("depth_anything_v2", photo())
    assert not registry.get("depth_midas").model_free


def test_depth_map_conversion_clips_and_rounds():
    depth = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0, np.nan]], np.float32)
    result = preprocessors_depth.depth_to_map(depth)
    assert result.shape == (1, 6, 3) and list(result[0, :, 0]) == [0, 0, 128, 255, 255, 0]


def test_depth_midas_runs_a_real_estimator_from_the_preprocessor_folder(data_dirs):
    from depth_files import scene, write_estimator
    from PIL import Image

    from modules.depth import estimators

    image = np.asarray(scene(96, 64))
    with pytest.raises(MissingWeights) as caught:
        registry.run("depth_midas", image, resolution=64)
    assert os.path.join("models", "depth", "midas_dpt_hybrid") in caught.value.path
    # ControlNet users keep their depth weights under models/ControlNetPreprocessor/depth/<name>/
    write_estimator(data_dirs / "models", "midas_dpt_hybrid", root=os.path.join("ControlNetPreprocessor", "depth"))
    try:
        result = registry.run("depth_midas", image, resolution=64)
        expected = estimators.estimate("midas_dpt_hybrid", Image.fromarray(image), 64)  # already 64 high
    finally:
        estimators.unload_all()
    assert result.shape == (64, 96, 3) and (result[:, :, 0] == result[:, :, 1]).all()
    assert np.abs(result[:, :, 0].astype(int) - np.round(expected * 255).astype(int)).max() <= 1
    assert result.min() == 0 and result.max() == 255  # min-max normalised, as the extension's maps are
