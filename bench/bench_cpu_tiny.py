"""CPU seconds per image for a small model: our engine against a plain diffusers StableDiffusionPipeline.

By default the tiny SD1-layout model of the test suite (random weights) is written as a single-file checkpoint;
`--checkpoint` takes any SD1 file instead, e.g. the bundled default model. Our loader loads it, and diffusers'
pipeline is built from the very same modules, so only the engines differ. 20 steps, CFG 7, Euler, 256x256,
float32, batch 1; medians of `--repeats` runs after a warm-up.

    python bench/bench_cpu_tiny.py
    python bench/bench_cpu_tiny.py --checkpoint models/Stable-diffusion/default-shapes-v1.safetensors
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from tiny_models import write_tiny_checkpoint  # noqa: E402

from modules import devices, processing, shared  # noqa: E402
from modules.models.loader import load_model  # noqa: E402

PROMPT, NEGATIVE, SIZE, CFG = "a small red circle at the top left", "blurry", 256, 7.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", default=None, help="an SD1 single file (default: a tiny random model)")
    args = parser.parse_args()
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    path = args.checkpoint
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "tiny.safetensors")
        write_tiny_checkpoint(path, "sd1", seed=1)
    model = load_model(path, devices.choose_precision(torch.device("cpu")))
    shared.opts.data["live_previews_enable"] = False

    def ours() -> None:
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=PROMPT, negative_prompt=NEGATIVE, steps=args.steps, cfg_scale=CFG, width=SIZE, height=SIZE,
            sampler_name="Euler", seed=1, do_not_save_samples=True, do_not_save_grid=True)
        p.sd_model = model
        processing.process_images(p)

    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def theirs() -> None:
        pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=CFG, width=SIZE,
             height=SIZE, generator=torch.Generator().manual_seed(1))

    ours(), theirs()
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("diffusers", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    o, t = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(f"CPU ({torch.get_num_threads()} threads), {os.path.basename(path)}, {SIZE}x{SIZE}, {args.steps} steps, CFG {CFG}:")
    print(f"ours {o:.3f} s/image, diffusers {t:.3f} s/image, ratio {t / o:.2f}")


if __name__ == "__main__":
    main()
