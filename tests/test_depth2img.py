"""depth2img with a tiny SD2 depth checkpoint (5-channel UNet): the depth channel the UNet receives equals what
diffusers' StableDiffusionDepth2ImgPipeline gives the same UNet for the same picture and depth map.

Tolerance: 1e-5 absolute on values in [-1, 1] for a given depth map (both sides run the same float32 ops on the
CPU; the bound only allows for a different order of the min/max reductions), 1e-4 when both also run the MiDaS
network (its convolutions may pick other kernels for another memory layout).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from depth_files import build_estimator, scene, write_estimator
from PIL import Image
from tiny_models import build_family

from modules import paths, processing, sd_models
from modules.depth import depth2img, estimators

TOLERANCE = 1e-5
W, H = 96, 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd2-depth.safetensors": {"family": "sd2", "variant": "depth", "seed": 2},
                   "sd2.safetensors": {"family": "sd2", "seed": 4}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        paths.models_path = str(root / "models")
        write_estimator(root / "models", "midas_dpt_hybrid", seed=5)
        yield root
    estimators.unload_all()


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def depth_picture() -> Image.Image:
    """A 16-bit depth map: a near disc over a floor that recedes upwards."""
    yy, xx = np.mgrid[0:H, 0:W]
    depth = 20000 + 30000 * yy / H
    depth[((xx - 60) ** 2 + (yy - 28) ** 2) < 200] = 60000
    return Image.fromarray(depth.astype(np.uint16))


def capture_unet_inputs(unet: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen.append(sample.detach().float().cpu().clone())
    return seen, unet.register_forward_pre_hook(hook, with_kwargs=True)


def run_ours(**kw) -> tuple[processing.Processed, list[torch.Tensor]]:
    model = use("sd2-depth.safetensors")
    seen, handle = capture_unet_inputs(model.unet)
    args = {"prompt": "a room", "negative_prompt": "", "steps": 3, "width": W, "height": H,
            "sampler_name": "Euler", "seed": 1, "do_not_save_samples": True, "do_not_save_grid": True,
            "init_images": [scene(W, H)], "denoising_strength": 0.7, "cfg_scale": 5}
    args.update(kw)
    try:
        result = processing.process_images(processing.StableDiffusionProcessingImg2Img(**args))
    finally:
        handle.remove()
    return result, seen


def diffusers_pipeline(depth_estimator=None):
    from diffusers import DDIMScheduler, StableDiffusionDepth2ImgPipeline
    from transformers import CLIPTokenizer, DPTImageProcessor

    tiny = build_family("sd2", "depth", seed=2)
    tokenizer = CLIPTokenizer.from_pretrained(f"{paths.configs_path}/tokenizers/open-clip", local_files_only=True)
    extractor = DPTImageProcessor(size={"height": 384, "width": 384}, keep_aspect_ratio=False, ensure_multiple_of=1,
                                  resample=Image.Resampling.BICUBIC, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return StableDiffusionDepth2ImgPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoders[0], tokenizer=tokenizer, unet=tiny.unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        depth_estimator=depth_estimator, feature_extractor=extractor)


def run_diffusers(depth_map: torch.Tensor | None, depth_estimator=None) -> list[torch.Tensor]:
    pipe = diffusers_pipeline(depth_estimator)
    seen, handle = capture_unet_inputs(pipe.unet)
    try:
        pipe(prompt="a room", image=scene(W, H), depth_map=depth_map, strength=0.7, num_inference_steps=3,
             guidance_scale=5, generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        handle.remove()
    return seen


def test_prepare_depth_map_equals_diffusers(data_dir):
    pipe = diffusers_pipeline()
    raw = torch.rand(2, 37, 53) * 7 - 2
    ours = depth2img.prepare_depth_map(raw, H // 8, W // 8)
    theirs = pipe.prepare_depth_map(scene(W, H), raw, 2, False, torch.float32, torch.device("cpu"))
    assert ours.shape == (2, 1, H // 8, W // 8)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)
    assert ours.amin().item() == -1.0 and ours.amax().item() == 1.0


def test_user_depth_map_reaches_the_unet_as_diffusers_gives_it(data_dir):
    result, ours = run_ours(depth_map=depth_picture())
    values = torch.from_numpy(np.asarray(depth_picture(), dtype=np.float32))[None]
    theirs = run_diffusers(values)
    assert ours and theirs and ours[0].shape[1] == 5 and theirs[0].shape[1] == 5
    torch.testing.assert_close(ours[0][:1, 4:], theirs[0][:1, 4:], rtol=0, atol=TOLERANCE)
    for step in ours:  # every step and both CFG halves get the same depth channel
        torch.testing.assert_close(step[:, 4:], ours[0][:1, 4:].expand_as(step[:, 4:]), rtol=0, atol=0)
    info = result.infotexts[0]
    assert "Depth source: user map" in info and "Depth estimator" not in info


def test_estimated_depth_reaches_the_unet_as_diffusers_gives_it(data_dir):
    """MiDaS by default, run at its 384 square as diffusers' feature extractor does."""
    result, ours = run_ours()
    theirs = run_diffusers(None, depth_estimator=build_estimator("midas_dpt_hybrid", seed=5))
    torch.testing.assert_close(ours[0][:1, 4:], theirs[0][:1, 4:], rtol=0, atol=1e-4)
    assert "Depth estimator: midas_dpt_hybrid" in result.infotexts[0]
    assert result.images[0].size == (W, H)


def test_the_depth_map_changes_the_picture(data_dir):
    near_left = Image.fromarray(np.tile(np.linspace(65535, 0, W), (H, 1)).astype(np.uint16))
    a = np.asarray(run_ours(depth_map=depth_picture())[0].images[0], dtype=np.int16)
    b = np.asarray(run_ours(depth_map=near_left)[0].images[0], dtype=np.int16)
    assert np.abs(a - b).mean() > 0.5


def test_missing_estimator_is_refused_with_its_path(data_dir):
    with pytest.raises(ValueError, match="depth_anything_v2_small") as caught:
        run_ours(depth_estimator="depth_anything_v2_small")
    assert "models/depth/depth_anything_v2_small" in str(caught.value).replace("\\", "/")
    assert str(data_dir) not in str(caught.value)  # the server's layout stays private
    with pytest.raises(ValueError, match="unknown depth estimator"):
        run_ours(depth_estimator="nope")


def test_txt2img_with_a_depth_model_is_refused_naming_img2img(data_dir):
    use("sd2-depth.safetensors")
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=2, width=W, height=H,
                                                     do_not_save_samples=True, do_not_save_grid=True)
    with pytest.raises(ValueError, match="img2img"):
        processing.process_images(p)


def test_user_map_is_fitted_like_the_picture():
    wide = Image.fromarray(np.tile(np.arange(200, dtype=np.float32), (50, 1)), "F")
    for mode in (0, 1, 2):
        fitted = depth2img.user_map_for(wide, mode, 64, 64)
        assert fitted.size == (64, 64) and fitted.mode == "F"
    cropped = np.asarray(depth2img.user_map_for(wide, 1, 64, 64))
    assert cropped[:, 0].mean() > 40  # the crop drops the far-left columns


def test_a_batch_of_one_picture_is_estimated_once(data_dir, monkeypatch):
    calls = []
    real = estimators.predict

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(estimators, "predict", counting)
    result, seen = run_ours(batch_size=2, steps=2)
    assert len(calls) == 1 and len(result.images) == 2
    torch.testing.assert_close(seen[0][0, 4:], seen[0][1, 4:], rtol=0, atol=0)
