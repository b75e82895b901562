"""Token merging (ToMe) and tiled VAE decode on a CUDA GPU (issue #18 point 6): speed, peak memory, and how far the
picture moves (PSNR, SSIM against the default picture of the same seed).

- txt2img, SD1.5 at 512x512 and SDXL at 1024x1024 (random weights at real sizes, fp16, `--steps` steps, CFG 7,
  Euler, batch 1, end to end through `process_images`): ToMe off, 0.3 and 0.5 with A1111's arguments, each with
  CUDA graphs on (the default: a ToMe job re-captures its graphs, since the patch changes the forward) and off.
  SDXL has no attention at full latent resolution, so A1111's max_downsample=1 merges nothing there; the rows
  marked "md2" merge at the next level too (max_downsample=2, not an A1111 setting) to show what that would give.
- VAE decode of a 2048x2048 picture (256x256 latent), whole against tiles of 512 and 1024 pixels (the settings
  tiled_vae_decode / tiled_vae_tile_size), with each family's VAE.

Random weights: PSNR/SSIM say how far a picture moves, not how good it looks. Medians of `--repeats` runs after a
warm-up run of each variant.

    python bench/bench_tome_tiled_vae.py --workdir /tmp/bench --out bench/results/tome-tiled-vae-h200.json
    python bench/bench_tome_tiled_vae.py --small    # a smoke test on any machine (tiny SD1 model, CPU is fine)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.quality import quality  # noqa: E402
from bench.timing import sync, timed  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"
RATIOS = (0.0, 0.3, 0.5)


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def tome_arguments(**overrides: Any) -> Iterator[None]:
    """The benchmark's own tomesd arguments (max_downsample=2 for SDXL); A1111's are put back after."""
    from modules.engine import token_merging

    saved = dict(token_merging.A1111_ARGUMENTS)
    token_merging.A1111_ARGUMENTS.update(overrides)
    try:
        yield
    finally:
        token_merging.A1111_ARGUMENTS.clear()
        token_merging.A1111_ARGUMENTS.update(saved)


def txt2img_runner(model, size: int, steps: int, ratio: float, graphs: bool) -> Callable[[], np.ndarray]:
    from modules import processing, shared

    def run() -> np.ndarray:
        shared.opts.data["live_previews_enable"] = False
        shared.opts.data["cuda_graphs"] = graphs
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=7.0, width=size, height=size,
            sampler_name="Euler", seed=1234, do_not_save_samples=True, do_not_save_grid=True,
            token_merging_ratio=ratio)
        p.sd_model = model
        result = processing.process_images(p)
        if ratio:
            assert f"Token merging ratio: {ratio}" in result.infotexts[0], result.infotexts[0]
        return np.asarray(result.images[0].convert("RGB"))

    return run


def measure(run: Callable[[], np.ndarray], repeats: int) -> tuple[dict[str, Any], np.ndarray]:
    picture = run()  # warm-up: kernels, allocator, graph capture at this size
    reset_peak()
    times = [timed(run) for _ in range(repeats)]
    return {"s": statistics.median(times), "all_s": times, "peak_gib": peak_gib()}, picture


def bench_tome(model, family: str, size: int, steps: int, repeats: int, graph_modes: list[bool]) -> list[dict]:
    variants: list[tuple[str, float, dict[str, Any]]] = [(f"tome {r}" if r else "off", r, {}) for r in RATIOS]
    if family == "sdxl":
        variants += [(f"tome {r} md2", r, {"max_downsample": 2}) for r in RATIOS if r]
    rows, reference = [], None
    for graphs in graph_modes:
        for label, ratio, overrides in variants:
            with tome_arguments(**overrides):
                timing, picture = measure(txt2img_runner(model, size, steps, ratio, graphs), repeats)
            if reference is None:
                reference = picture  # ToMe off, the first graph mode: the default picture
            row = {"family": family, "size": size, "variant": label, "ratio": ratio, "cuda_graphs": graphs,
                   **timing, **quality(picture, reference)}
            rows.append(row)
            print(f"{family} {size}² {label:>12} graphs={'on ' if graphs else 'off'} {row['s']:.3f} s "
                  f"psnr={row['psnr_db']} ssim={row['ssim']}", flush=True)
    off = {r["cuda_graphs"]: r["s"] for r in rows if r["variant"] == "off"}
    for row in rows:
        row["speedup_vs_off"] = off[row["cuda_graphs"]] / row["s"]
    return rows


def bench_decode(model, family: str, size: int, tiles: list[int], repeats: int) -> list[dict]:
    from modules.engine import generate

    factor = model.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(7)
    latents = torch.randn(1, 4, size // factor, size // factor, generator=generator).to(model.device)
    rows, reference = [], None
    for tile in [0, *tiles]:
        def run(tile: int = tile) -> np.ndarray:
            images = generate.vae_decode(model, latents, tile_size=tile)
            return (images[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)

        try:
            timing, picture = measure(run, repeats)
        except torch.OutOfMemoryError:
            rows.append({"family": family, "size": size, "tile": tile, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        if reference is None:
            reference = picture
        row = {"family": family, "size": size, "tile": tile or None, **timing, **quality(picture, reference)}
        rows.append(row)
        print(f"{family} decode {size}² tile={tile or 'whole':>5} {row['s']:.3f} s peak={row['peak_gib']} GiB "
              f"psnr={row['psnr_db']} ssim={row['ssim']}", flush=True)
    return rows


def load(path: str, device: torch.device):
    from modules import devices
    from modules.models.loader import load_model

    return load_model(path, devices.choose_precision(device))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-tome-tiled-vae.json")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--decode-size", type=int, default=2048)
    parser.add_argument("--tiles", default="512,1024", help="tile sizes in pixels for the decode rows")
    parser.add_argument("--graphs", choices=["both", "on", "off"], default="both")
    parser.add_argument("--small", action="store_true", help="tiny SD1 model: 64x64 txt2img, 256x256 decode in "
                                                             "tiles of 128, any device")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    graph_modes = {"both": [True, False], "on": [True], "off": [False]}[args.graphs]
    results: dict[str, Any] = {"torch": torch.__version__, "steps": args.steps, "repeats": args.repeats,
                               "txt2img": [], "decode": []}

    if args.small:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from tiny_models import write_tiny_checkpoint

        path = os.path.join(args.workdir, "tiny-sd1.safetensors")
        write_tiny_checkpoint(path, family="sd1", seed=3)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load(path, device)
        results["device"] = str(device)
        results["txt2img"] = bench_tome(model, "tiny-sd1", 64, 4, 1, graph_modes[:1])
        results["decode"] = bench_decode(model, "tiny-sd1", 256, [128], 1)
    else:
        from bench.full_size import write_checkpoint_and_config

        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --small)"
        results["device"] = torch.cuda.get_device_name(0)
        sizes = {"sd15": 512, "sdxl": 1024}
        for family in args.families.split(","):
            path = os.path.join(args.workdir, f"{family}.safetensors")
            if not os.path.exists(path):
                write_checkpoint_and_config(family, path, os.path.join(args.workdir, f"{family}-config"))
            model = load(path, torch.device("cuda"))
            results["txt2img"] += bench_tome(model, family, sizes[family], args.steps, args.repeats, graph_modes)
            tiles = [int(t) for t in args.tiles.split(",") if t]
            results["decode"] += bench_decode(model, family, args.decode_size, tiles, args.repeats)
            del model
            torch.cuda.empty_cache()

    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
