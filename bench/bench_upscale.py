"""4x upscale of a 1024x1024 picture with a real-size RRDB (ESRGAN 4x: 64 filters, 23 blocks, random weights):
our upscaler registry against calling spandrel directly, on a CUDA GPU.

Ours: the file is written to <workdir>/models/ESRGAN, listed by `modules.upscalers.refresh()` and run the way
every caller runs it, `UpscalerData.scaler.upscale(PIL image, 4, data_path)` (PIL in, PIL out: conversion,
transfer, cache lookup, memory owner and tiling included), fp16 as the registry picks it on CUDA.
Spandrel direct: the same file through `spandrel.ModelLoader().load_from_file`, `.half().cuda()`, and what a
caller writes around it: PIL -> float tensor on the GPU -> `model(tensor)` -> PIL; with tiling it runs the same
tile grid (`upscale_tiled`, the same tile and overlap) so both sides do the same arithmetic. The runs alternate
(ours, spandrel, ours, ...). Two more columns time the network alone on a tensor already on the GPU, through our
loaded model and through spandrel's, to show where a difference comes from.

Two cases: tiling on with the default settings (`ESRGAN_tile` 192, `ESRGAN_tile_overlap` 8) and tiling off
(`ESRGAN_tile` 0, one pass over the whole picture). Times are medians of `--repeats` warm runs with
torch.cuda.synchronize() around each; ratio = spandrel seconds / our seconds (goal: >= 0.95).

    python bench/bench_upscale.py --workdir /tmp/bench-upscale --out bench/results/upscale-h200.json

`--small` runs the same steps with a tiny RRDB on a 64x64 picture, on the CPU if there is no GPU: it checks
the script, it does not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modules import cmd_args, devices, shared, upscaler_models, upscalers  # noqa: E402
from modules.upscaler_tiling import upscale_tiled  # noqa: E402

MODEL_NAME = "4x_bench_RRDB"


def write_model(path: str, small: bool) -> None:
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(num_filters=8 if small else 64, num_blocks=1 if small else 23, scale=4)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def _synced(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_alternating(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Each function warmed once, then run in turn `repeats` times, so clock and allocator drift hit all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_synced(fn, device))
    return times


def pil_to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """What a caller of spandrel writes: HWC uint8 -> NCHW float in [0, 1] on the device."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    array = (tensor[0].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def bench_case(path: str, image: Image.Image, tile: int, overlap: int, device: torch.device,
               repeats: int) -> dict[str, Any]:
    import spandrel

    shared.opts.data["ESRGAN_tile"] = tile
    shared.opts.data["ESRGAN_tile_overlap"] = overlap
    data = upscalers.find(MODEL_NAME)
    assert data is not None, "the registry did not list the benchmark model"
    data.scaler.upscale(image, 4, data.data_path)  # loads it into our cache
    loaded = upscaler_models.get_model(data.data_path)

    direct = spandrel.ModelLoader().load_from_file(path).eval().to(device=device, dtype=loaded.dtype)

    def network(model: Any, tensor: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if tile > 0:
                return upscale_tiled(model, tensor, model.scale, tile, overlap)
            return model(tensor)

    tensor = pil_to_tensor(image, device, loaded.dtype)
    times = timed_alternating({
        "ours": lambda: data.scaler.upscale(image, 4, data.data_path),
        "spandrel": lambda: tensor_to_pil(network(direct, pil_to_tensor(image, device, loaded.dtype))),
        # the network alone on a tensor already on the device, both models: where any difference comes from
        "ours_network": lambda: network(loaded.descriptor, tensor),
        "spandrel_network": lambda: network(direct, tensor),
    }, device, repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"tile": tile, "overlap": overlap, "dtype": str(loaded.dtype).replace("torch.", ""),
            "ours_s": medians["ours"], "spandrel_s": medians["spandrel"],
            "ratio": medians["spandrel"] / medians["ours"],
            "ours_network_s": medians["ours_network"], "spandrel_network_s": medians["spandrel_network"],
            "all": times}


def table(results: dict[str, Any]) -> str:
    lines = [f"4x RRDB upscale of {results['size']}x{results['size']} on {results['device']} "
             f"({results['cases'][0]['dtype']})", "",
             "| tiling | ours (s) | spandrel direct (s) | ratio (spandrel / ours) | network only: ours / spandrel (s) |",
             "|---|---|---|---|---|"]
    for case in results["cases"]:
        tiling = f"tile {case['tile']}, overlap {case['overlap']}" if case["tile"] else "off"
        lines.append(f"| {tiling} | {case['ours_s']:.3f} | {case['spandrel_s']:.3f} | {case['ratio']:.3f} "
                     f"| {case['ours_network_s']:.3f} / {case['spandrel_network_s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-upscale")
    parser.add_argument("--out", default="bench-upscale.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="side of the square input picture")
    parser.add_argument("--small", action="store_true", help="tiny RRDB, 64x64 picture, any device: a smoke test")
    args = parser.parse_args()
    if args.small:
        args.size, args.repeats = min(args.size, 64), min(args.repeats, 2)
    elif not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --small)")

    # Our model folders follow --data-dir, as in a real start; nothing is written to the repository.
    shared.set_cmd_opts(cmd_args.parse_args(["--data-dir", args.workdir], environ={}))
    devices.configure(devices.precision_from_cmd_opts(shared.cmd_opts))
    device = devices.device
    path = os.path.join(args.workdir, "models", "ESRGAN", f"{MODEL_NAME}.safetensors")
    start = time.perf_counter()
    write_model(path, args.small)
    upscalers.refresh()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8), "RGB")
    setup_s = time.perf_counter() - start

    import spandrel

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "spandrel": spandrel.__version__, "size": args.size, "repeats": args.repeats, "small": args.small,
        "model": "ESRGAN 4x, 8 filters, 1 block" if args.small else "ESRGAN 4x, 64 filters, 23 blocks",
        "setup_s": setup_s,
    }
    default_tile = shared.opts.data_labels["ESRGAN_tile"].default
    default_overlap = shared.opts.data_labels["ESRGAN_tile_overlap"].default
    if args.small:
        default_tile, default_overlap = 32, 8  # a 64x64 picture would be a single 192 tile
    results["cases"] = [bench_case(path, image, tile, overlap, device, args.repeats)
                        for tile, overlap in ((default_tile, default_overlap), (0, default_overlap))]
    if device.type == "cuda":
        results["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results["table"] = table(results)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(results["table"])


if __name__ == "__main__":
    main()
