"""Where one txt2img job's time goes (issue #18 point 4): a torch.profiler table of one job (SD1.5 512² or, with
`--family sdxl`, SDXL 1024²; 30 steps, CFG 7, Euler) in each engine mode, the job split into prompt encoding / sampling / decode, and every CUDA
synchronisation the sampling loop makes, with the line of our code that made it.

    python bench/profile_step.py --workdir /tmp/bench --out-dir /tmp/profile
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import diffusers_fast_pipeline, diffusers_pipeline, write_checkpoint_and_config  # noqa: E402
from bench.jobs import SIZES, ours, theirs  # noqa: E402
from bench.timing import timed  # noqa: E402


def job(model, size: int, graphs: bool, compiled: bool, steps: int):
    return ours(model, size, steps, {"cuda_graphs": graphs, "compile_unet": compiled})


def sync_sites(run) -> collections.Counter:
    """Our code lines that made a synchronising CUDA call during one job."""
    sites: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        ours = [f for f in traceback.extract_stack() if "/modules/" in f.filename or "k_diffusion" in f.filename
                or "/sampling/" in f.filename]
        sites[" <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in ours[-3:])] += 1

    old = warnings.showwarning
    warnings.showwarning = record
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
    return sites


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out-dir", default="profile")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--modes", default="graphs,compiled,eager")
    parser.add_argument("--family", default="sd15", choices=sorted(SIZES))
    args = parser.parse_args()
    from modules import devices
    from modules.engine import unet_compile
    from modules.models.loader import load_model

    unet_compile.IN_WORKER = False  # compile in the first job: its time is the compiler's, later runs are compiled

    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.workdir, f"{args.family}.safetensors")
    if not os.path.exists(path):
        write_checkpoint_and_config(args.family, path, os.path.join(args.workdir, f"{args.family}-config"))
    model = load_model(path, devices.choose_precision(torch.device("cuda")))
    size = SIZES[args.family]
    modes = {"graphs": (True, False), "compiled": (True, True), "eager": (False, False)}
    for name in args.modes.split(","):
        if name.startswith("diffusers"):  # diffusers_eager, diffusers_compiled: the baselines, for comparison
            from diffusers import EulerDiscreteScheduler

            config_dir = os.path.join(args.workdir, f"{args.family}-config")
            if name == "diffusers_compiled":
                pipe = diffusers_fast_pipeline(args.family, path, config_dir)
            else:
                pipe = diffusers_pipeline(args.family, path, config_dir)
                pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
                pipe.set_progress_bar_config(disable=True)
            run = theirs(pipe, size, args.steps)
        else:
            run = job(model, size, *modes[name], args.steps)
        run(), run()
        seconds = sorted(timed(run) for _ in range(3))[1]
        sites = sync_sites(run)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            run()
        table_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=45)
        table_gpu = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        with open(os.path.join(args.out_dir, f"profile-{args.family}-{name}.txt"), "w") as f:
            f.write(f"{name}: {seconds:.3f} s per job\n\nsynchronising calls (count, our stack):\n")
            f.writelines(f"{n:5d}  {site}\n" for site, n in sites.most_common(30))
            f.write("\n" + table_cpu + "\n\n" + table_gpu + "\n")
        print(f"{name}: {seconds:.3f} s; syncs {sum(sites.values())}: {sites.most_common(4)}", flush=True)


if __name__ == "__main__":
    main()
