"""Which compiler settings make the UNet step fastest on the GPU (issue #18 point 1): one UNet forward (CFG batch
of 2) compiled with inductor under each setting below, replayed in a CUDA graph as the engine does, median
milliseconds per step. SD1.5 512x512 or SDXL 1024x1024, random weights at real sizes, fp16, channels-last.

- eager: no compiler (the graph alone);
- default: the engine's inductor options (`unet_compile.INDUCTOR_OPTIONS`);
- coordinate: plus inductor's coordinate-descent tuning of its own kernels' launch settings;
- fused_qkv: default, with each attention's q/k/v projections as one matrix product (diffusers' speed guide);
- autotune: plus `max_autotune` (inductor times Triton templates against cuBLAS/cuDNN for each GEMM/conv);
- cudnn_attention: default, with torch's flash and memory-efficient attention kernels off, so that attention runs
  on cuDNN's (Hopper has its own cuDNN kernels; head size 40 of SD1.5 is padded to 64 by flash attention);
- cudnn_fused: cudnn_attention and fused_qkv together; eager_cudnn: cuDNN attention without the compiler;
- fp16_accumulation: default, with cuBLAS allowed to accumulate half-precision matrix products in half precision
  (`torch.backends.cuda.matmul.allow_fp16_accumulation`, ComfyUI's `--fast fp16_accumulation`): faster on cards
  whose tensor cores run it at twice the rate, at a cost in precision (the step's difference is printed);
- benchmark: default, with cuDNN timing its convolution algorithms for each shape (`torch.backends.cudnn.benchmark`);
- autotune_gemm: plus `max_autotune_gemm` (Triton templates timed against cuBLAS for the matrix products), which
  searches fewer kernels than `max_autotune`; it times Triton convolutions against cuDNN's as well;
- autotune_mm: autotune_gemm with the convolutions left to cuDNN untimed (`max_autotune_conv_backends="ATEN"`).

A setting may join several of these with "+" (`fused_qkv+benchmark+autotune_gemm`).

Each setting's compile time is printed; results are written after each setting, so a cut-off run keeps them.

    python bench/bench_compile_options.py --family sd15 --out bench/results/compile-options.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import build  # noqa: E402

COORDINATE = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True}
ALIASES = {"cudnn_attention": "cudnn", "cudnn_fused": "cudnn+fused_qkv", "eager_cudnn": "eager+cudnn"}
FEATURES = {"eager", "default", "cudnn", "fused_qkv", "coordinate", "autotune", "autotune_gemm", "autotune_mm",
            "benchmark", "fp16_accumulation"}


def features(setting: str) -> set[str]:
    named = set(ALIASES.get(setting, setting).split("+"))
    unknown = named - FEATURES
    if unknown:
        raise SystemExit(f"unknown setting {sorted(unknown)}; known: {sorted(FEATURES)} joined by '+'")
    return named


def inductor_options(named: set[str]) -> dict:
    from modules.engine.unet_compile import INDUCTOR_OPTIONS

    options = dict(INDUCTOR_OPTIONS)
    if "coordinate" in named:
        options.update(COORDINATE)
    if "autotune" in named:
        options["max_autotune"] = True
    if "autotune_gemm" in named or "autotune_mm" in named:
        options.update({"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"})
    if "autotune_mm" in named:
        options["max_autotune_conv_backends"] = "ATEN"
    return options


def inputs(family: str) -> tuple[tuple, dict]:
    side, context, extra = (64, 768, None) if family == "sd15" else (128, 2048, 2816)
    sample = torch.randn(2, 4, side, side, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    kwargs = {"encoder_hidden_states": torch.randn(2, 77, context, device="cuda", dtype=torch.float16),
              "return_dict": False}
    if extra:
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 1280, device="cuda", dtype=torch.float16),
                                       "time_ids": torch.randn(2, 6, device="cuda", dtype=torch.float16)}
    return (sample, torch.tensor([500.0, 500.0], device="cuda")), kwargs


def graphed(fn, args, kwargs):
    """`fn` captured in a CUDA graph after warm-up; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(*args, **kwargs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args, **kwargs)
    return graph, out


def step_ms(graph) -> float:
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 20 * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="sd15", choices=["sd15", "sdxl"])
    parser.add_argument("--settings",
                        default="eager,eager_cudnn,default,cudnn_attention,fused_qkv,cudnn_fused,coordinate,autotune")
    parser.add_argument("--out", default="compile-options.json")
    args = parser.parse_args()
    unet = build(args.family)["unet"].to(memory_format=torch.channels_last)
    call_args, call_kwargs = inputs(args.family)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "family": args.family}
    reference = None
    for setting in args.settings.split(","):
        torch._dynamo.reset()
        named = features(setting)
        fused, cudnn = "fused_qkv" in named, "cudnn" in named
        if fused:
            unet.fuse_qkv_projections()
        # kernels are chosen when traced or captured: the flags must be set before compiling
        torch.backends.cuda.enable_flash_sdp(not cudnn)
        torch.backends.cuda.enable_mem_efficient_sdp(not cudnn)
        torch.backends.cuda.enable_cudnn_sdp(True)
        torch.backends.cuda.matmul.allow_fp16_accumulation = "fp16_accumulation" in named
        torch.backends.cudnn.benchmark = "benchmark" in named
        with torch.inference_mode():
            fn = unet if "eager" in named else torch.compile(unet, dynamic=False, options=inductor_options(named))
            start = time.perf_counter()
            fn(*call_args, **call_kwargs)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            graph, out = graphed(fn, call_args, call_kwargs)
            ms = step_ms(graph)
        if fused:
            unet.unfuse_qkv_projections()
        image = out[0].float()
        if reference is None:
            reference = image.clone()
        error = (image - reference).abs().max().item()
        results[setting] = {"step_ms": ms, "compile_s": compile_s, "max_abs_diff_vs_first": error}
        print(setting, json.dumps(results[setting]), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        del graph, out


if __name__ == "__main__":
    main()
