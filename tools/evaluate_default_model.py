"""Measure how well a checkpoint follows scene captions it never saw in training (issue 6's quality bar).

Held-out scenes (shape-colour and shape-position pairs the training sampler never produces) are captioned, each
caption is generated through the same engine users hit (`process_images`, 20 steps, CFG 7, default sampler, by
default at 256x256), and the checker scores every asked attribute. Prints per-attribute and overall accuracy as
JSON; `--grid PATH` also writes the first 16 prompts with their images.

    python tools/evaluate_default_model.py --checkpoint models/Stable-diffusion/default.safetensors --n 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules import devices, processing, shared  # noqa: E402
from modules.models.loader import load_model  # noqa: E402
from tools.default_model import checker, scenes  # noqa: E402


def held_out_captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [scenes.caption(scenes.sample_scene(rng, require_held_out=True)) for _ in range(n)]


def generate(model, prompt: str, seed: int, size: int, steps: int, cfg: float) -> tuple[Image.Image, float]:
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=prompt, negative_prompt="", steps=steps, cfg_scale=cfg, width=size, height=size,
        sampler_name="DPM++ 2M", seed=seed, do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    start = time.perf_counter()
    image = processing.process_images(p).images[0]
    return image, time.perf_counter() - start


def write_grid(path: str, items: list[tuple[str, Image.Image]], cols: int = 4) -> None:
    size = items[0][1].width
    rows = (len(items) + cols - 1) // cols
    grid = Image.new("RGB", (cols * size, rows * (size + 40)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (prompt, image) in enumerate(items):
        x, y = (i % cols) * size, (i // cols) * (size + 40)
        grid.paste(image, (x, y))
        draw.multiline_text((x + 4, y + size + 2), "\n".join([prompt[:48], prompt[48:96]]), fill="black")
    grid.save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", default=None)
    args = parser.parse_args()

    shared.opts.data["live_previews_enable"] = False
    precision = devices.choose_precision(torch.device(args.device))
    model = load_model(args.checkpoint, precision)
    results, times, shown = [], [], []
    for i, prompt in enumerate(held_out_captions(args.n, args.seed)):
        image, seconds = generate(model, prompt, args.seed + i, args.size, args.steps, args.cfg)
        results.append(checker.check(image, prompt))
        times.append(seconds)
        if len(shown) < 16:
            shown.append((prompt, image))
    summary = checker.summarize(results)
    summary.update(n=args.n, device=args.device, median_seconds_per_image=float(np.median(times)))
    print(json.dumps(summary, indent=1))
    if args.grid:
        write_grid(args.grid, shown)


if __name__ == "__main__":
    main()
