"""LoRA on SDXL on a CUDA GPU: apply, remove and switch times, and UNet speed with a LoRA on, ours against
diffusers + PEFT in the same process, on the same random weights.

Model: SDXL's published UNet, VAE and both text encoders with random weights, fp16 (bench/full_size.py), wrapped
as our StableDiffusionModel. Two rank-32 kohya LoRA files (A, B) in kohya's SDXL naming (`lora_unet_` + the
original sgm module path) cover every attention projection (attn1/attn2 to_q, to_k, to_v, to_out.0) and
feed-forward layer (ff.net.0.proj, ff.net.2) of the UNet's 70 transformer blocks (700 layers); every layer must
match on both sides.

Ours (modules.networks.networks.load_networks, weights merged in place by the model patcher):
  - cold apply of A: file not in memory (read + parse + patch; page cache warm), and the very first apply (which
    also builds the model's key table);
  - remove (every weight restored from its backup);
  - switch A -> B and B -> A with both files parsed in memory (`lora_in_memory_limit` 2);
  - UNet it/s, no LoRA and A applied, with CUDA-graph replay (the default) and eager; the graph captured before
    any LoRA must keep replaying (captures are counted).
Diffusers (StableDiffusionXLPipeline from the same components on its own copy of the UNet, PEFT backend):
  - cold apply: `load_lora_weights` + `fuse_lora`; remove: `unfuse_lora`;
  - switch between two loaded adapters, merged (`unfuse_lora`, `set_adapters`, `fuse_lora`) and unmerged
    (`set_adapters` alone, the adapter then runs beside each layer);
  - UNet it/s (eager): no LoRA, A fused, A unfused.
UNet it/s: `--calls` UNet evaluations at batch 2 (cond + uncond) on 128x128 latents (1024x1024), the way a
30-step txt2img with CFG calls it, through the engine's `unet_call` on both sides. Times are medians of
`--repeats` runs with torch.cuda.synchronize() around each.

    python bench/bench_lora.py --workdir /tmp/bench-lora --out bench/results/lora-h200.json

`--smoke` runs the same steps on a small SDXL-shaped UNet (CPU or GPU) to check the script, not to measure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.full_size import SDXL_UNET, VAE, build  # noqa: E402
from modules import cmd_args, shared  # noqa: E402
from modules.engine import unet_graph  # noqa: E402
from modules.engine.unet_call import UNetInput, unet_call  # noqa: E402
from modules.models.detection import ModelSpec  # noqa: E402
from modules.models.ldm_export import UNET_PREFIX, unet_to_ldm  # noqa: E402
from modules.models.loader import default_alphas_cumprod, load_tokenizer  # noqa: E402
from modules.models.sd_model import StableDiffusionModel  # noqa: E402
from modules.networks import files, networks  # noqa: E402

RANK = 32
ALPHA = 16.0
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
           "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
SWITCH_GOAL_S = 0.150
# A small SDXL-shaped UNet for --smoke: same block kinds and conditioning, few channels.
SMOKE_UNET = SDXL_UNET | {"block_out_channels": [32, 64, 64], "attention_head_dim": [1, 1, 1],
                          "transformer_layers_per_block": [1, 1, 2], "sample_size": 16}
SMOKE_VAE = VAE | {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- model and files ----------------------------------------------------------------------------------------------


def build_model(smoke: bool, device: str) -> StableDiffusionModel:
    """Our StableDiffusionModel around random SDXL modules (no file round trip: loading is bench_loading's job)."""
    if smoke:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        dtype = torch.float16 if device == "cuda" else torch.float32
        with torch.device(device):
            unet = UNet2DConditionModel(**SMOKE_UNET)
            vae = AutoencoderKL(**SMOKE_VAE, sample_size=128, scaling_factor=0.13025)
        for m in (unet, vae):
            m.to(dtype).eval().requires_grad_(False)
        parts: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoders": []}
        tokenizers: list[Any] = []
    else:
        parts = build("sdxl", device=device)
        tokenizers = [load_tokenizer("clip-l"), load_tokenizer("open-clip")]
    return StableDiffusionModel(spec=ModelSpec("sdxl", prediction_type="epsilon"), unet=parts["unet"],
                                vae=parts["vae"], text_encoders=parts["text_encoders"], tokenizers=tokenizers,
                                alphas_cumprod=default_alphas_cumprod())


def target_layers(unet: torch.nn.Module) -> list[str]:
    """diffusers module paths of every attention projection and feed-forward Linear in transformer blocks."""
    return [name for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and ".transformer_blocks." in name and name.endswith(TARGETS)]


def sgm_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers module path -> original (sgm) module path, from the checkpoint exporter's key mapping."""
    keys = list(unet.state_dict())
    ldm = unet_to_ldm({k: k for k in keys}, unet.config)  # values pass through: the mapping is all we need
    return {diffusers[: -len(".weight")]: name[len(UNET_PREFIX): -len(".weight")]
            for name, diffusers in ldm.items() if diffusers.endswith(".weight")}


def write_lora(path: str, unet: torch.nn.Module, layers: list[str], seed: int) -> int:
    """A rank-32 kohya LoRA (fp16, alpha 16) on `layers`, named as kohya names SDXL files. Returns its bytes."""
    from safetensors.torch import save_file

    names = sgm_names(unet)
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        out_f, in_f = unet.get_submodule(layer).weight.shape
        key = "lora_unet_" + names[layer].replace(".", "_")
        # kohya's init scale for down; up as a trained LoRA's (small): deltas a few % of the weights' size
        tensors[f"{key}.lora_down.weight"] = (torch.randn(RANK, in_f, generator=g) / in_f**0.5).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(out_f, RANK, generator=g) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(ALPHA).half()
    metadata = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": str(RANK),
                "ss_network_alpha": str(ALPHA), "ss_network_module": "networks.lora"}
    save_file(tensors, path, metadata=metadata)
    return os.path.getsize(path)


def unet_inputs(unet: torch.nn.Module, latent: int, device: str) -> tuple:
    """What the CFG denoiser hands the UNet for one SDXL step: cond + uncond in one batch of 2."""
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g, device=device)
    t = torch.full((2,), 500.0, device=device)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g, device=device)
    size = latent * 8
    added = {"text_embeds": torch.randn(2, 1280, generator=g, device=device),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32, device=device)}
    return x, t, ctx, added


def unet_seconds(unet: torch.nn.Module, inputs: tuple, calls: int, graphs: bool) -> float:
    def run() -> None:
        for _ in range(calls):
            unet_call(unet, UNetInput(*inputs), use_graphs=graphs)

    return timed(run)


# --- ours ---------------------------------------------------------------------------------------------------------


def apply(model: StableDiffusionModel, names: list[str]) -> None:
    errors = networks.load_networks(names, [1.0] * len(names), [1.0] * len(names), [None] * len(names), model=model)
    if errors:
        raise RuntimeError(f"LoRA refused: {errors}")


def bench_ours(model: StableDiffusionModel, layers: list[str], inputs: tuple, args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {}
    unet = model.unet
    out["first_apply_s"] = timed(lambda: apply(model, ["A"]))  # builds the key table too
    network = networks.loaded_networks[0]
    out["layers_matched"] = len(network.modules)
    out["keys_unmatched"] = network.unmatched
    if len(network.modules) != len(layers) or network.unmatched:
        raise RuntimeError(f"{len(network.modules)} of {len(layers)} layers matched, {network.unmatched} keys not")

    cold, remove = [], []
    for _ in range(args.repeats):
        apply(model, [])
        networks.networks_in_memory.clear()
        cold.append(timed(lambda: apply(model, ["A"])))
        remove.append(timed(lambda: apply(model, [])))
    out["cold_apply_s"], out["remove_s"] = median(cold), median(remove)
    out["cold_apply_all"], out["remove_all"] = cold, remove

    shared.opts.data["lora_in_memory_limit"] = 2
    apply(model, ["A"])
    apply(model, ["B"])  # both parsed and in memory from here on
    apply(model, ["A"])
    a_to_b, b_to_a = [], []
    for _ in range(args.switches):
        a_to_b.append(timed(lambda: apply(model, ["B"])))
        b_to_a.append(timed(lambda: apply(model, ["A"])))
    out["switch_a_to_b_s"], out["switch_b_to_a_s"] = median(a_to_b), median(b_to_a)
    out["switch_all"] = {"a_to_b": a_to_b, "b_to_a": b_to_a}
    out["parsed_in_memory"] = len(networks.networks_in_memory)

    # UNet speed. The graph is captured on the first graphed call (no LoRA); switching must not re-capture it.
    captures: list[tuple] = []
    real_capture = unet_graph._capture

    def counting_capture(unet_, fn, tensors, *rest):
        captures.append(tuple(tensors[0].shape))
        return real_capture(unet_, fn, tensors, *rest)

    unet_graph._capture = counting_capture
    try:
        apply(model, [])
        use_graphs = torch.cuda.is_available()
        for graphs in (True, False):
            unet_seconds(unet, inputs, 2, graphs and use_graphs)  # warm-up (and capture)
        graph_cache = getattr(unet, "_sd_graph_cache", None)
        storage_version = model.patcher.storage_version
        times: dict[str, list[float]] = {"graphs_none": [], "graphs_a": [], "eager_none": [], "eager_a": []}
        for _ in range(args.repeats):
            for lora in ("none", "a"):
                apply(model, ["A"] if lora == "a" else [])
                times[f"graphs_{lora}"].append(unet_seconds(unet, inputs, args.calls, use_graphs))
                times[f"eager_{lora}"].append(unet_seconds(unet, inputs, args.calls, False))
        for key, values in times.items():
            out[f"its_{key}"] = args.calls / median(values)
            out[f"its_{key}_all"] = [args.calls / v for v in values]
        # A on: the replayed graph against the eager UNet with the same merged weights.
        apply(model, ["A"])
        graphed = unet_call(unet, UNetInput(*inputs), use_graphs=use_graphs).clone()
        eager = unet_call(unet, UNetInput(*inputs), use_graphs=False)
        out["graph_vs_eager_max_abs_diff_with_a"] = (graphed - eager).abs().max().item()
        out["graph_captures"] = len(captures)
        out["graph_recaptured_on_switch"] = (len(captures) > 1 or getattr(unet, "_sd_graph_cache", None)
                                            is not graph_cache or model.patcher.storage_version != storage_version)
    finally:
        unet_graph._capture = real_capture
    return out


# --- diffusers + PEFT ---------------------------------------------------------------------------------------------


def diffusers_pipeline(model: StableDiffusionModel):
    """StableDiffusionXLPipeline from our components, with its own copy of the UNet: PEFT swaps the UNet's Linear
    modules for wrappers, which must not touch ours (and a copy keeps both sides on the same weights)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    encoders = model.text_encoders + [None] * (2 - len(model.text_encoders))
    tokenizers = model.tokenizers + [None] * (2 - len(model.tokenizers))
    return StableDiffusionXLPipeline(
        vae=model.vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=_copy_unet(model.unet),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))


def _copy_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module alone: its captured graphs and our patcher (which holds the whole model) stay."""
    saved = {k: unet.__dict__.pop(k) for k in ("_sd_graph_cache", "_sd_patcher") if k in unet.__dict__}
    try:
        return copy.deepcopy(unet)
    finally:
        unet.__dict__.update(saved)


def merged_weight_diff(model: StableDiffusionModel, pipe, layers: list[str]) -> float:
    """Largest difference between our UNet's weights and diffusers' (base layer's) over every LoRA layer."""
    worst = 0.0
    for layer in layers:
        theirs = pipe.unet.get_submodule(layer)
        theirs = getattr(theirs, "base_layer", theirs).weight
        ours = model.unet.get_submodule(layer).weight
        worst = max(worst, (ours.float() - theirs.float()).abs().max().item())
    return worst


def bench_diffusers(model: StableDiffusionModel, paths: dict[str, str], layers: list[str], inputs: tuple,
                    args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {}
    pipe = diffusers_pipeline(model)
    unet_seconds(pipe.unet, inputs, 2, False)
    none = [unet_seconds(pipe.unet, inputs, args.calls, False) for _ in range(args.repeats)]

    def fused_apply(name: str) -> None:
        pipe.load_lora_weights(paths[name], adapter_name=name)
        pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=[name])

    out["first_apply_s"] = timed(lambda: fused_apply("A"))
    wrapped = sum(1 for layer in layers if hasattr(pipe.unet.get_submodule(layer), "base_layer"))
    out["layers_matched"] = wrapped
    apply(model, ["A"])  # ours with A, to compare the merged weights
    out["merged_weights_max_abs_diff_vs_ours"] = merged_weight_diff(model, pipe, layers)
    apply(model, [])
    cold, remove = [], []
    for _ in range(args.repeats):
        pipe.unfuse_lora(components=["unet"])
        pipe.unload_lora_weights()
        cold.append(timed(lambda: fused_apply("A")))
        remove.append(timed(lambda: pipe.unfuse_lora(components=["unet"])))
        pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=["A"])
    out["cold_apply_s"], out["remove_s"] = median(cold), median(remove)
    out["cold_apply_all"], out["remove_all"] = cold, remove

    pipe.unfuse_lora(components=["unet"])
    out["load_second_adapter_s"] = timed(lambda: pipe.load_lora_weights(paths["B"], adapter_name="B"))

    def fused_switch(name: str) -> None:
        pipe.unfuse_lora(components=["unet"])
        pipe.set_adapters([name], [1.0])
        pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=[name])

    pipe.set_adapters(["A"], [1.0])
    pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=["A"])
    unet_seconds(pipe.unet, inputs, 2, False)
    fused_a = [unet_seconds(pipe.unet, inputs, args.calls, False) for _ in range(args.repeats)]
    fused_ab, fused_ba = [], []
    for _ in range(args.switches):
        fused_ab.append(timed(lambda: fused_switch("B")))
        fused_ba.append(timed(lambda: fused_switch("A")))
    out["switch_fused_a_to_b_s"], out["switch_fused_b_to_a_s"] = median(fused_ab), median(fused_ba)
    out["switch_fused_all"] = {"a_to_b": fused_ab, "b_to_a": fused_ba}

    pipe.unfuse_lora(components=["unet"])
    pipe.set_adapters(["A"], [1.0])
    unet_seconds(pipe.unet, inputs, 2, False)
    unfused_a = [unet_seconds(pipe.unet, inputs, args.calls, False) for _ in range(args.repeats)]
    set_ab, set_ba = [], []
    for _ in range(args.switches):
        set_ab.append(timed(lambda: pipe.set_adapters(["B"], [1.0])))
        set_ba.append(timed(lambda: pipe.set_adapters(["A"], [1.0])))
    out["switch_set_adapters_a_to_b_s"], out["switch_set_adapters_b_to_a_s"] = median(set_ab), median(set_ba)
    out["switch_set_adapters_all"] = {"a_to_b": set_ab, "b_to_a": set_ba}
    out["unload_s"] = timed(pipe.unload_lora_weights)
    # After every fuse/unfuse above: how far diffusers' weights are from the originals (ours: restored exactly).
    out["weights_after_unload_max_abs_diff"] = merged_weight_diff(model, pipe, layers)
    for key, values in (("none", none), ("fused_a", fused_a), ("unfused_a", unfused_a)):
        out[f"its_{key}"] = args.calls / median(values)
        out[f"its_{key}_all"] = [args.calls / v for v in values]
    return out


# --- report -------------------------------------------------------------------------------------------------------


def table(r: dict) -> str:
    o, d = r["ours"], r.get("diffusers")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    def dv(key: str) -> float | None:
        return d.get(key) if d else None

    switch = max(o["switch_a_to_b_s"], o["switch_b_to_a_s"])
    rows = [
        f"| SDXL, rank-{r['rank']} LoRA on {r['layers']} layers | ours | diffusers + PEFT |",
        "|---|---|---|",
        f"| first apply of A (ms) | {ms(o['first_apply_s'])} | {ms(dv('first_apply_s'))} |",
        f"| cold apply of A: read + parse + merge (ms) | {ms(o['cold_apply_s'])} | {ms(dv('cold_apply_s'))} |",
        f"| remove, weights restored (ms) | {ms(o['remove_s'])} | {ms(dv('remove_s'))} (unfuse_lora) |",
        f"| switch A -> B, both in memory, merged (ms) | {ms(o['switch_a_to_b_s'])} | "
        f"{ms(dv('switch_fused_a_to_b_s'))} (unfuse, set_adapters, fuse) |",
        f"| switch B -> A, both in memory, merged (ms) | {ms(o['switch_b_to_a_s'])} | "
        f"{ms(dv('switch_fused_b_to_a_s'))} |",
        f"| switch A -> B, unmerged adapters (ms) | - | {ms(dv('switch_set_adapters_a_to_b_s'))} (set_adapters) |",
        f"| UNet it/s, no LoRA, CUDA graphs | {o['its_graphs_none']:.2f} | - |",
        f"| UNet it/s, A applied, CUDA graphs | {o['its_graphs_a']:.2f} | - |",
        f"| UNet it/s, no LoRA, eager | {o['its_eager_none']:.2f} | {_f(dv('its_none'))} |",
        f"| UNet it/s, A applied, eager | {o['its_eager_a']:.2f} | {_f(dv('its_fused_a'))} fused, "
        f"{_f(dv('its_unfused_a'))} unfused |",
    ]
    goals = [
        f"Switch goal (<= {SWITCH_GOAL_S * 1000:.0f} ms): {'met' if switch <= SWITCH_GOAL_S else 'MISSED'} "
        f"({switch * 1000:.0f} ms, the slower direction).",
        f"it/s with A / without, CUDA graphs: {o['its_graphs_a'] / o['its_graphs_none']:.3f}; eager: "
        f"{o['its_eager_a'] / o['its_eager_none']:.3f}; graph re-captured on a switch: "
        f"{o['graph_recaptured_on_switch']} ({o['graph_captures']} capture(s) in all).",
    ]
    if d:
        goals.append(f"diffusers it/s with A fused / without: {d['its_fused_a'] / d['its_none']:.3f}; "
                     f"unfused: {d['its_unfused_a'] / d['its_none']:.3f}. Merged weights, ours against diffusers' "
                     f"fused: max abs diff {d['merged_weights_max_abs_diff_vs_ours']:.3g}. After its fuse/unfuse cycles "
                     f"and unload, diffusers' weights differ from the originals by up to "
                     f"{d['weights_after_unload_max_abs_diff']:.3g} (ours are restored from a backup, exactly).")
    return "\n".join(rows) + "\n\n" + "\n".join(goals)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-lora")
    parser.add_argument("--out", default="bench-lora.json")
    parser.add_argument("--calls", type=int, default=30, help="UNet calls per it/s sample (one per step)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--switches", type=int, default=8)
    parser.add_argument("--latent", type=int, default=128, help="latent side: 128 = 1024x1024")
    parser.add_argument("--no-diffusers", action="store_true", help="ours only (no peft needed)")
    parser.add_argument("--smoke", action="store_true", help="small UNet, any device: checks the script only")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke:
        assert device == "cuda", "this benchmark needs a CUDA GPU (or --smoke)"
    if args.smoke:
        args.latent = min(args.latent, 16)
    lora_dir = os.path.join(args.workdir, "models", "Lora")
    os.makedirs(lora_dir, exist_ok=True)
    # Our LoRA folder follows --data-dir, as in a real start; nothing is written to the repository.
    shared.set_cmd_opts(cmd_args.parse_args(["--data-dir", args.workdir], environ={}))
    shared.opts.data["lora_in_memory_limit"] = 0  # A1111's default until the switch section sets 2

    import diffusers
    import transformers

    # PEFT reports the other loaded adapter's keys as "missing" on every load, 700 names at a time: known noise.
    diffusers.utils.logging.set_verbosity_error()

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "diffusers_version": diffusers.__version__, "transformers": transformers.__version__,
        "dtype": "float16" if device == "cuda" else "float32", "latent": args.latent, "batch": 2,
        "calls": args.calls, "repeats": args.repeats, "switches": args.switches, "rank": RANK, "smoke": args.smoke,
    }
    start = time.perf_counter()
    model = build_model(args.smoke, device)
    layers = target_layers(model.unet)
    results["layers"] = len(layers)
    paths = {name: os.path.join(lora_dir, f"{name}.safetensors") for name in ("A", "B")}
    results["lora_file_mb"] = write_lora(paths["A"], model.unet, layers, seed=1) / 2**20
    write_lora(paths["B"], model.unet, layers, seed=2)
    files.list_available_networks()
    results["setup_s"] = time.perf_counter() - start
    print(f"model and files ready in {results['setup_s']:.1f} s; {len(layers)} layers", flush=True)
    inputs = unet_inputs(model.unet, args.latent, device)

    results["ours"] = bench_ours(model, layers, inputs, args)
    print("ours", json.dumps({k: v for k, v in results["ours"].items() if not k.endswith("_all")}), flush=True)
    if not args.no_diffusers:
        import peft

        results["peft_version"] = peft.__version__
        networks.unload(model)
        results["diffusers"] = bench_diffusers(model, paths, layers, inputs, args)
        print("diffusers", json.dumps({k: v for k, v in results["diffusers"].items() if not k.endswith("_all")}),
              flush=True)
    if device == "cuda":
        results["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results["table"] = table(results)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n" + results["table"])


if __name__ == "__main__":
    main()
