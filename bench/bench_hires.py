"""Hires fix's second pass on a CUDA GPU: ours against diffusers' img2img pipeline doing the same pass.

SDXL (random weights at real sizes, fp16): a finished 1024x1024 picture is enlarged to 1536x1536 with Lanczos and
redrawn at denoising strength 0.7, 30 steps (so 21 are run on both sides: ours gets "Hires steps" 21, since
A1111's default of 0 would run all 30), CFG 7, Euler. Ours: `process_images` with
`enable_hr` and `firstpass_image` (the ✨ button's path: only the second pass), upscaler "Lanczos". Theirs:
`StableDiffusionXLImg2ImgPipeline` built from the same components, given the same picture enlarged with PIL's
Lanczos (the enlargement is timed on both sides). Medians of `--repeats` alternating runs after a warm-up.

    python bench/bench_hires.py --workdir /tmp/bench --out results.json
    python bench/bench_hires.py --small          # a smoke test on any machine (SD1.5 sizes, 64 -> 96, 4 steps)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import timed  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def first_pass_picture(size: int) -> Image.Image:
    """A deterministic, detailed picture (noise-free gradients and shapes) to redraw."""
    x = torch.linspace(0, 1, size)
    r = (x[None, :] * 255).expand(size, size)
    g = (x[:, None] * 255).expand(size, size)
    b = ((torch.sin(x[None, :] * 40) * torch.cos(x[:, None] * 30) + 1) * 127.5)
    return Image.fromarray(torch.stack([r, g, b], -1).to(torch.uint8).numpy())


def unet_steps(steps: int, denoise: float) -> int:
    """The denoising steps diffusers' img2img runs for `steps` at `denoise` (int(steps * strength)).

    A1111's hires fix with "Hires steps" 0 runs all `steps` in the second pass (its schedule is stretched to
    steps / denoise); with "Hires steps" N it runs N. Ours is given N = this number, so both sides run the same
    UNet evaluations on the same part of the noise schedule."""
    return min(int(steps * denoise), steps)


def ours_runner(model, picture: Image.Image, scale: float, steps: int, denoise: float):
    from modules import processing, shared

    shared.opts.data["live_previews_enable"] = False

    def run():
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=7.0, width=picture.width,
            height=picture.height, sampler_name="Euler", seed=1234, do_not_save_samples=True, do_not_save_grid=True,
            enable_hr=True, hr_scale=scale, hr_upscaler="Lanczos", denoising_strength=denoise,
            hr_second_pass_steps=unet_steps(steps, denoise), firstpass_image=picture)
        p.sd_model = model
        out = processing.process_images(p)
        assert out.images[0].size == (int(picture.width * scale), int(picture.height * scale)), out.images[0].size

    return run


def diffusers_runner(pipe, picture: Image.Image, scale: float, steps: int, denoise: float):
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    cls = StableDiffusionXLImg2ImgPipeline if "XL" in type(pipe).__name__ else StableDiffusionImg2ImgPipeline
    img2img = cls(**{k: v for k, v in pipe.components.items() if k in cls._optional_components
                     or k in cls.__init__.__code__.co_varnames})
    img2img.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    img2img.set_progress_bar_config(disable=True)
    size = (int(picture.width * scale), int(picture.height * scale))

    def run():
        enlarged = picture.resize(size, resample=Image.Resampling.LANCZOS)
        generator = torch.Generator(pipe.device).manual_seed(1234)
        img2img(PROMPT, negative_prompt=NEGATIVE, image=enlarged, strength=denoise, num_inference_steps=steps,
                guidance_scale=7.0, generator=generator)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-hires.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--denoise", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny SD1 model, 64 -> 96, 4 steps, any device")
    args = parser.parse_args()
    from modules import devices
    from modules.models.loader import load_model

    if args.small:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from tiny_models import write_tiny_checkpoint

        os.makedirs(args.workdir, exist_ok=True)
        path = os.path.join(args.workdir, "tiny-sd1.safetensors")
        write_tiny_checkpoint(path, family="sd1", seed=3)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(path, devices.choose_precision(device))
        picture, steps, repeats = first_pass_picture(64), 4, 1
        run = ours_runner(model, picture, 1.5, steps, args.denoise)
        run()
        print(f"smoke: ours {statistics.median([timed(run) for _ in range(repeats)]):.2f} s for 64 -> 96")
        return
    from bench.full_size import diffusers_pipeline, write_checkpoint_and_config

    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --small)"
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "sdxl.safetensors")
    config_dir = os.path.join(args.workdir, "sdxl-config")
    if not os.path.exists(path):
        write_checkpoint_and_config("sdxl", path, config_dir)
    picture = first_pass_picture(1024)
    model = load_model(path, devices.choose_precision(torch.device("cuda")))
    ours = ours_runner(model, picture, 1.5, args.steps, args.denoise)
    theirs = diffusers_runner(diffusers_pipeline("sdxl", path, config_dir), picture, 1.5, args.steps, args.denoise)
    ours(), theirs()  # warm-up: kernels, allocator, cuDNN autotune, graph capture at the new size
    ours_t, theirs_t = [], []
    for _ in range(args.repeats):
        ours_t.append(timed(ours))
        theirs_t.append(timed(theirs))
    o, t = statistics.median(ours_t), statistics.median(theirs_t)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps,
               "unet_steps_each_side": unet_steps(args.steps, args.denoise),
               "denoise": args.denoise, "from": 1024, "to": 1536, "ours_s": o, "diffusers_s": t, "ratio": t / o,
               "ours_all": ours_t, "diffusers_all": theirs_t,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    n = unet_steps(args.steps, args.denoise)
    print(f"| SDXL hires second pass 1024 -> 1536, {n} of {args.steps} steps | ours s/image | diffusers img2img s/image "
          "| ratio |"
          f"\n|---|---|---|---|\n| fp16, Euler, CFG 7 | {o:.2f} | {t:.2f} | {t / o:.2f} |")


if __name__ == "__main__":
    main()
