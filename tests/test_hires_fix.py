"""Hires. fix in txt2img (A1111's second pass) on tiny random-weight models: sizes, infotext, latent modes,
pixel upscalers, hires prompt and networks, the ✨ button's firstpass_image, API fields, paste back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules import hires, infotext_utils, processing, request_validation, sd_models, shared


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {
        "sd1.safetensors": {"family": "sd1", "seed": 3},
        "sd1b.safetensors": {"family": "sd1", "seed": 8},
        "sd1-inpaint.safetensors": {"family": "sd1", "variant": "inpaint", "seed": 7},
        "xl.safetensors": {"family": "sdxl", "seed": 5},
        "refiner.safetensors": {"family": "sdxl_refiner", "seed": 6},
    }
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root



def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def txt2img(**kw) -> processing.Processed:
    args = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 42, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True, "enable_hr": True, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    args.update(kw)
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**args))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def params_of(result: processing.Processed, index: int = 0) -> dict:
    return infotext_utils.parse_generation_parameters(result.infotexts[index])


def test_upscale_by_doubles_the_picture_and_writes_a1111_keys(data_dir):
    use("sd1.safetensors")
    plain = txt2img(enable_hr=False)
    result = txt2img(hr_scale=2, hr_second_pass_steps=2)
    assert plain.images[0].size == (64, 64)
    assert result.images[0].size == (128, 128)
    params = params_of(result)
    assert params["Size-1"] == "64" and params["Size-2"] == "64"  # A1111 writes the first pass's size
    assert params["Hires upscale"] == "2" and params["Hires upscaler"] == "Latent"
    assert params["Hires steps"] == "2" and params["Denoising strength"] == "0.6"
    assert "Hires prompt" not in result.infotexts[0]  # the same prompt is not repeated


@pytest.mark.parametrize(("resize", "size", "written"), [
    ((96, 0), (96, 96), "96x0"),  # one side: the aspect ratio is kept
    ((0, 80), (80, 80), "0x80"),
    ((128, 64), (128, 64), "128x64"),  # both sides: cover, then crop the excess
])
def test_resize_to_sizes_and_crop(data_dir, resize, size, written):
    use("sd1.safetensors")
    result = txt2img(hr_resize_x=resize[0], hr_resize_y=resize[1], width=64, height=64)
    assert result.images[0].size == size
    assert params_of(result)["Hires resize-1"] == written.split("x")[0]
    assert "Hires resize: " + written in result.infotexts[0] and "Hires upscale:" not in result.infotexts[0]


def test_target_resolution_rules_match_a1111():
    class P:
        width, height, hr_scale, hr_resize_x, hr_resize_y = 512, 768, 1.5, 0, 0

    assert hires.target_resolution(P) == hires.Target(768, 1152)
    P.hr_resize_x, P.hr_resize_y = 1024, 1024  # portrait to a square: 1024 wide, 1536 high, 64 latent rows cut
    assert hires.target_resolution(P) == hires.Target(1024, 1536, 0, 64)


def test_every_latent_mode_runs_and_they_differ(data_dir):
    use("sd1.safetensors")
    assert list(shared.latent_upscale_modes) == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                                 "Latent (bicubic antialiased)", "Latent (nearest)",
                                                 "Latent (nearest-exact)"]
    outputs = {}
    for mode in shared.latent_upscale_modes:
        result = txt2img(hr_upscaler=mode, hr_scale=1.5, steps=2)
        assert result.images[0].size == (96, 96)
        assert params_of(result)["Hires upscaler"] == mode
        outputs[mode] = pixels(result.images[0])
    distinct = {arr.tobytes() for arr in outputs.values()}
    assert len(distinct) >= 5  # nearest and nearest-exact may agree at 1.5x on a tiny latent


@pytest.mark.parametrize("upscaler", ["Nearest", "Lanczos"])
def test_pixel_upscaler_decodes_upscales_and_encodes(data_dir, upscaler):
    use("sd1.safetensors")
    result = txt2img(hr_upscaler=upscaler)
    latent = txt2img(hr_upscaler="Latent")
    assert result.images[0].size == (128, 128)
    assert params_of(result)["Hires upscaler"] == upscaler
    assert not np.array_equal(pixels(result.images[0]), pixels(latent.images[0]))


def test_unknown_upscaler_sampler_checkpoint_are_refused_by_name(data_dir):
    use("sd1.safetensors")
    for field, value in (("hr_upscaler", "4x-NoSuchModel"), ("hr_sampler_name", "Nope"),
                         ("hr_checkpoint_name", "missing.safetensors"), ("hr_scheduler", "Wobbly")):
        with pytest.raises(request_validation.RequestError, match=field):
            txt2img(**{field: value})


def test_same_seed_same_picture_and_the_second_pass_denoises(data_dir):
    use("sd1.safetensors")
    a, b = txt2img(), txt2img()
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    weaker = txt2img(denoising_strength=0.2)
    assert not np.array_equal(pixels(a.images[0]), pixels(weaker.images[0]))


def test_hires_sampler_scheduler_cfg_prompt_are_used_and_written(data_dir):
    use("sd1.safetensors")
    base = txt2img()
    changed = txt2img(hr_sampler_name="DPM++ 2M", hr_scheduler="Karras", hr_cfg=3.0, hr_prompt="a blue square",
                      hr_negative_prompt="noise")
    params = params_of(changed)
    assert params["Hires sampler"] == "DPM++ 2M" and params["Hires schedule type"] == "Karras"
    assert params["Hires CFG Scale"] == "3.0"
    assert params["Hires prompt"] == "a blue square" and params["Hires negative prompt"] == "noise"
    assert not np.array_equal(pixels(base.images[0]), pixels(changed.images[0]))
    only_prompt = txt2img(hr_prompt="a blue square")
    assert not np.array_equal(pixels(base.images[0]), pixels(only_prompt.images[0]))


def test_batch_and_batch_count_each_get_their_hires_pass(data_dir):
    use("sd1.safetensors")
    result = txt2img(batch_size=2, n_iter=2, steps=2)
    assert [im.size for im in result.images] == [(128, 128)] * 4
    single = txt2img(seed=43, steps=2)
    assert np.abs(pixels(result.images[1]) - pixels(single.images[0])).max() <= 2
    assert params_of(result, 3)["Seed"] == "45"


def test_hires_checkpoint_draws_the_second_pass(data_dir):
    use("sd1.safetensors")
    base = txt2img()
    other = txt2img(hr_checkpoint_name="sd1b.safetensors")
    assert params_of(other)["Hires checkpoint"].startswith("sd1b")
    assert not np.array_equal(pixels(base.images[0]), pixels(other.images[0]))
    assert shared.sd_model.sd_checkpoint_info.filename.endswith("sd1.safetensors")  # the first model stays


def test_inpainting_model_and_sdxl_with_refiner_keep_working(data_dir):
    use("sd1-inpaint.safetensors")
    assert txt2img(hr_upscaler="Latent").images[0].size == (128, 128)
    assert txt2img(hr_upscaler="Nearest").images[0].size == (128, 128)
    use("xl.safetensors")
    result = txt2img(refiner_checkpoint="refiner.safetensors", refiner_switch_at=0.5, hr_scale=1.5, steps=2)
    assert result.images[0].size == (96, 96)
    assert "Refiner: refiner" in result.infotexts[0]


def test_firstpass_image_runs_only_the_hires_pass(data_dir):
    """The ✨ button: hires fix of a finished picture gives what hires fix would have given at generation time
    (for a pixel upscaler the first pass is decoded to exactly that picture), without sampling it again."""
    use("sd1.safetensors")
    picture = txt2img(enable_hr=False).images[0]
    at_generation = txt2img(hr_upscaler="Nearest")
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", negative_prompt="blurry", steps=3, width=64, height=64, seed=42,
        sampler_name="Euler", do_not_save_samples=True, enable_hr=True, hr_upscaler="Nearest",
        denoising_strength=0.6, firstpass_image=picture)
    later = processing.process_images(p)
    assert later.images[0].size == (128, 128)
    assert np.abs(pixels(later.images[0]) - pixels(at_generation.images[0])).max() <= 1
    other = processing.process_images(processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", steps=3, width=64, height=64, seed=42, do_not_save_samples=True, enable_hr=True,
        hr_upscaler="Latent", denoising_strength=0.6, firstpass_image=Image.new("RGB", (64, 64), "white")))
    assert other.images[0].size == (128, 128)
    assert not np.array_equal(pixels(other.images[0]), pixels(later.images[0]))


def test_save_before_highres_fix(data_dir, tmp_path):
    use("sd1.safetensors")
    shared.opts.data["save_images_before_highres_fix"] = True
    try:
        txt2img(do_not_save_samples=False, outpath_samples=str(tmp_path), hr_upscaler="Nearest")
    finally:
        shared.opts.data["save_images_before_highres_fix"] = False
    files = sorted(tmp_path.rglob("*.png"))
    before = [f for f in files if f.name.endswith("-before-highres-fix.png")]
    assert len(before) == 1 and len(files) == 2
    assert Image.open(before[0]).size == (64, 64)
    assert max(Image.open(f).size for f in files) == (128, 128)


def test_paste_of_hires_infotext_fills_the_api_fields():
    from modules.api import infotext as api_infotext
    from modules.api.models import StableDiffusionTxt2ImgProcessingAPI

    text = ("castle\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.45, "
            "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent (bicubic), Hires prompt: \"castle, sharp\", "
            "Hires sampler: DPM++ 2M, Hires schedule type: Karras, Hires CFG Scale: 3")
    req = api_infotext.apply(StableDiffusionTxt2ImgProcessingAPI(infotext=text), "txt2img")
    assert req.enable_hr is True
    assert (req.hr_scale, req.hr_second_pass_steps, req.hr_upscaler) == (2.0, 10, "Latent (bicubic)")
    assert (req.hr_sampler_name, req.hr_scheduler, req.hr_cfg) == ("DPM++ 2M", "Karras", 3.0)
    assert req.hr_prompt == "castle, sharp" and req.denoising_strength == 0.45


def test_ui_accordion_paste_and_apply(data_dir):
    import gradio as gr

    from modules.ui import hires_fix, paste

    with gr.Blocks():
        controls = hires_fix.build("txt2img")
    assert controls.enable_hr.accordion_id == "txt2img_hr"
    assert [c.elem_id for c in controls.inputs[1:]] == [
        "txt2img_hr_upscaler", "txt2img_hires_steps", "txt2img_denoising_strength", "txt2img_hr_scale",
        "txt2img_hr_resize_x", "txt2img_hr_resize_y", "txt2img_hr_cfg", "hr_checkpoint", "hr_sampler",
        "hr_scheduler", "hires_prompt", "hires_neg_prompt"]
    text = ("castle\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.45, "
            "Hires resize: 1024x768, Hires steps: 10, Hires upscaler: Nearest, Hires sampler: DPM++ 2M")
    values = dict(zip([name for name, _ in hires.PASTE_FIELDS], paste.values_for(hires_fix.paste_fields(controls),
                                                         infotext_utils.parse_generation_parameters(text)),
                      strict=True))
    assert values["enable_hr"] is True and values["denoising_strength"] == 0.45
    assert (values["hr_resize_x"], values["hr_resize_y"], values["hr_second_pass_steps"]) == (1024, 768, 10)
    assert values["hr_upscaler"] == "Nearest" and values["hr_sampler_name"] == "DPM++ 2M"
    p = processing.StableDiffusionProcessingTxt2Img()
    hires_fix.apply(p, [False, "Nearest", 0, 0.3, 2, 0, 0, 7, hires.SAME_CHECKPOINT, hires.SAME_SAMPLER,
                        hires.SAME_SCHEDULER, "", ""])
    assert p.enable_hr is False  # a closed accordion changes nothing
    hires_fix.apply(p, [True, "Nearest", 4, 0.3, 1.5, 0, 0, 5, hires.SAME_CHECKPOINT, hires.SAME_SAMPLER,
                        hires.SAME_SCHEDULER, "x", ""])
    assert (p.enable_hr, p.hr_upscaler, p.hr_second_pass_steps, p.denoising_strength, p.hr_scale, p.hr_cfg,
            p.hr_prompt) == (True, "Nearest", 4, 0.3, 1.5, 5.0, "x")


def test_the_hires_pass_runs_exactly_its_steps_on_a_stretched_schedule(data_dir, monkeypatch):
    """A1111 runs exactly `Hires steps` steps (schedule stretched to steps / denoising); so with one hires step
    the denoising strength still decides where that step starts."""
    from modules.engine import generate

    use("sd1.safetensors")
    ran = []
    real = generate.sample_batch

    def record(request, **kw):
        latents = real(request, callback=lambda d: ran.append((request.width, d.get("i"))), **{
            k: v for k, v in kw.items() if k != "callback"})
        return latents

    monkeypatch.setattr(generate, "sample_batch", record)
    weak, strong = txt2img(hr_second_pass_steps=1, denoising_strength=0.3), txt2img(hr_second_pass_steps=1,
                                                                                    denoising_strength=0.9)
    assert not np.array_equal(pixels(weak.images[0]), pixels(strong.images[0]))
    ran.clear()
    txt2img(hr_second_pass_steps=4, denoising_strength=0.3)
    assert [w for w, _ in ran].count(128) == 4  # not int(4 * 0.3) + 1
