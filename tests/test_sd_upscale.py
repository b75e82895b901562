"""The SD upscale script (scripts/sd_upscale.py): upscale, redraw in overlapping tiles, blend back; tiny model."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from script_test_support import load_builtin, pixels, tiny_data_dir

from modules import images, infotext_utils, processing


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    with tiny_data_dir(isolated_data_dir, tmp_path_factory.mktemp("data")) as root:
        yield root



@pytest.fixture(scope="module")
def loaded():
    return load_builtin("sd_upscale.py")


def source() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))


def img2img(**kw) -> processing.StableDiffusionProcessingImg2Img:
    fields = {"prompt": "a tiled wall", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
              "seed": 7, "denoising_strength": 0.5, "do_not_save_samples": True, "init_images": [source()]}
    fields.update(kw)
    return processing.StableDiffusionProcessingImg2Img(**fields)


def test_ui_has_a1111s_controls(loaded):
    _, script = loaded
    assert script.title() == "SD upscale" and script.show(True) and not script.show(False)
    with gr.Blocks():
        controls = script.ui(True)
    assert [getattr(c, "label", None) for c in controls[1:]] == ["Tile overlap", "Upscaler", "Scale Factor"]


def test_output_covers_the_whole_scaled_image_and_writes_the_keys(data_dir, loaded, monkeypatch):
    _, script = loaded
    counts = []
    real = processing.process_images
    monkeypatch.setattr(processing, "process_images", lambda p: counts.append(len(p.init_images)) or real(p))
    result = script.run(img2img(), None, 32, "Nearest", 2.0)
    image = result.images[0]
    assert image.size == (160, 96)
    grid = images.split_grid(Image.new("RGB", (160, 96)), 64, 64, 32)
    assert sum(counts) == len(grid.tiles) * len(grid.tiles[0][2]) == 4 * 2  # every tile redrawn once
    # every part of the picture was redrawn: no region is still the plain upscaled source
    upscaled = pixels(source().resize((160, 96), Image.Resampling.NEAREST))
    changed = np.abs(pixels(image) - upscaled).max(axis=2) > 0
    assert changed.mean() > 0.9
    for y in range(0, 96, 16):
        for x in range(0, 160, 16):
            assert changed[y:y + 16, x:x + 16].mean() > 0.5, (x, y)
    params = infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert params["SD upscale overlap"] == "32" and params["SD upscale upscaler"] == "Nearest"


def test_batch_and_seeds_are_reproducible(data_dir, loaded):
    _, script = loaded
    a = script.run(img2img(batch_size=3), None, 32, 2, 2.0).images[0]  # the radio's index: "Nearest"
    b = script.run(img2img(batch_size=3), None, 32, "Nearest", 2.0).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    c = script.run(img2img(seed=8), None, 32, "Nearest", 2.0).images[0]
    assert not np.array_equal(pixels(a), pixels(c))


def test_refusals_name_the_problem(data_dir, loaded):
    _, script = loaded
    with pytest.raises(ValueError, match="unknown upscaler 'Nope'"):
        script.run(img2img(), None, 32, "Nope", 2.0)
    with pytest.raises(ValueError, match="overlap"):
        script.run(img2img(), None, 64, "Nearest", 2.0)
