"""The bundled default model (models/Stable-diffusion/default-shapes-v1): what a user of a fresh install gets.

Real weights on the CPU at the default settings (20 steps, CFG 7, DPM++ 2M, 256x256); the scene checker reads
the pictures, so these tests fail when prompts stop being followed, not when a pixel moves.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from modules import devices, paths, processing, shared
from modules.models import registry
from modules.models.loader import load_model
from tools.default_model import checker, scenes

MAX_BYTES = 40_000_000
BUNDLED = paths.BUNDLED_CHECKPOINT


@pytest.fixture(autouse=True)
def bundled_model_on(monkeypatch):
    """conftest hides the bundled model from the rest of the suite; these tests are about it."""
    monkeypatch.setattr(paths, "bundled_checkpoint", BUNDLED)


@pytest.fixture(scope="module")
def model():
    shared.opts.data["live_previews_enable"] = False
    return load_model(BUNDLED, devices.choose_precision(torch.device("cpu")))


def generate(model, cls, prompt: str, seed: int, **kw) -> Image.Image:
    p = cls(prompt=prompt, negative_prompt="", steps=20, cfg_scale=7, width=256, height=256, sampler_name="DPM++ 2M",
            seed=seed, do_not_save_samples=True, do_not_save_grid=True, **kw)
    p.sd_model = model
    return processing.process_images(p).images[0]


def test_bundled_checkpoint_is_small_and_described_by_its_sidecar():
    assert os.path.getsize(BUNDLED) <= MAX_BYTES
    sidecar = os.path.splitext(BUNDLED)[0] + ".json"
    assert os.path.isfile(sidecar)
    licence = os.path.splitext(BUNDLED)[0] + ".LICENSE.md"
    assert "licen" in open(licence, encoding="utf-8").read().lower()


def test_bundled_model_is_the_default_only_when_no_other_checkpoint_is_there(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    try:
        registry.list_models(model_dir=str(empty), ckpt_dir="", ckpt_file="")
        assert registry.select_checkpoint().filename == BUNDLED
        # A checkpoint of the user's own comes first and is the default; the bundled one stays listed.
        other = tmp_path / "mine"
        other.mkdir()
        (other / "aaa.safetensors").write_bytes(b"")
        registry.list_models(model_dir=str(other), ckpt_dir="", ckpt_file="")
        listed = [i.filename for i in registry.checkpoints_list.values()]
        assert listed[-1] == BUNDLED and len(listed) == 2
        assert registry.select_checkpoint().filename == str(other / "aaa.safetensors")
        # Even when the user's file sorts after it in the same folder.
        registry.list_models(model_dir=os.path.dirname(BUNDLED), ckpt_dir=str(other), ckpt_file="")
        assert registry.select_checkpoint().filename != BUNDLED
    finally:
        registry.list_models()


def test_model_loads_as_a_small_sd1_model(model):
    assert model.is_sd1
    assert int(model.unet.config.sample_size) * 8 == 256  # native size 256x256


PROMPTS = [
    "a large red circle at the top left and a small blue square at the bottom right, on a white background",
    "a large yellow star, on a black background",
    "a small white triangle at the top and a large green ring at the bottom, on a purple background",
    "a large orange square on the right, on a cyan and pink background",
]


def test_txt2img_follows_the_prompt(model):
    results = [checker.check(generate(model, processing.StableDiffusionProcessingTxt2Img, p, seed=i + 1), p)
               for i, p in enumerate(PROMPTS)]
    summary = checker.summarize(results)
    # 4 prompts, 5 objects, 20 attributes: at most one may be off (CPU kernels differ slightly between machines).
    assert summary["overall"] >= 0.95, [r.problems for r in results]
    # Background colours are right; which half of a two-tone background gets which is not reliable yet.
    assert [set(r.background_found) for r in results] == [set(r.background_asked) for r in results]


def two_object_scene() -> scenes.Scene:
    return scenes.Scene(
        (scenes.make_object("square", "red", "large", "top left"),
         scenes.make_object("circle", "blue", "large", "bottom right")),
        ("yellow",),
    )


def test_img2img_at_low_denoising_keeps_the_composition(model):
    scene = two_object_scene()
    init = scenes.render(scene, 256)
    out = generate(model, processing.StableDiffusionProcessingImg2Img, scenes.caption(scene), seed=5,
                   init_images=[init], denoising_strength=0.3)
    assert checker.check(out, scene).accuracy == 1.0
    assert np.abs(np.asarray(out, np.float32) - np.asarray(init, np.float32)).mean() < 8


def test_inpainting_recolours_the_masked_object_and_nothing_else(model):
    scene = two_object_scene()
    init = scenes.render(scene, 256)
    square = scenes.object_masks(scene, 256)[0]
    mask = ndimage.binary_dilation(square, iterations=6)  # a painted mask is never pixel-exact
    recoloured = scenes.Scene((scenes.make_object("square", "green", "large", "top left"), scene.objects[1]),
                              scene.background)
    out = generate(model, processing.StableDiffusionProcessingImg2Img, scenes.caption(recoloured), seed=7,
                   init_images=[init], mask=Image.fromarray(mask.astype(np.uint8) * 255), mask_blur=0,
                   denoising_strength=1.0, inpainting_fill=1, inpaint_full_res=False)
    result = checker.check(out, recoloured)
    assert result.accuracy == 1.0, result.problems  # a green square where the red one was, the circle kept
    before, after = np.asarray(init, np.int16), np.asarray(out, np.int16)
    assert np.abs(after - before)[~mask].max() == 0  # not one pixel outside the mask changed
    assert np.abs(after - before)[square].mean() > 60  # and the square did change


def test_the_ui_opens_at_256_pixels_only_for_the_bundled_model(tmp_path, monkeypatch):
    from modules.ui import params

    monkeypatch.setitem(shared.opts.data, "sd_model_checkpoint", None)  # no saved choice: a fresh install
    try:
        registry.list_models(model_dir=str(tmp_path), ckpt_dir="", ckpt_file="")
        assert params.default_size() == 256  # what it was trained at; at 512 it draws every object twice
        (tmp_path / "mine.safetensors").write_bytes(b"")
        registry.list_models(model_dir=str(tmp_path), ckpt_dir="", ckpt_file="")
        assert params.default_size() == 512  # A1111's default for everyone else
    finally:
        registry.list_models()
