"""ControlNet and T2I-Adapter units in real generations on tiny models (CPU): the same latents as diffusers'
pipelines on the same weights, weight 0 bit for bit, the guidance window, control modes, several units, hires
fix, img2img's picture as the control input, and refusals by name.

The reference models come from tests/controlnet_files.py (built in diffusers' layout, written to disk in the
original layout); ours are read back through modules.controlnet, so a conversion bug shows as a mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from controlnet_files import write_controlnet, write_t2i_adapter
from generation_capture import capture_run
from PIL import Image, ImageDraw

from modules import processing, scripts, sd_models, shared
from modules.controlnet import files, loading, runtime
from modules.engine import generate

STEPS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5},
                   "sd2.safetensors": {"family": "sd2", "seed": 7}}
    settings = {"live_previews_enable": False, "cuda_graphs": False}
    with isolated_data_dir(tmp_path_factory.mktemp("cn"), checkpoints, settings) as root:
        folder = root / "models" / "ControlNet"
        folder.mkdir(parents=True, exist_ok=True)
        references = {
            "cn_a": write_controlnet(folder / "cn_a.safetensors", "sd1", "original", seed=1),
            "cn_b": write_controlnet(folder / "cn_b.safetensors", "sd1", "diffusers", seed=2),
            "cn_xl": write_controlnet(folder / "cn_xl.safetensors", "sdxl", "original", seed=4),
            "cn_sd2": write_controlnet(folder / "cn_sd2.pth", "sd2", "original", seed=8),
            "t2i": write_t2i_adapter(folder / "t2i_a.safetensors", "sd1", "original", seed=6),
        }
        files.refresh()
        scripts.load_scripts()  # the built-in scripts, as the app loads them at start-up
        yield root, references
    loading.unload_all()


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def square(size: int = 64) -> Image.Image:
    picture = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(picture).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="white")
    return picture


def unit(model: str = "cn_a", **kw) -> dict:
    return {"enabled": True, "module": "canny", "model": model, "weight": 1.0, "image": np.asarray(square()),
            "resize_mode": "Just Resize", **kw}


def txt2img(*units, **kw) -> processing.Processed:
    args = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": STEPS, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 11, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True, **kw}
    p = processing.StableDiffusionProcessingTxt2Img(**args)
    return run_with_units(p, list(units))


def run_with_units(p, units: list) -> processing.Processed:
    runner = scripts.runner_for(p)
    runner.ensure_inputs()
    script = runner.script("ControlNet")
    assert script is not None, "the built-in ControlNet script is missing"
    args = list(runner.default_args())
    for i, value in enumerate(units):
        args[script.args_from + i] = value
    p.scripts, p.script_args = runner, tuple(args)
    return processing.process_images(p)


def pixels(result: processing.Processed, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].convert("RGB"), dtype=np.int16)


@pytest.fixture
def unet_inputs(monkeypatch):
    """Every UNetInput the engine passes to the UNet, in order (after the hooks filled it)."""
    seen = []
    real = generate.unet_call

    def spy(unet, inp, **kwargs):
        seen.append(inp)
        return real(unet, inp, **kwargs)

    monkeypatch.setattr(generate, "unet_call", spy)
    return seen


def test_weight_zero_is_the_picture_without_controlnet_bit_for_bit(data_dir):
    use("sd1.safetensors")
    plain = txt2img()
    zero = txt2img(unit(weight=0.0))
    assert np.array_equal(pixels(plain), pixels(zero))
    assert 'ControlNet 0: "Module: canny, Model: cn_a [' in zero.infotexts[0]
    controlled = txt2img(unit())
    assert np.abs(pixels(controlled) - pixels(plain)).mean() > 1  # the control changes the picture
    assert len(controlled.images) == 2  # the detected map follows the picture, as the extension does
    assert edges_on_square_border(controlled.images[1])


def edges_on_square_border(detected: Image.Image) -> bool:
    """canny found the drawn square's border (a quarter of the way in), not its inside"""
    edges = np.asarray(detected.convert("L"))
    n = edges.shape[0]
    band = edges[n // 4 - n // 32: n // 4 + n // 32, n // 4: 3 * n // 4]
    return bool(band.max() == 255 and edges[n // 2, n // 2] == 0)


def test_same_latents_as_diffusers_controlnet_pipeline(data_dir, monkeypatch):
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

    _, references = data_dir
    model = use("sd1.safetensors")
    captured = capture_run(monkeypatch)
    ours = txt2img(unit(module="none", image=np.asarray(square())))
    assert "latents" in captured and len(captured["sigmas"]) == 1

    cond, uncond = captured["contexts"][0][:1], captured["contexts"][0][1:]
    pipe = StableDiffusionControlNetPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        controlnet=references["cn_a"].eval(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="linspace"))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=square(), height=64, width=64,
                      sigmas=captured["sigmas"][0].tolist(), latents=captured["noise"].clone(), guidance_scale=7.0,
                      output_type="latent").images
    # Stated tolerance: float32 on the CPU, 4 Euler steps through a ControlNet and a UNet, latents of magnitude
    # up to ~6: 1e-4 relative + 1e-4 absolute (measured: 1.0e-4 absolute, 1.6e-5 relative at worst).
    torch.testing.assert_close(captured["latents"], theirs, rtol=1e-4, atol=1e-4)
    assert ours.images[0].size == (64, 64)


def test_guidance_window_is_respected(data_dir, unet_inputs):
    use("sd1.safetensors")
    txt2img(unit(guidance_start=0.5, guidance_end=1.0))
    with_control = [i for i, inp in enumerate(unet_inputs) if inp.down_residuals is not None]
    # progress = step / steps: 0, 0.25, 0.5, 0.75 -> the last two steps only
    assert with_control == [2, 3]
    unet_inputs.clear()
    txt2img(unit(guidance_start=0.0, guidance_end=0.3))
    assert [i for i, inp in enumerate(unet_inputs) if inp.down_residuals is not None] == [0, 1]


def test_two_units_add_their_residuals(data_dir, unet_inputs):
    use("sd1.safetensors")
    txt2img(unit("cn_a", module="none"))
    first = [r.clone() for r in unet_inputs[0].down_residuals]
    unet_inputs.clear()
    txt2img(unit("cn_b", module="none", weight=0.5))
    second = [r.clone() for r in unet_inputs[0].down_residuals]
    unet_inputs.clear()
    both = txt2img(unit("cn_a", module="none"), unit("cn_b", module="none", weight=0.5))
    for a, b, total in zip(first, second, unet_inputs[0].down_residuals, strict=True):
        torch.testing.assert_close(total, a + b, rtol=1e-5, atol=1e-6)
    assert "ControlNet 0: " in both.infotexts[0] and "ControlNet 1: " in both.infotexts[0]


def test_control_modes(data_dir, unet_inputs):
    use("sd1.safetensors")
    txt2img(unit(module="none"))
    balanced = unet_inputs[0]
    unet_inputs.clear()
    txt2img(unit(module="none", control_mode="My prompt is more important"))
    prompt = unet_inputs[0]
    unet_inputs.clear()
    txt2img(unit(module="none", control_mode=2))  # "ControlNet is more important", as an integer enum
    control = unet_inputs[0]
    n = len(balanced.down_residuals) + 1
    for i, (b, p_) in enumerate(zip(balanced.down_residuals, prompt.down_residuals, strict=True)):
        torch.testing.assert_close(p_, b * 0.825 ** (n - 1 - i), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(prompt.mid_residual, balanced.mid_residual)
    # rows: [prompt, negative prompt]; the control reaches the prompt's row only
    assert control.down_residuals[0][1].abs().max() == 0 and control.down_residuals[0][0].abs().max() > 0


def test_t2i_adapter_features_reach_the_unet_scaled(data_dir, unet_inputs):
    _, references = data_dir
    use("sd1.safetensors")
    plain = txt2img()
    unet_inputs.clear()
    result = txt2img(unit("t2i_a", module="none", weight=0.7))
    assert np.abs(pixels(result) - pixels(plain)).mean() > 0.5
    hint = torch.from_numpy(np.asarray(square(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = references["t2i"].eval()(hint)
    features = unet_inputs[0].adapter_features
    assert features is not None and len(features) == len(expected)
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, (want * 0.7).expand_as(got), rtol=1e-4, atol=1e-5)
    assert 'ControlNet 0: "Module: none, Model: t2i_a [' in result.infotexts[0]


def test_hires_fix_gets_a_control_picture_at_its_own_size(data_dir, unet_inputs):
    use("sd1.safetensors")
    result = txt2img(unit(), enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=2,
                     denoising_strength=0.5)
    assert result.images[0].size == (96, 96)
    sizes = {tuple(inp.x.shape[-2:]) for inp in unet_inputs if inp.down_residuals is not None}
    latent = 64 // shared.sd_model.vae_scale_factor
    assert sizes == {(latent, latent), (latent * 3 // 2, latent * 3 // 2)}


def test_img2img_unit_without_image_reads_the_img2img_picture(data_dir):
    use("sd1.safetensors")
    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[square()], prompt="a red circle", steps=STEPS, width=64, height=64, sampler_name="Euler",
        seed=11, denoising_strength=0.6, do_not_save_samples=True, do_not_save_grid=True)
    result = run_with_units(p, [unit(image=None)])
    assert 'ControlNet 0: "Module: canny' in result.infotexts[0]
    assert edges_on_square_border(result.images[1])


@pytest.mark.parametrize(("change", "message"), [
    ({"model": "missing"}, "ControlNet 0: model 'missing' not found"),
    ({"model": "cn_xl"}, "made for SDXL, the loaded model is SD1"),
    ({"model": "None"}, "ControlNet 0: no model chosen"),
    ({"module": "no_such_module"}, 'ControlNet 0: ControlNet preprocessor "no_such_module" does not exist'),
    ({"image": None}, "ControlNet 0: no input image"),
])
def test_a_unit_that_cannot_run_fails_the_job_by_name(data_dir, change, message):
    use("sd1.safetensors")
    with pytest.raises(runtime.ControlUnitError, match=message):
        txt2img(unit(**change))


@pytest.mark.parametrize(("checkpoint", "model"), [("xl.safetensors", "cn_xl"), ("sd2.safetensors", "cn_sd2")])
def test_sdxl_and_sd2_controlnets(data_dir, unet_inputs, checkpoint, model):
    use(checkpoint)
    plain = txt2img()
    unet_inputs.clear()
    result = txt2img(unit(model, module="none"))
    assert f"Model: {model} [" in result.infotexts[0]
    _, references = data_dir
    assert unet_inputs[0].down_residuals is not None and unet_inputs[0].mid_residual is not None
    assert len(unet_inputs[0].down_residuals) == len(references[model].controlnet_down_blocks)
    assert np.abs(pixels(result) - pixels(plain)).mean() > 0.5
