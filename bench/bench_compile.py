"""Compiled engine against diffusers' fastest recipe, every column in one process on one GPU (issue #18 point 1).

For SD1.5 512x512 and SDXL 1024x1024 (random weights at real sizes, fp16, 30 steps, CFG 7, Euler, batch 1, end to
end: prompt encoding, sampling, VAE decode):
- ours with CUDA graphs (the default), ours eager (`cuda_graphs` off), ours compiled (`compile_unet` on, replayed
  in our CUDA graphs, on a second copy of the model: compiling stores its weights channels-last);
  `--channels-last` stores the first copy's UNet weights channels-last too (not what the product does);
- diffusers eager (`StableDiffusion(XL)Pipeline`), and diffusers compiled as its speed guide says: channels_last,
  fused QKV projections, `torch.compile(mode="reduce-overhead")` on the UNet and on the VAE decode.
Compile times are the first call's wall time. The compiled image is compared with our eager image of the same
seed (PSNR, dB). Medians of `--repeats` rounds after warm-up; each round runs every column twice in turn and
times the second run.

    python bench/bench_compile.py --workdir /tmp/bench --out bench/results/compile-h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import diffusers_fast_pipeline, diffusers_pipeline, write_checkpoint_and_config  # noqa: E402
from bench.jobs import SIZES, ours, theirs  # noqa: E402
from bench.quality import quality  # noqa: E402
from bench.timing import sync, timed  # noqa: E402


def first_call(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_family(family: str, args, results: dict, save) -> None:
    from diffusers import EulerDiscreteScheduler

    from modules import devices
    from modules.models.loader import load_model

    path = os.path.join(args.workdir, f"{family}.safetensors")
    config_dir = os.path.join(args.workdir, f"{family}-config")
    if not os.path.exists(path):
        write_checkpoint_and_config(family, path, config_dir)
    row: dict = {"size": SIZES[family]}

    model = load_model(path, devices.choose_precision(torch.device("cuda")))
    if args.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    # a model of its own: compiling stores the weights channels-last, which the other columns must not inherit
    compiled_model = load_model(path, devices.choose_precision(torch.device("cuda")))
    size = SIZES[family]
    runs = {"ours_graphs": ours(model, size, args.steps, {"cuda_graphs": True, "compile_unet": False}),
            "ours_eager": ours(model, size, args.steps, {"cuda_graphs": False, "compile_unet": False}),
            "ours_compiled": ours(compiled_model, size, args.steps, {"cuda_graphs": True, "compile_unet": True})}
    row["ours_compile_s"] = first_call(runs["ours_compiled"])
    images = {name: run() for name, run in runs.items()}  # warm-up (graph capture) and the images
    row["compiled_vs_eager"] = quality(images["ours_compiled"], images["ours_eager"])
    row["graphs_vs_eager"] = quality(images["ours_graphs"], images["ours_eager"])
    results[family] = row
    save()

    pipe = diffusers_pipeline(family, path, config_dir)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    runs["diffusers_eager"] = theirs(pipe, size, args.steps)
    runs["diffusers_eager"]()
    if not args.no_diffusers_compiled:
        fast = diffusers_fast_pipeline(family, path, config_dir)  # a second pipeline on the same files
        runs["diffusers_compiled"] = theirs(fast, size, args.steps)
        row["diffusers_compile_s"] = first_call(runs["diffusers_compiled"])
        runs["diffusers_compiled"]()
        save()

    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            # an untimed run first: switching between our modes re-captures the CUDA graphs (a compiled forward
            # replaces the plain one's graphs), which a server that stays in one mode never pays per job
            run()
            times[name].append(timed(run))
        row.update({f"{name}_all": values for name, values in times.items()})
        save()
    for name, values in times.items():
        row[f"{name}_s"] = statistics.median(values)
        row[f"{name}_it_s"] = args.steps / statistics.median(values)
        row[f"{name}_all"] = values
    if "diffusers_compiled_s" in row:
        row["ratio_compiled"] = row["diffusers_compiled_s"] / row["ours_compiled_s"]
    row["ratio_eager"] = row["diffusers_eager_s"] / row["ours_eager_s"]
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results[family] = row
    print(family, json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
    del runs, pipe, model, compiled_model
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-compile.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-diffusers-compiled", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    from modules.engine import unet_compile

    unet_compile.IN_WORKER = False  # compile in the first job: its time is the compiler's, later runs are compiled
    os.makedirs(args.workdir, exist_ok=True)
    import diffusers

    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "steps": args.steps, "channels_last": args.channels_last}
    def save() -> None:  # after every stage, so a run cut short still leaves its figures
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    for family in args.families.split(","):
        bench_family(family, args, results, save)
        save()
    print("\n| model | ours graphs | ours eager | ours compiled | diffusers eager | diffusers compiled | compiled ratio |"
          "\n|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        r = results[family]
        cells = [f"{r[k + '_s']:.3f} ({r[k + '_it_s']:.0f})" if k + "_s" in r else "-"
                 for k in ("ours_graphs", "ours_eager", "ours_compiled", "diffusers_eager", "diffusers_compiled")]
        print(f"| {family} | " + " | ".join(cells) + f" | {r.get('ratio_compiled', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
