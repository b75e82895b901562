"""Checkpoint switches with and without the libraries' objects frozen (`modules.initialize.freeze_imported_objects`,
which the server runs before its first model), on the CPU with the bundled default model.

Every load, switch and unload runs a full garbage collection to give memory back; without the freeze each one
walks the ~600,000 objects that importing torch, diffusers, transformers and gradio left. Each mode runs in a
fresh process that imports what the server imports, then switches between two copies of the bundled checkpoint
through the model manager with A1111's default cache (one model: every switch loads from disk), and prints the
median switch time.

    python bench/bench_switch_gc.py --switches 8
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


def child(folder: str, switches: int, frozen: bool) -> None:
    sys.path.insert(0, ROOT)
    import gc

    import torch

    import modules.ui  # noqa: F401  (the server's imports: gradio and the page's modules)
    from modules import devices, initialize
    from modules.models.manager import ModelManager

    if frozen:
        initialize.freeze_imported_objects()
    precision = devices.choose_precision(torch.device("cpu"))
    manager = ModelManager(lambda: precision)
    files = [os.path.join(folder, name) for name in ("a.safetensors", "b.safetensors")]
    manager.load(_Info(files[1]))
    times = []
    for i in range(switches):
        start = time.perf_counter()
        manager.load(_Info(files[i % 2]))
        times.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({"median_s": statistics.median(times), "objects": len(gc.get_objects()),
                                  "frozen": gc.get_freeze_count()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=8)
    parser.add_argument("--child", choices=["plain", "frozen"])
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.switches, args.child == "frozen")
        return
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("a.safetensors", "b.safetensors"):
            shutil.copy(BUNDLED, os.path.join(folder, name))
        for mode in ("plain", "frozen", "plain", "frozen"):  # alternated, so drift hits both
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, "--folder", folder,
                                  "--switches", str(args.switches)], capture_output=True, text=True, check=True)
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            results.setdefault(mode, []).append(json.loads(line[7:]))
    for mode, runs in results.items():
        print(f"{mode}: switch median {statistics.median(r['median_s'] for r in runs):.3f} s "
              f"({runs[0]['objects']} objects tracked, {runs[0]['frozen']} frozen)")


if __name__ == "__main__":
    main()
