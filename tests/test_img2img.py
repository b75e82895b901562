"""img2img and inpainting through `process_images`: sizes, resize modes, and pixels outside the mask untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modules import processing, sd_models
from modules.engine import generate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {
        "sd1.safetensors": {"family": "sd1", "seed": 3},
        "sd1-inpainting.safetensors": {"family": "sd1", "variant": "inpaint", "seed": 7},
        "xl.safetensors": {"family": "sdxl", "seed": 5},
    }
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def init_image(w=96, h=64, seed=0) -> Image.Image:
    rs = np.random.RandomState(seed)
    return Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(w=96, h=64, box=(24, 16, 56, 48)) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, box)
    return mask


def img2img(**kw) -> processing.Processed:
    args = {"prompt": "a blue square", "negative_prompt": "", "steps": 4, "width": 96, "height": 64,
            "sampler_name": "Euler a", "seed": 1, "do_not_save_samples": True, "do_not_save_grid": True,
            "init_images": [init_image()], "denoising_strength": 0.6}
    args.update(kw)
    return processing.process_images(processing.StableDiffusionProcessingImg2Img(**args))


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def outside(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == 0


@pytest.mark.parametrize("resize_mode", [0, 1, 2, 3])
def test_img2img_output_has_the_requested_size(data_dir, resize_mode):
    use("sd1.safetensors")
    result = img2img(resize_mode=resize_mode, width=64, height=64, init_images=[init_image(96, 64)])
    assert result.images[0].size == (64, 64)
    assert "Denoising strength: 0.6" in result.infotexts[0]


def test_img2img_is_deterministic_and_strength_matters(data_dir):
    use("sd1.safetensors")
    a, b = img2img(), img2img()
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    c = img2img(denoising_strength=0.3)
    assert not np.array_equal(px(a.images[0]), px(c.images[0]))


@pytest.mark.parametrize("checkpoint", ["sd1.safetensors", "sd1-inpainting.safetensors", "xl.safetensors"])
@pytest.mark.parametrize("full_res", [False, True])
def test_inpainting_leaves_pixels_outside_the_mask_unchanged(data_dir, checkpoint, full_res):
    model = use(checkpoint)
    original, mask = init_image(), box_mask()
    result = img2img(mask=mask, mask_blur=0, inpainting_fill=1, inpaint_full_res=full_res,
                     inpaint_full_res_padding=8, denoising_strength=0.9)
    out = px(result.images[0])
    keep = outside(mask)
    assert np.array_equal(out[keep], px(original)[keep])
    assert (out[~keep] != px(original)[~keep]).any()
    assert json.loads(result.js())["is_using_inpainting_conditioning"] == model.is_inpainting
    text = result.infotexts[0]
    assert "Mask blur: 0" in text and "Masked content: original" in text
    assert ("Inpaint area: Only masked, Masked area padding: 8" in text) == full_res


def test_inpaint_not_masked_inverts(data_dir):
    use("sd1.safetensors")
    original, mask = init_image(), box_mask()
    result = img2img(mask=mask, mask_blur=0, inpainting_mask_invert=1, inpaint_full_res=False)
    inside = ~outside(mask)
    assert np.array_equal(px(result.images[0])[inside], px(original)[inside])
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_every_masked_content_mode(data_dir, fill):
    use("sd1.safetensors")
    original, mask = init_image(), box_mask()
    result = img2img(mask=mask, mask_blur=4, inpainting_fill=fill, inpaint_full_res=False)
    label = ["fill", "original", "latent noise", "latent nothing"][fill]
    assert f"Masked content: {label}" in result.infotexts[0]
    # With blur 4 the kernel reaches 11 px past the box; beyond that the original is untouched.
    far = np.ones((64, 96), bool)
    far[16 - 11 : 48 + 11, 24 - 11 : 56 + 11] = False
    assert np.array_equal(px(result.images[0])[far], px(original)[far])


def test_empty_mask_with_only_masked_falls_back_to_the_whole_picture(data_dir):
    use("sd1.safetensors")
    original = init_image()
    result = img2img(mask=Image.new("L", (96, 64), 0), mask_blur=0, inpaint_full_res=True)
    assert np.array_equal(px(result.images[0]), px(original))  # nothing to repaint


def test_img2img_without_init_image_is_refused(data_dir):
    use("sd1.safetensors")
    with pytest.raises(ValueError, match="img2img needs at least one init image"):
        img2img(init_images=[])


def test_vae_falls_back_to_float32_when_half_precision_overflows(data_dir, monkeypatch):
    model = use("sd1.safetensors")
    model.vae.to(torch.float16)

    def overflowing(z, return_dict=True):  # what the SDXL VAE does in float16 on real weights
        out = torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)
        return (out + float("nan") if z.dtype == torch.float16 else out,)

    monkeypatch.setattr(model.vae, "decode", overflowing)
    images = generate.vae_decode(model, torch.zeros(1, 4, 8, 8))
    assert torch.isfinite(images).all()
    assert model.vae.dtype == torch.float32


def test_progress_counts_the_steps_img2img_runs(data_dir, monkeypatch):
    """Denoising 0.75 of 20 steps runs 16 (A1111's t_enc + 1): the progress bar and API must say 16, not 20."""
    from modules import shared

    use("sd1.safetensors")
    seen = []
    real_set = shared.state.set_current_image

    def record():
        seen.append((shared.state.sampling_step, shared.state.sampling_steps))
        return real_set()

    monkeypatch.setattr(shared.state, "set_current_image", record)
    img2img(steps=20, denoising_strength=0.75, sampler_name="Euler")
    assert seen[-1] == (16, 16) and len(seen) == 16
