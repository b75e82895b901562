"""Checkpoint loading and switching on a CUDA GPU: our loader against diffusers' `from_single_file`.

Writes full-size SD1.5 and SDXL checkpoints with random weights (fp16, original single-file layout), then in one
process times, each repeated and reported as the median:
  - load: file -> all components on the GPU, ready to run (ours: modules.models.loader; diffusers:
    StableDiffusion(XL)Pipeline.from_single_file(...).to("cuda"), offline with a local config folder);
  - switch SD1.5 <-> SDXL: ours through the model manager with A1111's default cache (limit 1, reload from disk)
    and with a two-model cache (limit 2, the other model parked in RAM); diffusers: drop the pipeline, load the
    other one;
  - GPU memory after the switches, to show nothing accumulates.
The page cache is warm for both (the files were just written), so disk speed is not what is measured.

    python bench/bench_loading.py --workdir /tmp/bench --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import diffusers_pipeline, write_checkpoint_and_config  # noqa: E402
from modules import devices  # noqa: E402
from modules.models.loader import load_model  # noqa: E402
from modules.models.manager import CachePolicy, ModelManager  # noqa: E402


class _Info:
    def __init__(self, filename: str):
        self.filename = filename
        self.title = os.path.basename(filename)


def _timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-loading.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switches", type=int, default=6)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    os.makedirs(args.workdir, exist_ok=True)
    files = {}
    for family in ("sd15", "sdxl"):
        path = os.path.join(args.workdir, f"{family}.safetensors")
        config_dir = os.path.join(args.workdir, f"{family}-config")
        start = time.perf_counter()
        write_checkpoint_and_config(family, path, config_dir)
        print(f"wrote {path}: {os.path.getsize(path) / 2**30:.2f} GiB in {time.perf_counter() - start:.1f}s", flush=True)
        files[family] = (path, config_dir)
        _free()

    precision = devices.choose_precision(torch.device("cuda"))
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "load": {}, "switch": {}}
    for family, (path, config_dir) in files.items():
        _timed(lambda path=path: load_model(path, precision))  # warm-up: CUDA context, kernels, page cache
        _free()
        ours = [_timed(lambda path=path: load_model(path, precision)) for _ in range(args.repeats)]
        _free()
        _timed(lambda f=family, p=path, c=config_dir: diffusers_pipeline(f, p, c))
        _free()
        theirs = [_timed(lambda f=family, p=path, c=config_dir: diffusers_pipeline(f, p, c)) for _ in range(args.repeats)]
        _free()
        results["load"][family] = {"ours_s": statistics.median(ours), "diffusers_s": statistics.median(theirs),
                                   "ours_all": ours, "diffusers_all": theirs}
        print(family, "load", results["load"][family], flush=True)

    order = ["sd15", "sdxl"] * (args.switches // 2 + 1)
    for label, policy in (("ours_limit1", CachePolicy(1, True)), ("ours_limit2_keep_in_cpu", CachePolicy(2, True))):
        manager = ModelManager(precision=lambda: precision, policy=lambda policy=policy: policy)
        manager.load(_Info(files["sd15"][0]))
        times = [_timed(lambda m=manager, f=family: m.load(_Info(files[f][0])))
                 for family in order[1 : args.switches + 1]]
        allocated = torch.cuda.memory_allocated() / 2**30
        results["switch"][label] = {"median_s": statistics.median(times), "all": times, "gpu_gib_after": allocated}
        print(label, results["switch"][label], flush=True)
        manager.unload()
        _free()

    holder = {"pipe": diffusers_pipeline("sd15", *files["sd15"])}

    def switch(family: str) -> None:
        holder.pop("pipe")  # drop the old pipeline first, as a user switching models would
        _free()
        holder["pipe"] = diffusers_pipeline(family, *files[family])

    times = [_timed(lambda f=family: switch(f)) for family in order[1 : args.switches + 1]]
    results["switch"]["diffusers"] = {"median_s": statistics.median(times), "all": times,
                                      "gpu_gib_after": torch.cuda.memory_allocated() / 2**30}
    print("diffusers", results["switch"]["diffusers"], flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)

    print("\n| | ours (s) | diffusers from_single_file (s) | speed-up |\n|---|---|---|---|")
    for family, r in results["load"].items():
        print(f"| load {family} | {r['ours_s']:.2f} | {r['diffusers_s']:.2f} | {r['diffusers_s'] / r['ours_s']:.1f}x |")
    d = results["switch"]["diffusers"]["median_s"]
    for label in ("ours_limit1", "ours_limit2_keep_in_cpu"):
        s = results["switch"][label]["median_s"]
        print(f"| switch SD1.5<->SDXL, {label} | {s:.2f} | {d:.2f} | {d / s:.1f}x |")


if __name__ == "__main__":
    main()
