"""Images per second of batched txt2img: one request of batch 8, diffusers' pipeline, and the job queue merging
8 waiting single-image jobs (setting `queue_batch_jobs`) against running them one by one.

On CUDA: SD1.5 at 512x512 with random weights at the real size (bench/full_size.py), fp16, 30 steps, CFG 7, Euler.

- ours, batch 8: `process_images` on one `StableDiffusionProcessingTxt2Img` with batch_size=8 (CUDA graphs on, the
  default, and off; on CUDA also `compile_unet`, on a second copy of the model);
- diffusers, batch 8: `StableDiffusionPipeline.from_single_file` on the same file, num_images_per_prompt=8 (eager);
- queue, 8 jobs: 8 single-image jobs with different prompts and seeds wait behind a held worker, then run, with
  `queue_batch_jobs` on (one batch of 8) and off (8 runs); timed from the release to the last result.

Each is warmed up, then timed `--repeats` rounds; a round runs every case twice in turn and times the second run;
medians. `--small` runs the same on the CPU with the
test suite's tiny model (64x64, 4 steps, batch 4): a smoke test of the script, not a measurement.

    python bench/bench_batching.py --workdir /tmp/bench --out bench-batching.json
    python bench/bench_batching.py --small --out /tmp/bench-batching-small.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from bench.timing import timed  # noqa: E402

PROMPTS = ["a photograph of an astronaut riding a horse on the moon", "a red fox in the snow, highly detailed",
           "an old lighthouse at dusk, oil painting", "a bowl of ramen, studio lighting",
           "a castle on a hill, watercolor", "a cyberpunk street at night", "a portrait of a cat wearing a hat",
           "mountains above the clouds, sunrise"]
NEGATIVE = "blurry, low quality"


def _request(config: dict, model: Any, batch: int, index: int = 0) -> Any:
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=PROMPTS[index % len(PROMPTS)] if batch == 1 else PROMPTS[:batch], negative_prompt=NEGATIVE,
        steps=config["steps"], cfg_scale=7.0, width=config["size"], height=config["size"], sampler_name="Euler",
        seed=1234 + index, batch_size=batch, do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    return p


def ours_batch(config: dict, model: Any, graphs: bool, compiled: bool = False) -> Callable[[], None]:
    from modules import processing, shared

    def run() -> None:
        shared.opts.data.update({"cuda_graphs": graphs, "compile_unet": compiled})
        processed = processing.process_images(_request(config, model, config["batch"]))
        assert len(processed.images) == config["batch"], len(processed.images)

    return run


def diffusers_batch(config: dict, pipe: Any) -> Callable[[], None]:
    def run() -> None:
        generator = torch.Generator(config["device"]).manual_seed(1234)
        out = pipe(PROMPTS[0], negative_prompt=NEGATIVE, num_inference_steps=config["steps"], guidance_scale=7.0,
                   width=config["size"], height=config["size"], num_images_per_prompt=config["batch"],
                   generator=generator)
        assert len(out.images) == config["batch"]

    return run


def queue_jobs(config: dict, model: Any, batching: bool) -> Callable[[], float]:
    """8 single-image jobs queued behind a held worker; returns the seconds from their release to the last result."""
    from modules import call_queue, scripts, shared

    queue = call_queue.queue  # process_images asks this queue (offload), so the batching must happen on it

    def run() -> float:
        shared.opts.data["queue_batch_jobs"] = batching
        shared.opts.data["queue_batch_max"] = config["batch"]
        shared.opts.data.update({"cuda_graphs": True, "compile_unet": False})
        release, running = threading.Event(), threading.Event()

        def hold() -> None:
            running.set()
            release.wait()

        holder = queue.submit("hold", hold)
        running.wait()
        requests = [_request(config, model, 1, i) for i in range(config["batch"])]
        jobs = [queue.submit("txt2img", (lambda p=p: scripts.process_request(p))) for p in requests]

        def finish() -> None:
            release.set()
            holder.wait()
            for job in jobs:
                processed = job.wait()
                assert len(processed.images) == 1

        runs_before = len(ENGINE_RUNS)
        seconds = timed(finish)
        sizes = ENGINE_RUNS[runs_before:]
        assert sizes == ([config["batch"]] if batching else [1] * config["batch"]), sizes  # merged, or not
        return seconds

    return run


ENGINE_RUNS: list[int] = []  # the batch size of every engine run, to check what the queue merged


def count_engine_runs() -> None:
    from modules import processing

    inner = processing.process_images_inner

    def counting(p: Any) -> Any:
        ENGINE_RUNS.append(p.batch_size)
        return inner(p)

    processing.process_images_inner = counting


def load(small: bool, workdir: str) -> tuple[dict, Any, Any]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from modules import devices, shared
    from modules.models.loader import load_model

    shared.opts.data["live_previews_enable"] = False
    if small:
        from tiny_models import write_tiny_checkpoint

        config = {"device": "cpu", "size": 64, "steps": 4, "batch": 4}
        path = os.path.join(workdir, "tiny.safetensors")
        write_tiny_checkpoint(path, "sd1", seed=1)
        model = load_model(path, devices.choose_precision(torch.device("cpu")))
        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
            scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        from bench.full_size import diffusers_pipeline, write_checkpoint_and_config

        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --small for the CPU smoke test)"
        path = os.path.join(workdir, "sd15.safetensors")
        config = {"device": "cuda", "size": 512, "steps": 30, "batch": 8, "path": path}
        config_dir = os.path.join(workdir, "sd15-config")
        if not os.path.exists(path):
            write_checkpoint_and_config("sd15", path, config_dir)
        model = load_model(path, devices.choose_precision(torch.device("cuda")))
        pipe = diffusers_pipeline("sd15", path, config_dir)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return config, model, pipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=None, help="where the checkpoint is written (default: a temp dir)")
    parser.add_argument("--out", default="bench-batching.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="CPU smoke test with the tiny test model")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-batching-")
    os.makedirs(workdir, exist_ok=True)
    config, model, pipe = load(args.small, workdir)
    count_engine_runs()
    n = config["batch"]
    cases: dict[str, Callable[[], Any]] = {
        "ours_batch": ours_batch(config, model, graphs=True),
        "ours_batch_eager": ours_batch(config, model, graphs=False),
    }
    if config["device"] == "cuda":
        from modules import devices
        from modules.engine import unet_compile
        from modules.models.loader import load_model

        unet_compile.IN_WORKER = False  # the warm-up compiles; every timed run is compiled
        # a model of its own: compiling stores the weights channels-last, which the other rows must not inherit
        compiled_model = load_model(config["path"], devices.choose_precision(torch.device("cuda")))
        cases["ours_batch_compiled"] = ours_batch(config, compiled_model, graphs=True, compiled=True)
    cases |= {
        "diffusers_batch": diffusers_batch(config, pipe),
        "queue_batching_on": queue_jobs(config, model, batching=True),
        "queue_batching_off": queue_jobs(config, model, batching=False),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, fn in cases.items():  # warm-up: kernels, allocator, graph capture for both batch sizes
        fn() if name.startswith("queue") else timed(fn)
    for _ in range(args.repeats):
        for name, fn in cases.items():
            # an untimed run first: switching graphs / compiled / eager re-captures CUDA graphs, which a server
            # that stays in one mode does not pay per job
            fn()
            times[name].append(fn() if name.startswith("queue") else timed(fn))
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if config["device"] == "cuda" else "cpu",
        "torch": torch.__version__, **{k: v for k, v in config.items() if k != "path"}, "images_per_run": n,
    }
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {"s_per_run": median, "images_per_s": n / median, "all_s": values}
    results["queue_speedup"] = results["queue_batching_on"]["images_per_s"] / results["queue_batching_off"][
        "images_per_s"]
    results["ours_vs_diffusers"] = results["ours_batch"]["images_per_s"] / results["diffusers_batch"]["images_per_s"]
    if config["device"] == "cuda":
        results["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    print(f"\n| {n} images, {config['size']}x{config['size']}, {config['steps']} steps | images/s |\n|---|---|")
    for name in cases:
        print(f"| {name} | {results[name]['images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
