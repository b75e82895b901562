"""Depth maps as files (16-bit range, invert, near/far clip, the three saved files with infotext), the Depth tab's
work functions and img2img's depth script, on tiny estimators."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from depth_files import scene, write_estimator
from PIL import Image

from modules import paths, shared
from modules.depth import estimators, maps, work

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "models_path", str(tmp_path / "models"))
    monkeypatch.setattr(paths, "data_path", str(tmp_path))
    monkeypatch.setitem(shared.opts.data, "outdir_depth_samples", "")
    write_estimator(tmp_path / "models", "depth_anything_v2_small")
    estimators.unload_all()
    yield tmp_path
    estimators.unload_all()


def test_16_bit_keeps_the_whole_range_and_8_bit_rounds():
    ramp = np.linspace(0, 1, 256 * 4, dtype=np.float32).reshape(4, 256)
    map16 = maps.to_16bit(ramp)
    assert map16.mode == "I;16"
    values = np.asarray(map16, dtype=np.int64)
    assert values.min() == 0 and values.max() == 65535 and len(np.unique(values)) == ramp.size  # no banding
    assert np.abs(maps.from_picture(map16) - ramp).max() < 1e-4
    assert np.asarray(maps.to_8bit(ramp)).max() == 255 and maps.to_preview(ramp).mode == "RGB"


def test_invert_and_clip():
    depth = np.array([[0.0, 0.2, 0.5, 0.8, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(maps.adjust(depth, maps.Adjust(invert=True)), 1 - depth)
    clipped = maps.adjust(depth, maps.Adjust(near=0.8, far=0.2))
    np.testing.assert_allclose(clipped, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="far < near"):
        maps.adjust(depth, maps.Adjust(near=0.3, far=0.6))


def test_preview_colours_near_bright():
    preview = np.asarray(maps.to_preview(np.array([[0.0, 1.0]], dtype=np.float32)), dtype=np.int64)
    assert preview[0, 1].sum() > preview[0, 0].sum() + 300


def test_saved_files_carry_the_infotext(data_dir):
    result = work.make_depth(scene(96, 64), "depth_anything_v2_small", 112, maps.Adjust(invert=True))
    files = work.save(result)
    assert [os.path.basename(f) for f in files] == ["00000.png", "00000-grey.png", "00000-preview.png"]
    assert all(f.startswith(str(data_dir / "outputs" / "depth-images")) for f in files)
    with Image.open(files[0]) as saved:
        assert saved.mode in ("I;16", "I") and saved.size == (96, 64)
        info = saved.info["parameters"]
    assert info == ("Depth estimator: depth_anything_v2_small, Processing resolution: 112, Invert: True, "
                    "Size: 96x64")
    with Image.open(files[1]) as grey, Image.open(files[2]) as preview:
        assert grey.mode == "L" and preview.mode == "RGB" and grey.info["parameters"] == info
    assert [os.path.basename(f) for f in work.save(result)][0] == "00001.png"


def test_user_map_is_taken_at_the_picture_size(data_dir):
    user = Image.fromarray(np.tile(np.linspace(0, 65535, 50), (20, 1)).astype(np.uint16))
    result = work.make_depth(scene(96, 64), "depth_anything_v2_small", 512, maps.Adjust(), depth_map=user)
    assert result.depth.shape == (64, 96) and result.estimator is None
    assert result.info.startswith("Depth source: user map")
    assert result.depth[:, 0].mean() < 0.05 and result.depth[:, -1].mean() > 0.95


def test_tab_refusals_are_readable(data_dir):
    from modules.ui import depth as depth_ui

    with pytest.raises(ValueError, match="Add an image"):
        depth_ui.estimate_work(None, "midas_dpt_hybrid", 512, False, 1.0, 0.0)
    with pytest.raises(ValueError, match="far < near"):
        depth_ui.estimate_work(scene(), "midas_dpt_hybrid", 512, False, 0.2, 0.5)
    job = depth_ui.estimate_work(scene(), "midas_dpt_large", 512, False, 1.0, 0.0)
    with pytest.raises(ValueError, match="models/depth/midas_dpt_large"):
        job()
    job = depth_ui.estimate_work(scene(), "depth_anything_v2_small", 112, False, 1.0, 0.0)
    assert job().saved[0].endswith("00000.png")


def _depth_script():
    spec = importlib.util.spec_from_file_location("depth2img_script", os.path.join(REPO, "scripts", "depth2img.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_img2img_depth_script_sets_the_request(data_dir):
    from modules import processing

    module = _depth_script()
    script = module.Script()
    assert script.show(False) is False and script.show(True) is not False
    p = processing.StableDiffusionProcessingImg2Img(init_images=[scene()], depth_estimator="midas_dpt_large")
    script.process(p, module.AUTOMATIC, None)
    assert p.depth_estimator == "midas_dpt_large" and p.depth_map is None  # Automatic keeps the request's
    path = data_dir / "map.png"
    maps.to_16bit(np.full((8, 8), 0.5, np.float32)).save(path)
    script.process(p, "depth_anything_v2_small", str(path))
    assert p.depth_estimator == "depth_anything_v2_small" and p.depth_map.mode in ("I;16", "I")
    with pytest.raises(ValueError, match="unknown depth estimator"):
        script.api_args(["zoe", None], lambda text, field: None)
    (data_dir / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="Could not read the depth map"):
        script.process(p, module.AUTOMATIC, str(data_dir / "bad.png"))
