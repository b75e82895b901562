"""Restart to first image with the compiled engine (issue #18 point 2): a fresh process, started after an earlier
run left inductor's disk cache (`<data dir>/cache/torch_compile`) filled for this model and size, is timed from
its start to its first picture (with `compile_unet` on it runs uncompiled while a child process compiles), to the
end of the background compile, to its first compiled picture, and one steady picture; with `compile_unet` off for
comparison.

Run it after `bench_compile.py` (which fills the cache) on the same `--workdir`; `--fill` runs one compiled
child first, so that the cache is filled by this script alone.

    python bench/bench_restart.py --workdir /tmp/bench --families sd15,sdxl --out bench/results/restart-h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import record  # noqa: E402


def child(args: argparse.Namespace) -> None:
    """The restarted server's work: imports, load the checkpoint, two jobs; prints seconds since `--t0`. The
    collector is run as the server's start-up runs it (webui.start): paused during the imports, their objects
    frozen before the model loads."""
    import gc

    from modules import bytecode_cache

    bytecode_cache.use_own_cache(args.workdir)  # as launch.py does before the heavy imports
    gc.disable()
    import torch

    torch_imported = time.time() - args.t0
    if not args.no_warm_up:  # as webui.start does, right after choosing the device
        from modules import device_warm_up

        device_warm_up.start(torch.device("cuda"))
    from bench.jobs import SIZES, ours
    from modules import devices, initialize
    from modules.models.loader import load_model

    initialize.freeze_imported_objects()
    marks = {"torch_imported": torch_imported, "imported": time.time() - args.t0}
    profiler = None
    if args.profile:  # where the time between the imports and the first picture goes (CPU side)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    path = os.path.join(args.workdir, f"{args.family}.safetensors")
    if not os.path.exists(path):  # the bench's own checkpoint writer (and its imports) only when there is none
        from bench.full_size import write_checkpoint_and_config

        write_checkpoint_and_config(args.family, path, os.path.join(args.workdir, f"{args.family}-config"))
    model = load_model(path, devices.choose_precision(torch.device("cuda")))
    model.unet.to(memory_format=torch.channels_last)
    torch.cuda.synchronize()
    marks["loaded"] = time.time() - args.t0
    run = ours(model, SIZES[args.family], 30, {"cuda_graphs": True, "compile_unet": args.compiled})
    run()  # compiled: runs uncompiled at once while a child process compiles (from the disk cache if filled)
    torch.cuda.synchronize()
    marks["first_image"] = time.time() - args.t0
    if profiler is not None:
        import pstats

        profiler.disable()
        with open(args.profile, "w") as f:
            for order in ("cumulative", "tottime"):
                pstats.Stats(profiler, stream=f).sort_stats(order).print_stats(45)
    gc.enable()
    if args.compiled:
        from modules.engine import unet_compile

        unet_compile.wait_for_workers()
        marks["compiled_in_background"] = time.time() - args.t0
        run()  # the job that picks the compiled forward up (tracing, cache hits, graph capture)
        torch.cuda.synchronize()
        marks["first_compiled_image"] = time.time() - args.t0
    start = time.time()
    run()
    torch.cuda.synchronize()
    marks["steady_image_s"] = time.time() - start
    print("MARKS " + json.dumps(marks), flush=True)


def restart(args: argparse.Namespace, family: str, compiled: bool) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--family", family, "--workdir", args.workdir,
            "--t0", repr(time.time())] + (["--compiled"] if compiled else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MARKS ")]
    if not lines:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1][6:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-models")
    parser.add_argument("--out", default="bench-restart.json")
    parser.add_argument("--families", default="sd15")
    parser.add_argument("--fill", action="store_true", help="run one compiled child first to fill the cache")
    parser.add_argument("--graphs-only", action="store_true", help="only the restart without compile_unet")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="sd15", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--no-warm-up", action="store_true", help="(with --child) no background GPU warm-up")
    parser.add_argument("--profile", default="", help="(with --child) write a cProfile of load and first job here")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from modules import paths
    from modules.engine.compile_cache import compile_cache_dir

    # relative to the data folder: the file goes into the repo, the machine's paths do not
    os.makedirs(args.workdir, exist_ok=True)
    results: dict = {"cache_dir": os.path.relpath(compile_cache_dir(), paths.data_path)}
    for family in args.families.split(","):
        row: dict = {}
        if not args.graphs_only:
            if args.fill:
                row["filling_run"] = restart(args, family, True)
            row["compiled_restart"] = restart(args, family, True)
        row["graphs_restart"] = restart(args, family, False)
        if args.graphs_only:  # the compiled runs did not write the checkpoint first: time a second restart
            record(results, family, row, args.out)  # a cut-off run keeps what finished
            row["graphs_restart_again"] = restart(args, family, False)
        record(results, family, row, args.out)


if __name__ == "__main__":
    main()
