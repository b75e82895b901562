"""A1111's "FP8 weight" (`fp8_storage`) on a GPU: SDXL 1024x1024 (and SD1.5 512x512) txt2img with the UNet's
weights in 8 bits against 16 bits, same process, same seed: s/image, the UNet's weight bytes, peak memory, and
PSNR/SSIM of the 8-bit picture against the 16-bit one (random weights at real sizes: the PSNR says how far 8-bit
storage moves a picture, not how good a trained model's picture looks).

    python bench/bench_fp8.py --workdir /tmp/bench --out bench/results/fp8-h200.json
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import write_checkpoint_and_config  # noqa: E402
from bench.jobs import SIZES, ours  # noqa: E402
from bench.quality import quality  # noqa: E402
from bench.report import record  # noqa: E402
from bench.timing import timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-fp8.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default="sdxl,sd15")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    from modules import devices, shared
    from modules.models import fp8_storage
    from modules.models.loader import load_model

    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps}
    for family in args.families.split(","):
        path = os.path.join(args.workdir, f"{family}.safetensors")
        if not os.path.exists(path):
            write_checkpoint_and_config(family, path, os.path.join(args.workdir, f"{family}-config"))
        shared.opts.data["live_previews_enable"] = False
        row: dict = {"size": SIZES[family]}
        images = {}
        for mode in ("16-bit", "8-bit"):
            model = load_model(path, devices.choose_precision(torch.device("cuda")))
            if mode == "8-bit":
                fp8_storage.convert(model)
            row[f"{mode}_unet_gib"] = sum(p.numel() * p.element_size() for p in model.unet.parameters()) / 2**30

            run = ours(model, SIZES[family], args.steps)
            images[mode] = run()
            torch.cuda.reset_peak_memory_stats()
            row[f"{mode}_s"] = statistics.median(timed(run) for _ in range(args.repeats))
            row[f"{mode}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row[f"{mode}_resident_gib"] = torch.cuda.memory_allocated() / 2**30  # what stays between jobs
            del model, run  # the job closure holds the model too; the next mode must not count it
            gc.collect()
            torch.cuda.empty_cache()
        row.update(quality(images["8-bit"], images["16-bit"]))
        record(results, family, row, args.out)


if __name__ == "__main__":
    main()
