"""txt2img speed on a CUDA GPU: our engine against plain diffusers pipelines, same weights, same process.

For SD1.5 at 512x512 and SDXL at 1024x1024 (random weights at real sizes, fp16): 30 steps, CFG 7, Euler,
batch 1. Ours: `process_images` on a `StableDiffusionProcessingTxt2Img` (nothing saved, no previews). Theirs:
`StableDiffusionPipeline` / `StableDiffusionXLPipeline.from_single_file` on the same file with
`EulerDiscreteScheduler`. Ours runs with CUDA-graph replay of the UNet (the default) and without. Each side is warmed up, then timed `--repeats` times, alternating; medians are
reported as seconds per image and iterations per second (steps / seconds, end to end: text encoding, sampling
and VAE decode included), and the ratio (ours / diffusers speed).

    python bench/bench_txt2img.py --workdir /tmp/bench --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import diffusers_pipeline, write_checkpoint_and_config  # noqa: E402
from bench.jobs import SIZES, ours, theirs  # noqa: E402
from bench.timing import timed  # noqa: E402


def ours_runner(path: str, family: str, steps: int, graphs: bool = True):
    from modules import devices
    from modules.models.loader import load_model

    model = load_model(path, devices.choose_precision(torch.device("cuda")))
    return ours(model, SIZES[family], steps, {"cuda_graphs": graphs})


def diffusers_runner(path: str, config_dir: str, family: str, steps: int):
    from diffusers import EulerDiscreteScheduler

    pipe = diffusers_pipeline(family, path, config_dir)
    # pipe.to() moves only the torch modules, so swapping the scheduler after it changes nothing
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return theirs(pipe, SIZES[family], steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-txt2img.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", default="sd15,sdxl")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    os.makedirs(args.workdir, exist_ok=True)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps}
    for family in args.families.split(","):
        path = os.path.join(args.workdir, f"{family}.safetensors")
        config_dir = os.path.join(args.workdir, f"{family}-config")
        if not os.path.exists(path):
            write_checkpoint_and_config(family, path, config_dir)
        ours = ours_runner(path, family, args.steps)
        eager = ours_runner(path, family, args.steps, graphs=False)
        theirs = diffusers_runner(path, config_dir, family, args.steps)
        ours(), eager(), theirs()  # warm-up: kernels, allocator, cuDNN autotune, graph capture
        ours_t, eager_t, theirs_t = [], [], []
        for _ in range(args.repeats):
            ours_t.append(timed(ours))
            eager_t.append(timed(eager))
            theirs_t.append(timed(theirs))
        o, e, t = statistics.median(ours_t), statistics.median(eager_t), statistics.median(theirs_t)
        results[family] = {
            "size": SIZES[family], "ours_s_per_image": o, "diffusers_s_per_image": t,
            "ours_it_s": args.steps / o, "diffusers_it_s": args.steps / t, "ratio": t / o,
            "ours_eager_s_per_image": e, "ratio_eager": t / e,
            "ours_all": ours_t, "ours_eager_all": eager_t, "diffusers_all": theirs_t,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        print(family, json.dumps(results[family]), flush=True)
        del ours, eager, theirs
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n| model | ours s/image (it/s) | ours, no CUDA graphs | diffusers s/image (it/s) | ratio (graphs / eager) |"
          "\n|---|---|---|---|---|")
    for family in args.families.split(","):
        r = results[family]
        print(f"| {family} {r['size']}x{r['size']} | {r['ours_s_per_image']:.2f} ({r['ours_it_s']:.1f}) | "
              f"{r['ours_eager_s_per_image']:.2f} | {r['diffusers_s_per_image']:.2f} ({r['diffusers_it_s']:.1f}) | "
              f"{r['ratio']:.2f} / {r['ratio_eager']:.2f} |")


if __name__ == "__main__":
    main()
