"""--ray throughput: N replicas against one, and against no Ray at all; what model affinity saves.

For SD1.5 at 512x512 and SDXL at 1024x1024 (random weights at real sizes, fp16, written by bench/full_size.py):
`--jobs` txt2img jobs (30 steps, CFG 7, Euler, batch 1, each its own seed) are queued at once on the front
door's queue, as the UI and API queue them, and timed from the first submit to the last result. Runs:

- `no-ray`: this process's own single-process queue (the server without --ray), on GPU 0;
- `ray-1`, `ray-N`: a local Ray cluster with 1 and with N replicas (one GPU each), started fresh for each run; its
  start-up (cluster, Serve, replicas loading the checkpoint) is reported too;
- `affinity` (N >= 2): jobs alternating between two checkpoints (the same file under two names, so each switch is
  a real load), on N replicas with the affinity router and with Serve's default router: checkpoint switches and
  images per second.

Each replica first runs one warm-up job (kernels, allocator, CUDA graph capture). On a machine with one GPU run
`--replicas 1` (ray-1 against no-ray: the cost of going through Ray). `--small` is a smoke test on the CPU with
the bundled model at 64x64, 4 steps and 2 replicas by default.

    python bench/bench_ray.py --replicas 1 --out bench/results/ray-h200.json
    python bench/bench_ray.py --small --out /tmp/ray-small.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {"sd15": 512, "sdxl": 1024, "bundled": 64}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def _front_door(workdir: str, replicas: int | None, checkpoint: str) -> Any:
    """This process as the front door: flags and settings as `launch.py [--ray]` would leave them."""
    from modules import cmd_args, shared
    from modules.models import registry

    argv = ["--data-dir", workdir, "--skip-install"]
    if replicas:
        argv += ["--ray", "--ray-replicas", str(replicas)]
    shared.set_cmd_opts(cmd_args.parse_args(argv, {}))
    import webui

    webui.initialize()
    shared.opts.data.update({"samples_save": False, "grid_save": False, "live_previews_enable": False,
                             "sd_model_checkpoint": checkpoint})
    registry.list_models()
    return shared.cmd_opts


def _jobs(queue: Any, family: str, count: int, steps: int, seed0: int, checkpoints: list[str] | None = None
          ) -> tuple[float, list[float]]:
    """Queue `count` jobs at once; (wall seconds to the last result, each job's seconds from submit to result)."""
    from modules import processing, scripts

    size = SIZES[family]
    submitted = []
    start = time.perf_counter()
    for i in range(count):
        override = {"sd_model_checkpoint": checkpoints[i % len(checkpoints)]} if checkpoints else {}
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=7.0, width=size, height=size,
            sampler_name="Euler", seed=seed0 + i, do_not_save_samples=True, do_not_save_grid=True,
            override_settings=override)
        submitted.append((time.perf_counter(), seed0 + i,
                          queue.submit("txt2img", lambda p=p: scripts.process_request(p))))
    latencies = []
    for t0, seed, job in submitted:
        processed = job.wait(3600)
        if processed.seed != seed or not processed.images:
            raise AssertionError(f"{job.id}: expected a picture of seed {seed}, got {processed.seed}")
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - start, latencies


def _summary(wall: float, latencies: list[float], count: int) -> dict[str, Any]:
    return {"jobs": count, "wall_s": wall, "images_per_s": count / wall,
            "latency_median_s": statistics.median(latencies), "latency_max_s": max(latencies)}


def _gpu_memory() -> list[float]:
    import torch

    if not torch.cuda.is_available():
        return []
    used = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        used.append((total - free) / 2**30)
    return used


def _replica_rss(queue: Any) -> list[float]:
    """Resident memory (GiB) of the replica processes this host ran jobs on."""
    import psutil

    pids = {getattr(job, "replica_pid", None) for job in queue.recent()} - {None}
    out = []
    for pid in sorted(pids):
        try:
            out.append(psutil.Process(pid).memory_info().rss / 2**30)
        except psutil.Error:
            pass
    return out


def run_no_ray(workdir: str, family: str, checkpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    from modules import call_queue, sd_models

    _front_door(workdir, None, checkpoint)
    queue = call_queue.JobQueue()
    try:
        _jobs(queue, family, 1, args.steps, 1)  # warm-up (and the load)
        wall, latencies = _jobs(queue, family, args.jobs, args.steps, 100)
    finally:
        queue.shutdown()
        sd_models.unload_model_weights()
        from modules import devices

        devices.torch_gc()
    return _summary(wall, latencies, args.jobs)


def run_ray(workdir: str, family: str, checkpoint: str, replicas: int, args: argparse.Namespace,
            mix: list[str] | None = None, affinity_router: bool = True) -> dict[str, Any]:
    from modules import call_queue, shared
    from modules.serve import affinity, cluster

    cmd_opts = _front_door(workdir, replicas, checkpoint)
    started = time.perf_counter()
    queue = cluster.start(cmd_opts, cpus_per_replica=args.cpus_per_replica, affinity_router=affinity_router,
                          init_kwargs={"log_to_driver": False})
    start_s = time.perf_counter() - started
    saved = call_queue.queue, shared.state
    cluster.install(queue)
    try:
        _jobs(queue, family, replicas, args.steps, 1)  # one warm-up job per replica
        switches_before = affinity.switches()
        wall, latencies = _jobs(queue, family, args.jobs, args.steps, 100, mix)
        out = _summary(wall, latencies, args.jobs)
        out.update(start_s=start_s, replicas=replicas, gpu_used_gib=_gpu_memory(), replica_rss_gib=_replica_rss(queue))
        if mix:
            out.update(checkpoints=mix, switches=affinity.switches() - switches_before,
                       router="affinity" if affinity_router else "serve-default")
        return out
    finally:
        queue.shutdown(timeout=60)
        call_queue.queue, shared.state = saved


def prepare(workdir: str, family: str, device: str) -> tuple[str, str]:
    """The checkpoint file (and a second name for the same file, for the affinity mix); their names."""
    from modules import paths

    folder = os.path.join(workdir, "models", "Stable-diffusion")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{family}.safetensors")
    twin = os.path.join(folder, f"{family}-b.safetensors")
    if not os.path.exists(path):
        if family == "bundled":
            shutil.copyfile(paths.BUNDLED_CHECKPOINT, path)
        else:
            from bench.full_size import write_checkpoint_and_config

            write_checkpoint_and_config(family, path, os.path.join(workdir, f"{family}-config"), device=device)
    if family == "bundled":  # its config sidecar goes with each name
        sidecar = os.path.splitext(paths.BUNDLED_CHECKPOINT)[0] + ".json"
        for name in (path, twin):
            shutil.copyfile(sidecar, os.path.splitext(name)[0] + ".json")
    if not os.path.exists(twin):
        try:
            os.link(path, twin)  # the same bytes under a second name: switching to it is a real load
        except OSError:
            shutil.copyfile(path, twin)
    return os.path.basename(path), os.path.basename(twin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=None, help="N (default: the GPUs here; 2 with --small)")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per run (default: 8 per replica of N)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--families", default=None, help="sd15,sdxl (with --small: bundled)")
    parser.add_argument("--workdir", default=None, help="data dir with the checkpoints (default: a temporary one)")
    parser.add_argument("--cpus-per-replica", type=float, default=None)
    parser.add_argument("--runs", default="no-ray,ray,affinity", help="which runs (default: all three kinds)")
    parser.add_argument("--small", action="store_true", help="CPU smoke test with the bundled model")
    parser.add_argument("--out", default="bench-ray.json")
    args = parser.parse_args()

    import torch

    from modules import paths

    paths.bundled_checkpoint = paths.BUNDLED_CHECKPOINT
    cuda = torch.cuda.is_available() and not args.small
    if not cuda and not args.small:
        sys.exit("this benchmark needs a CUDA GPU (or --small for a CPU smoke test)")
    n = args.replicas or (2 if args.small else max(1, torch.cuda.device_count()))
    args.jobs = args.jobs or 8 * n
    args.steps = args.steps or (4 if args.small else 30)
    families = (args.families or ("bundled" if args.small else "sd15,sdxl")).split(",")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-ray-")
    import ray

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "gpus": torch.cuda.device_count() if cuda else 0, "torch": torch.__version__, "ray": ray.__version__,
        "python": platform.python_version(), "replicas": n, "jobs": args.jobs, "steps": args.steps, "families": {},
    }
    for family in families:
        first, twin = prepare(workdir, family, "cuda" if cuda else "cpu")
        runs: dict[str, Any] = {}
        kinds = args.runs.split(",")
        if "no-ray" in kinds:
            runs["no-ray"] = run_no_ray(workdir, family, first, args)
            print(family, "no-ray", json.dumps(runs["no-ray"]), flush=True)
        for replicas in sorted({1, n}) if "ray" in kinds else ():
            runs[f"ray-{replicas}"] = run_ray(workdir, family, first, replicas, args)
            print(family, f"ray-{replicas}", json.dumps(runs[f"ray-{replicas}"]), flush=True)
        if n >= 2 and "affinity" in kinds:
            for router in (True, False):
                key = "affinity" if router else "serve-default-router"
                runs[key] = run_ray(workdir, family, first, n, args, mix=[first, twin], affinity_router=router)
                print(family, key, json.dumps(runs[key]), flush=True)
        results["families"][family] = {"size": SIZES[family], **runs}
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    _table(results)


def _table(results: dict[str, Any]) -> None:
    print("\n| model | run | images/s | median latency (s) | start-up (s) | switches |\n|---|---|---|---|---|---|")
    for family, runs in results["families"].items():
        for name, r in runs.items():
            if not isinstance(r, dict):
                continue
            print(f"| {family} {runs['size']}x{runs['size']} | {name} | {r['images_per_s']:.2f} | "
                  f"{r['latency_median_s']:.2f} | {r.get('start_s', 0):.1f} | {r.get('switches', '')} |")


if __name__ == "__main__":
    main()
