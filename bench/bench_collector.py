"""Start-up and checkpoint switches with the garbage collector as Python leaves it ("plain") and as the server
runs it ("server": paused while the libraries are imported, their objects frozen before the first model,
`modules.initialize.freeze_imported_objects`), on the CPU with the bundled default model.

Imports make ~600,000 objects that live as long as the process: the collector walks them again and again while
they are made, and every load, switch and unload runs a full collection to give memory back. Each mode runs in
fresh processes (alternated) that import what the server imports (gradio and the page's modules included), load
one copy of the bundled checkpoint, make one 256x256 20-step picture (seconds since the process started, for
each), then switch between two copies through the model manager with A1111's default cache (one model: every
switch loads from disk); medians.

    python bench/bench_collector.py --switches 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(ROOT, "models", "Stable-diffusion", "default-shapes-v1.safetensors")


class _Info:
    def __init__(self, filename: str):
        self.filename = filename
        self.title = os.path.basename(filename)


def child(folder: str, switches: int, server: bool, t0: float) -> None:
    import gc

    if server:
        gc.disable()
    sys.path.insert(0, ROOT)
    import torch

    import modules.ui  # noqa: F401  (the server's imports: gradio and the page's modules)
    from bench.jobs import ours
    from modules import devices, initialize
    from modules.models.manager import ModelManager

    if server:
        initialize.freeze_imported_objects()
    marks = {"imported_s": time.time() - t0}
    precision = devices.choose_precision(torch.device("cpu"))
    manager = ModelManager(lambda: precision)
    files = [os.path.join(folder, name) for name in ("a.safetensors", "b.safetensors")]
    model = manager.load(_Info(files[1]))
    marks["loaded_s"] = time.time() - t0
    ours(model, 256, 20)()
    marks["first_image_s"] = time.time() - t0
    del model
    gc.enable()
    times = []
    for i in range(switches):
        start = time.perf_counter()
        manager.load(_Info(files[i % 2]))
        times.append(time.perf_counter() - start)
    marks["switch_s"] = statistics.median(times)
    print("RESULT " + json.dumps({**marks, "objects": len(gc.get_objects()), "frozen": gc.get_freeze_count()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=8)
    parser.add_argument("--child", choices=["plain", "server"])
    parser.add_argument("--t0", type=float)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.switches, args.child == "server", args.t0)
        return
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("a.safetensors", "b.safetensors"):
            shutil.copy(BUNDLED, os.path.join(folder, name))
        for _ in range(args.runs):
            for mode in ("plain", "server"):  # alternated, so drift hits both
                argv = [sys.executable, os.path.abspath(__file__), "--child", mode, "--folder", folder,
                        "--switches", str(args.switches), "--t0", repr(time.time())]
                out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
                line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
                results.setdefault(mode, []).append(json.loads(line[7:]))
    for mode, runs in results.items():
        medians = {key: statistics.median(r[key] for r in runs)
                   for key in ("imported_s", "loaded_s", "first_image_s", "switch_s")}
        print(f"{mode}: " + ", ".join(f"{key} {value:.2f}" for key, value in medians.items())
              + f" ({runs[0]['objects']} objects tracked, {runs[0]['frozen']} frozen)")


if __name__ == "__main__":
    main()
