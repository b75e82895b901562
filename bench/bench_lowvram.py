"""txt2img under a VRAM cap with --medvram / --lowvram offloading (modules/models/offload.py).

SDXL at 1024x1024 under a 4 GiB cap and SD1.5 at 512x512 under 2 GiB (`torch.cuda.set_per_process_memory_fraction`),
random weights at real sizes (bench/full_size.py), fp16, 30 steps, CFG 7, Euler, batch 1, through
`process_images`. For each offload mode (none, medvram, lowvram with leaf-level groups, lowvram with block-level
groups; then medvram with the UNet's weights in 8 bits (A1111's "FP8 weight", modules/models/fp8_storage.py) and
the VAE decoding in tiles (`tiled_vae_decode`), the combination a small card needs for SDXL) it reports seconds per image, the ratio of its speed to the uncapped run without offloading (default
settings, CUDA graphs on), and peak allocated memory. A mode that does not fit the cap is reported as "oom";
the job's out-of-memory retry is switched off here so that each mode is measured as itself.

    python bench/bench_lowvram.py --workdir /tmp/bench --out bench-lowvram.json
    python bench/bench_lowvram.py --small          # tiny models on the CPU, no caps: checks the script runs
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.jobs import ours  # noqa: E402
from bench.timing import timed  # noqa: E402

CASES = {"sdxl": {"size": 1024, "cap_gib": 4.0}, "sd15": {"size": 512, "cap_gib": 2.0}}
# (name, offload mode, lowvram group level, UNet weights in 8 bits + tiled VAE decode); the 8-bit ones run last
MODES = (("none", "none", "leaf_level", False), ("medvram", "medvram", "leaf_level", False),
         ("lowvram_leaf", "lowvram", "leaf_level", False), ("lowvram_block", "lowvram", "block_level", False),
         ("medvram_fp8_tiled", "medvram", "leaf_level", True))


def checkpoint(family: str, workdir: str, small: bool) -> str:
    path = os.path.join(workdir, f"{family}{'-small' if small else ''}.safetensors")
    if os.path.exists(path):
        return path
    if small:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from tiny_models import write_tiny_checkpoint

        write_tiny_checkpoint(path, "sd1" if family == "sd15" else "sdxl", seed=1)
    else:
        from bench.full_size import write_checkpoint_and_config

        write_checkpoint_and_config(family, path, os.path.join(workdir, f"{family}-config"))
    return path


def load(path: str, device: torch.device):
    """Into RAM first (as the manager does under the offload flags); `offload.place` puts it on the device."""
    from modules import devices
    from modules.models.loader import load_model

    precision = devices.choose_precision(device)
    return load_model(path, dataclasses.replace(precision, device=torch.device("cpu")))


def runner(model, size: int, steps: int, tiled_vae: bool = False):
    return ours(model, size, steps, {"tiled_vae_decode": tiled_vae})


def _reset(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(run, repeats: int, cuda: bool) -> dict:
    from modules.models import memory

    _reset(cuda)
    try:
        run()  # warm-up: kernels, allocator, cuDNN choices, stream set-up
        times = [timed(run) for _ in range(repeats)]
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not memory.is_oom(e):
            raise
        return {"oom": True, "error": str(e).splitlines()[0][:200]}
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"oom": False, "s_per_image": statistics.median(times), "all": times, "peak_gib": peak}


def bench_family(family: str, args, device: torch.device) -> dict:
    from modules.models import fp8_storage, offload

    cuda = device.type == "cuda"
    case = CASES[family]
    size = 64 if args.small else case["size"]
    steps = 2 if args.small else args.steps
    model = load(checkpoint(family, args.workdir, args.small), device)
    run = runner(model, size, steps)
    out: dict = {"size": size, "steps": steps, "cap_gib": None if args.small else case["cap_gib"]}

    offload.place(model, device, "none")
    out["uncapped_none"] = base = measure(run, args.repeats, cuda)
    print(family, "uncapped none", json.dumps(base), flush=True)
    total = torch.cuda.get_device_properties(device).total_memory if cuda else 0
    for name, mode, unet_type, small_weights in MODES:
        if args.modes and name not in args.modes.split(","):
            continue
        offload.place(model, torch.device("cpu"), "none")  # nothing of the model on the device while capping
        if small_weights and not fp8_storage.is_fp8(model):
            fp8_storage.convert(model)  # for good: the modes after this one would run on 8-bit weights too
        run = runner(model, size, steps, tiled_vae=small_weights)
        _reset(cuda)
        if cuda and not args.small:
            torch.cuda.set_per_process_memory_fraction(min(1.0, case["cap_gib"] * 2**30 / total), device)
        try:
            offload.place(model, device, mode, unet_offload_type=unet_type)
            result = measure(run, args.repeats, cuda)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if "out of memory" not in str(e).lower() and not isinstance(e, torch.OutOfMemoryError):
                raise
            result = {"oom": True, "error": "placing the model: " + str(e).splitlines()[0][:200]}
        finally:
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
        if not result["oom"] and not base["oom"]:
            result["ratio_to_uncapped"] = base["s_per_image"] / result["s_per_image"]
        out[f"capped_{name}"] = result
        print(family, "capped", name, json.dumps(result), flush=True)
    offload.place(model, torch.device("cpu"), "none")
    del model, run
    _reset(cuda)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench-models"))
    parser.add_argument("--out", default="bench-lowvram.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default="sdxl,sd15")
    parser.add_argument("--modes", default="", help="only these capped modes, by name (default: all)")
    parser.add_argument("--small", action="store_true", help="tiny models on the CPU, no caps (a smoke run)")
    args = parser.parse_args()
    if args.small:
        args.repeats = 1
        device = torch.device("cpu")
    else:
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --small)"
        device = torch.device("cuda", torch.cuda.current_device())
    from modules.models import offload

    offload.run_job = lambda fn, current_model, **_: fn()  # measure each mode as itself: no retry at a lower one
    os.makedirs(args.workdir, exist_ok=True)
    results: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "small": args.small}
    for family in args.families.split(","):
        results[family] = bench_family(family, args, device)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n| model | cap | mode | s/image | ratio to uncapped, no offload | peak GiB |\n|---|---|---|---|---|---|")
    for family in args.families.split(","):
        r = results[family]
        for key, value in r.items():
            if not key.startswith(("capped_", "uncapped_")):
                continue
            cap = "none" if key.startswith("uncapped") or r["cap_gib"] is None else f"{r['cap_gib']} GiB"
            if value["oom"]:
                print(f"| {family} {r['size']}² | {cap} | {key.split('_', 1)[1]} | out of memory | | |")
                continue
            peak = f"{value['peak_gib']:.2f}" if value["peak_gib"] is not None else "-"
            print(f"| {family} {r['size']}² | {cap} | {key.split('_', 1)[1]} | {value['s_per_image']:.2f} | "
                  f"{value.get('ratio_to_uncapped', 1.0):.2f} | {peak} |")


if __name__ == "__main__":
    main()
