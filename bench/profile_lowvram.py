"""Where a --medvram job's time goes under a VRAM cap (issue #18 point 5): SD1.5 512x512 under 2 GiB (or SDXL
1024x1024 under 4 GiB), random weights at real sizes, fp16, 30 steps. After a warm-up job it times one job with
every weight move (`devices.move_modules`) and every component call (text encoders, UNet steps, VAE decode)
synchronised and summed, and, without a cap and without offloading, how much memory above the weights the UNet
step (CFG batch 2) and the VAE decode take at their peak.

    python bench/profile_lowvram.py --workdir /tmp/bench --family sd15 --out lowvram-profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_lowvram import CASES, checkpoint, load, runner  # noqa: E402
from bench.jobs import ours  # noqa: E402
from bench.timing import sync, timed  # noqa: E402


def working_memory(model, device: torch.device, size: int) -> dict:
    """Peak bytes above what was allocated before, for one UNet step and one VAE decode, on a plain model."""
    from modules.engine.generate import vae_decode

    latent = size // 8
    result = {}
    with torch.inference_mode():
        unet_args = (torch.randn(2, 4, latent, latent, device=device, dtype=model.unet.dtype),
                     torch.tensor([500.0, 500.0], device=device))
        context = torch.randn(2, 77, model.unet.config.cross_attention_dim, device=device, dtype=model.unet.dtype)
        kwargs = {"encoder_hidden_states": context, "return_dict": False}
        if model.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 1280, device=device, dtype=model.unet.dtype),
                                           "time_ids": torch.randn(2, 6, device=device, dtype=model.unet.dtype)}
        for name, call in (("unet_step", lambda: model.unet(*unet_args, **kwargs)),
                           ("vae_decode", lambda: vae_decode(model, torch.randn(1, 4, latent, latent, device=device),
                                                             tile_size=0))):
            call()
            sync()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            call()
            sync()
            result[f"{name}_working_gib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
            result[f"{name}_reserved_gib"] = torch.cuda.memory_reserved(device) / 2**30
    return result


def instrumented_job(model, run) -> dict:
    """One job with each move and each component call timed (synchronised) and counted."""
    from modules import devices

    spent: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    names = {id(m): n for n, m in (("unet", model.unet), ("vae", model.vae),
                                   *((f"text_encoder_{i}", t) for i, t in enumerate(model.text_encoders)))}
    original_move = devices.move_modules

    def timed_move(modules, target, **kwargs):
        modules = list(modules)
        sync()
        start = time.perf_counter()
        original_move(modules, target, **kwargs)
        sync()
        key = "move " + ",".join(names.get(id(m), type(m).__name__) for m in modules) + f" -> {target.type}"
        spent[key] += time.perf_counter() - start
        counts[key] += 1

    hooks = []
    # not the UNet: a synchronisation inside its call would break a CUDA graph capture (its time is the rest)
    for module in (model.vae, *model.text_encoders):
        name = names[id(module)]

        def before(m, args, kwargs=None, name=name):
            sync()
            m._profile_start = time.perf_counter()

        def after(m, args, output, name=name):
            sync()
            spent["run " + name] += time.perf_counter() - m._profile_start
            counts["run " + name] += 1

        hooks.append(module.register_forward_pre_hook(before))
        hooks.append(module.register_forward_hook(after))
    real_replay = torch.cuda.CUDAGraph.replay

    def counted_replay(graph):
        counts["graph replays"] += 1
        return real_replay(graph)

    devices.move_modules = timed_move
    torch.cuda.CUDAGraph.replay = counted_replay
    try:
        total = timed(run)
    finally:
        devices.move_modules = original_move
        torch.cuda.CUDAGraph.replay = real_replay
        for hook in hooks:
            hook.remove()
    return {"job_s": total, "spent_s": dict(spent), "counts": dict(counts)}


def log_captures(always_warm_up: bool) -> None:
    """Print the device memory at each CUDA graph capture and how it ended."""
    from modules.engine import unet_graph

    real = unet_graph._capture

    def capture(module, *args, **kwargs):
        if always_warm_up:
            module.__dict__.pop("_sd_graph_warmed", None)
        note = f"capture: allocated {torch.cuda.memory_allocated() / 2**30:.3f} GiB, " \
               f"reserved {torch.cuda.memory_reserved() / 2**30:.3f} GiB"
        try:
            captured = real(module, *args, **kwargs)
        except Exception as e:
            print(note, "failed:", repr(e)[:300], flush=True)
            raise
        print(note, f"ok, then reserved {torch.cuda.memory_reserved() / 2**30:.3f} GiB", flush=True)
        return captured

    unet_graph._capture = capture


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench")
    parser.add_argument("--family", default="sd15", choices=sorted(CASES))
    parser.add_argument("--out", default="lowvram-profile.json")
    parser.add_argument("--mode", default="medvram")
    parser.add_argument("--always-warm-up", action="store_true", help="warm up before every CUDA graph capture")
    parser.add_argument("--keep-host-cache", action="store_true",
                        help="captures do not empty torch's pinned-memory cache (which the next move to RAM refills)")
    args = parser.parse_args()
    log_captures(args.always_warm_up)
    if args.keep_host_cache:
        torch._C._host_emptyCache = lambda: None
    from modules.models import offload

    offload.run_job = lambda fn, current_model, **_: fn()  # each mode as itself
    device = torch.device("cuda", torch.cuda.current_device())
    case = CASES[args.family]
    model = load(checkpoint(args.family, args.workdir, False), device)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "family": args.family,
                     "cap_gib": case["cap_gib"]}
    offload.place(model, device, "none")
    results["plain"] = working_memory(model, device, case["size"])
    run = runner(model, case["size"], 30)
    run()
    results["uncapped_graphs_s"] = timed(run)
    eager = ours(model, case["size"], 30, {"cuda_graphs": False})
    eager()
    results["uncapped_eager_s"] = timed(eager)
    print(json.dumps(results), flush=True)
    offload.place(model, torch.device("cpu"), "none")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(case["cap_gib"] * 2**30 / total, device)
    offload.place(model, device, args.mode)
    run = ours(model, case["size"], 30, {"cuda_graphs": True})
    run()
    results["warm_job_s"] = timed(run)
    torch.cuda.reset_peak_memory_stats(device)
    results["instrumented"] = instrumented_job(model, run)
    results["instrumented"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    results["after_job_resident"] = {name: str(next(m.parameters()).device) for name, m in
                                     (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoders[0]))}
    print(json.dumps(results, indent=1), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
