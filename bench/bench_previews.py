"""Live preview methods on a CUDA GPU: seconds per preview of "Full", "Approx NN", "Approx cheap" and "TAESD" for
an SD1.5 512x512 latent (64x64) and an SDXL 1024x1024 latent (128x128), and, when real weights are given, how
close each cheap method comes to the Full VAE decode of the same latent (PSNR and SSIM).

Speed: every network has its real architecture and size (the SD VAE decoder, A1111's VAEApprox, the TAESD
decoder) with random weights, written in the real file layouts into a temporary models folder and loaded by our
own code (modules.engine.preview_models), so nothing is downloaded. Two timings per method, medians of
`--repeats` calls after a warm-up: `network_ms` (latent -> RGB tensor on the device) and `preview_ms` (what a
live preview costs: `previews.latents_to_preview`, network + copy to the CPU + PIL image of the final size).
fp16 on the GPU, as the job's VAE runs.

Quality: random weights make quality numbers meaningless, so none are reported unless real files are given.
With `--vae-sd15` / `--vae-sdxl` (a VAE file, e.g. vae-ft-mse-840000-ema-pruned.safetensors / sdxl_vae.safetensors)
the latent is the real VAE's encoding of a picture (`--image`, else a synthetic one) and the Full decode is the
reference; "Approx cheap" is then scored, and "Approx NN" / "TAESD" too when their real files are given
(`--approx-sd15 model.pt`, `--approx-sdxl vaeapprox-sdxl.safetensors`, `--taesd taesd_decoder.pth`,
`--taesdxl taesdxl_decoder.pth`). PSNR (dB) and SSIM on the 8-bit previews at the image size, against the Full
preview. Quality is always measured in float32.

    python bench/bench_previews.py --out bench/results/previews-h200.json
    python bench/bench_previews.py --vae-sd15 vae-ft-mse.safetensors --taesd taesd_decoder.pth --out q.json
    python bench/bench_previews.py --small          # a CPU smoke test of every path (tiny VAE, tiny latents)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import types
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.quality import quality  # noqa: E402
from bench.timing import timed  # noqa: E402

METHODS = ("Full", "Approx NN", "Approx cheap", "TAESD")
# family -> (is_sdxl, image size, VAE scaling factor, our family name for VAE files)
FAMILIES = {"sd15": (False, 512, 0.18215, "sd1"), "sdxl": (True, 1024, 0.13025, "sdxl")}
TINY_VAE = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}
# (method, is_sdxl) -> the file name our loader looks for, under models/VAE-approx or models/VAE-taesd
FILE_NAMES = {("Approx NN", False): ("VAE-approx", "model.pt"),
              ("Approx NN", True): ("VAE-approx", "vaeapprox-sdxl.safetensors"),
              ("TAESD", False): ("VAE-taesd", "taesd_decoder.pth"),
              ("TAESD", True): ("VAE-taesd", "taesdxl_decoder.pth")}


def picture(size: int) -> Image.Image:
    """A deterministic picture with structure (gradients, a disc, stripes) for the quality latent."""
    x = torch.linspace(0, 1, size)
    r = (x[None, :] * 255).expand(size, size)
    g = (x[:, None] * 255).expand(size, size)
    b = (torch.sin(x[None, :] * 40) * torch.cos(x[:, None] * 30) + 1) * 127.5
    disc = ((x[None, :] - 0.6) ** 2 + (x[:, None] - 0.5) ** 2) < 0.05
    r = torch.where(disc, torch.full_like(r, 240.0), r)
    return Image.fromarray(torch.stack([r, g, b], -1).to(torch.uint8).numpy())


# --- networks and files ---------------------------------------------------------------------------------------

def build_vae(family: str, small: bool, vae_file: str | None):
    """The family's AutoencoderKL (float32, CPU): a real file's weights when given, else random at the real size."""
    from diffusers import AutoencoderKL

    from bench.full_size import VAE, _randomize

    _is_sdxl, size, scaling, _ = FAMILIES[family]
    config = dict(VAE, **TINY_VAE) if small else dict(VAE)
    vae = AutoencoderKL(**config, sample_size=size, scaling_factor=scaling)
    if vae_file:
        from modules.models.vae_loader import read_vae_weights

        vae.load_state_dict(read_vae_weights(vae_file, FAMILIES[family][3]), strict=True)
    else:
        _randomize(vae)
    return vae.eval().requires_grad_(False)


def write_random_preview_weights(models_dir: str, method: str, is_sdxl: bool) -> None:
    """A random-weight file of the real layout where our loader looks (keys as the published files have them)."""
    from safetensors.torch import save_file

    from modules.engine import preview_models

    if method == "Approx NN":
        state = preview_models.VAEApprox().state_dict()
    else:  # TAESD's own key layout: DecoderTiny's `layers.N` is the file's `N+1` (index 0 is the weightless clamp)
        state = {f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v
                 for k, v in preview_models.taesd_decoder().state_dict().items()}
    folder, name = FILE_NAMES[(method, is_sdxl)]
    path = os.path.join(models_dir, folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)


def place_preview_weights(models_dir: str, args: argparse.Namespace) -> dict[tuple[str, bool], bool]:
    """Real files where given (copied under the expected names), random ones elsewhere; -> which are real."""
    given = {("Approx NN", False): args.approx_sd15, ("Approx NN", True): args.approx_sdxl,
             ("TAESD", False): args.taesd, ("TAESD", True): args.taesdxl}
    real = {}
    for key, path in given.items():
        if path:
            folder, name = FILE_NAMES[key]
            if path.lower().endswith(".safetensors") != name.endswith(".safetensors"):
                name = os.path.splitext(name)[0] + (".safetensors" if path.lower().endswith(".safetensors") else ".pt")
            os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
            shutil.copyfile(path, os.path.join(models_dir, folder, name))
        else:
            write_random_preview_weights(models_dir, *key)
        real[key] = bool(path)
    return real


# --- measuring --------------------------------------------------------------------------------------------------

def decoders(vae, is_sdxl: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Callable | None]:
    """Each method's latent -> RGB [-1, 1] function, as the live preview builds it (None: Approx cheap)."""
    from modules.engine import preview_models, previews

    model = types.SimpleNamespace(vae=vae, is_sdxl=is_sdxl)
    found = {"Full": previews._model_decoder(model), "Approx cheap": None}
    for method in preview_models.NETWORK_METHODS:
        found[method] = preview_models.decoder(method, is_sdxl, device, dtype)
        assert found[method] is not None, f"{method}: no network loaded (see the log)"
    return found


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: kernels, cuDNN autotune, allocator
    times = [timed(fn) * 1000 for _ in range(repeats)]
    return statistics.median(times), times


def network_call(method: str, decode: Callable | None, latents: torch.Tensor, is_sdxl: bool) -> Callable[[], object]:
    from modules.engine import previews

    if method == "Approx cheap":
        return lambda: previews.cheap_approximation(latents[0], is_sdxl)
    return lambda: decode(latents[:1])


def bench_family(family: str, args: argparse.Namespace, real: dict, device: torch.device) -> dict:
    from modules.engine import preview_models, previews

    is_sdxl, size, _, _ = FAMILIES[family]
    size = 64 if args.small else size
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    vae_file = args.vae_sdxl if is_sdxl else args.vae_sd15
    vae = build_vae(family, args.small, vae_file)
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)

    vae.to(device, dtype)
    found = decoders(vae, is_sdxl, device, dtype)
    timing = {}
    for method in METHODS:
        network_ms, network_all = median_ms(network_call(method, found[method], latents, is_sdxl), args.repeats)
        preview_ms, preview_all = median_ms(
            lambda m=method: previews.latents_to_preview(latents, is_sdxl, m, found[m]), args.repeats)
        timing[method] = {"network_ms": round(network_ms, 3), "preview_ms": round(preview_ms, 3),
                          "network_all_ms": [round(t, 3) for t in network_all],
                          "preview_all_ms": [round(t, 3) for t in preview_all]}
    result = {"image_size": size, "latent": list(latents.shape), "dtype": str(dtype), "timing": timing,
              "real_weights": {"vae": bool(vae_file), **{m: real[(m, is_sdxl)] for m in preview_models.NETWORK_METHODS}}}

    if vae_file:  # quality against the Full decode, in float32, of a real picture's latent
        vae.to(device, torch.float32)
        preview_models.clear_cache()
        found = decoders(vae, is_sdxl, device, torch.float32)
        image = Image.open(args.image).convert("RGB").resize((size, size)) if args.image else picture(size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            encoded = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        reference = previews.latents_to_preview(encoded, is_sdxl, "Full", found["Full"])
        scored = ["Approx cheap"] + [m for m in preview_models.NETWORK_METHODS if real[(m, is_sdxl)]]
        result["quality_vs_full"] = {
            m: quality(previews.latents_to_preview(encoded, is_sdxl, m, found[m]), reference) for m in scored}
        result["quality_picture"] = args.image or "synthetic"
    else:
        result["quality_vs_full"] = "not measured: needs real weights (--vae-sd15/--vae-sdxl and the preview files)"
    vae.to("cpu")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-previews.json")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--small", action="store_true", help="tiny VAE and latents, any device (smoke test)")
    parser.add_argument("--vae-sd15", help="a real SD1.5 VAE file: enables quality numbers for sd15")
    parser.add_argument("--vae-sdxl", help="a real SDXL VAE file: enables quality numbers for sdxl")
    parser.add_argument("--approx-sd15", help="A1111's VAE-approx/model.pt")
    parser.add_argument("--approx-sdxl", help="A1111's vaeapprox-sdxl file (.pt or .safetensors)")
    parser.add_argument("--taesd", help="madebyollin's taesd_decoder.pth (or .safetensors)")
    parser.add_argument("--taesdxl", help="madebyollin's taesdxl_decoder.pth (or .safetensors)")
    parser.add_argument("--image", help="a picture to encode for the quality latent (default: a synthetic one)")
    args = parser.parse_args()
    if args.small:
        args.repeats = min(args.repeats, 2)

    from modules import paths
    from modules.engine import preview_models

    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    if not args.small:
        assert device.type == "cuda", "this benchmark needs a CUDA GPU (or --small)"
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="bench-previews-") as tmp:
        paths.models_path = os.path.join(tmp, "models")  # our loader reads from here
        real = place_preview_weights(paths.models_path, args)
        preview_models.clear_cache()
        families = {f: bench_family(f, args, real, device) for f in args.families.split(",") if f}
        preview_models.clear_cache()
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "small": args.small, "repeats": args.repeats, "families": families,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    for family, r in families.items():
        for method, t in r["timing"].items():
            print(f"{family:5s} {method:13s} network {t['network_ms']:9.3f} ms   preview {t['preview_ms']:9.3f} ms")
        if isinstance(r["quality_vs_full"], dict):
            for method, q in r["quality_vs_full"].items():
                print(f"{family:5s} {method:13s} vs Full: PSNR {q['psnr_db']} dB, SSIM {q['ssim']}")


if __name__ == "__main__":
    main()
