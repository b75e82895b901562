"""Depth on a CUDA GPU: depth estimation of a 1024x1024 picture and SD2-depth 768x768 depth2img, ours against
the libraries' own pipelines in the same run. Random weights at the real sizes, nothing downloaded.

1. Estimation, per estimator (MiDaS DPT-Hybrid and DPT-Large, Depth Anything V2 small/base/large): ours is
   `modules.depth.estimators.estimate` (resize to the processing size, network, bicubic back to 1024x1024,
   min-max normalise), weights read from models/depth/<name>/ as a user keeps them; theirs is transformers'
   `pipeline("depth-estimation")` on the same network and the same processing size (its output includes the
   depth picture it formats). Both fp16 on the GPU (ours keeps MiDaS's weights in float32 under fp16 autocast,
   as diffusers does for DPT-Hybrid).
2. depth2img: an SD2-depth checkpoint (5-channel UNet, OpenCLIP-H text encoder) written as a single file and
   loaded by our loader; ours is `process_images` of an img2img request (MiDaS DPT-Hybrid estimate included),
   theirs is diffusers' `StableDiffusionDepth2ImgPipeline` on the same UNet, VAE and DPT-Hybrid weights, Euler,
   CFG 7, strength 0.8 of 30 steps: 24 UNet steps on both sides (ours with img2img_fix_steps and 24 steps).

Medians of `--repeats` alternating runs after a warm-up.

    python bench/bench_depth.py --workdir /tmp/bench --out bench/results/depth-h200.json
    python bench/bench_depth.py --small          # a CPU smoke test of every path (tiny networks, tiny sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.timing import timed  # noqa: E402

PROMPT = "a cosy living room with a green sofa, soft light, highly detailed"
NEGATIVE = "blurry, low quality"
ESTIMATORS = ["midas_dpt_hybrid", "midas_dpt_large", "depth_anything_v2_small", "depth_anything_v2_base",
              "depth_anything_v2_large"]
SD2_DEPTH_UNET = {
    "sample_size": 64, "in_channels": 5, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
OPEN_CLIP_H = {"vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 1024, "intermediate_size": 4096,
               "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512, "bos_token_id": 49406,
               "eos_token_id": 49407, "pad_token_id": 1, "layer_norm_eps": 1e-5}


def picture(size: int) -> Image.Image:
    """A deterministic picture with structure (gradients, a disc, stripes)."""
    x = torch.linspace(0, 1, size)
    r = (x[None, :] * 255).expand(size, size)
    g = (x[:, None] * 255).expand(size, size)
    b = ((torch.sin(x[None, :] * 40) * torch.cos(x[:, None] * 30) + 1) * 127.5)
    disc = ((x[None, :] - 0.6) ** 2 + (x[:, None] - 0.5) ** 2) < 0.05
    r = torch.where(disc, torch.full_like(r, 240.0), r)
    return Image.fromarray(torch.stack([r, g, b], -1).to(torch.uint8).numpy())


def _median_pair(ours, theirs, repeats: int) -> tuple[float, float, list[float], list[float]]:
    ours(), theirs()  # warm-up: kernels, allocator, cuDNN autotune
    ours_t, theirs_t = [], []
    for _ in range(repeats):
        ours_t.append(timed(ours))
        theirs_t.append(timed(theirs))
    return statistics.median(ours_t), statistics.median(theirs_t), ours_t, theirs_t


# --- writing the networks --------------------------------------------------------------------------------------

def write_estimators(models_dir: str, small: bool) -> dict[str, torch.nn.Module]:
    """models/depth/<name>/{config.json, model.safetensors} for every estimator; returns the networks (CPU)."""
    from safetensors.torch import save_file

    from modules.depth import transformers_depth

    networks = {}
    for name in ESTIMATORS:
        folder = os.path.join(models_dir, "depth", name)
        os.makedirs(folder, exist_ok=True)
        if small:
            sys.path.insert(0, os.path.join(REPO, "tests"))
            from depth_files import KIND_OF, TINY_CONFIGS, build_estimator

            model = build_estimator(name)
            config = TINY_CONFIGS[KIND_OF[name]]
        else:
            with open(os.path.join(transformers_depth.CONFIG_DIR, f"{name}.json")) as f:
                config = json.load(f)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                model = transformers_depth._model_class(config["model_type"])(
                    transformers_depth.build_config(config)).eval()
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(folder, "model.safetensors"))
        networks[name] = model
    return networks


def build_sd2_depth(small: bool, device: str):
    """(unet, vae, text encoder for the checkpoint) of SD2-depth, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if small:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from tiny_models import build_family

        tiny = build_family("sd2", "depth", seed=2)
        return tiny.unet, tiny.vae, tiny.text_encoders[0]
    from bench.full_size import VAE, _randomize

    with torch.device(device):
        unet = _randomize(UNet2DConditionModel(**SD2_DEPTH_UNET))
        vae = _randomize(AutoencoderKL(**VAE, sample_size=512, scaling_factor=0.18215))
        text = _randomize(CLIPTextModel(CLIPTextConfig(**OPEN_CLIP_H, num_hidden_layers=24)))
    return unet.half().eval(), vae.half().eval(), text.half().eval()


# --- estimation ------------------------------------------------------------------------------------------------

def estimation_runners(name: str, network: torch.nn.Module, image: Image.Image, resolution: int, device):
    from transformers import DPTImageProcessor, pipeline

    from modules.depth import estimators, transformers_depth

    def ours():
        depth = estimators.estimate(name, image, resolution)
        assert depth.shape == (image.height, image.width)

    pre = transformers_depth.MIDAS if name.startswith("midas") else transformers_depth.DEPTH_ANYTHING
    width, height = transformers_depth.processing_size(image.width, image.height, resolution, pre)
    processor = DPTImageProcessor(size={"height": height, "width": width}, keep_aspect_ratio=False,
                                  ensure_multiple_of=1, resample=Image.Resampling.BICUBIC,
                                  image_mean=list(pre.mean), image_std=list(pre.std))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    net = network.to(device=device, dtype=dtype)
    embeddings = getattr(getattr(net, "dpt", None), "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "image_size"):
        embeddings.image_size = (height, width)
    pipe = pipeline("depth-estimation", model=net, image_processor=processor, device=device, dtype=dtype)

    def theirs():
        pipe(image)

    return ours, theirs


def bench_estimation(networks, size: int, repeats: int, device) -> list[dict]:
    from modules.depth import estimators

    image = picture(size)
    rows = []
    for name in ESTIMATORS:
        resolution = estimators.spec(name).default_resolution
        ours, theirs = estimation_runners(name, networks[name], image, resolution, device)
        o, t, ours_all, theirs_all = _median_pair(ours, theirs, repeats)
        rows.append({"estimator": name, "resolution": resolution, "ours_s": o, "transformers_s": t, "ratio": t / o,
                     "ours_all": ours_all, "transformers_all": theirs_all})
        print(f"| {name} {size}x{size} @ {resolution} | {o * 1000:.1f} ms | {t * 1000:.1f} ms | {t / o:.2f} |")
        estimators.unload_all()
        networks[name].to("cpu")
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


# --- depth2img -------------------------------------------------------------------------------------------------

def bench_depth2img(workdir: str, networks, size: int, steps: int, strength: float, repeats: int, small: bool,
                    device) -> dict:
    from diffusers import EulerDiscreteScheduler, StableDiffusionDepth2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, DPTImageProcessor

    from modules import devices, processing, shared
    from modules.models.ldm_export import write_checkpoint
    from modules.models.loader import load_model, load_tokenizer

    unet, vae, text = build_sd2_depth(small, str(device))
    path = os.path.join(workdir, "sd2-depth.safetensors")
    write_checkpoint(path, "sd2", unet, vae, [text], dtype=torch.float16 if not small else None)
    model = load_model(path, devices.choose_precision(device))

    unet_steps = int(steps * strength)
    shared.opts.data.update(live_previews_enable=False, img2img_fix_steps=True, samples_save=False)
    image = picture(size)

    def ours():
        p = processing.StableDiffusionProcessingImg2Img(
            init_images=[image], prompt=PROMPT, negative_prompt=NEGATIVE, steps=unet_steps, cfg_scale=7.0,
            denoising_strength=strength, width=size, height=size, sampler_name="Euler", seed=1234,
            do_not_save_samples=True, do_not_save_grid=True)
        p.sd_model = model
        out = processing.process_images(p)
        assert out.images[0].size == (size, size) and "Depth estimator: midas_dpt_hybrid" in out.infotexts[0]

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if small:
        diffusers_text = text
    else:  # diffusers' SD2 text encoder config stops at the penultimate layer (23), which SD2 conditions on
        with torch.device(device):
            diffusers_text = CLIPTextModel(CLIPTextConfig(**OPEN_CLIP_H, num_hidden_layers=23)).to(dtype).eval()
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=vae.to(device, dtype), text_encoder=diffusers_text.to(device, dtype), tokenizer=load_tokenizer("open-clip"),
        unet=unet.to(device, dtype),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        depth_estimator=networks["midas_dpt_hybrid"].to(device, dtype),
        feature_extractor=DPTImageProcessor(size={"height": 384, "width": 384}, keep_aspect_ratio=False,
                                            ensure_multiple_of=1, resample=Image.Resampling.BICUBIC,
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3))
    pipe.set_progress_bar_config(disable=True)
    embeddings = pipe.depth_estimator.dpt.embeddings
    embeddings.image_size = (384, 384)

    def theirs():
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength, num_inference_steps=steps,
             guidance_scale=7.0, generator=torch.Generator(device).manual_seed(1234))

    o, t, ours_all, theirs_all = _median_pair(ours, theirs, repeats)
    print(f"| SD2-depth depth2img {size}x{size}, {unet_steps} UNet steps, CFG 7, Euler | {o:.2f} s | {t:.2f} s "
          f"| {t / o:.2f} |")
    return {"size": size, "steps": steps, "strength": strength, "unet_steps_each_side": unet_steps, "ours_s": o,
            "diffusers_s": t, "ratio": t / o, "ours_all": ours_all, "diffusers_all": theirs_all}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/bench-depth")
    parser.add_argument("--out", default="bench-depth.json")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny networks and sizes, any device (smoke test)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from modules import devices, paths

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.small:
        assert device.type == "cuda", "this benchmark needs a CUDA GPU (or --small)"
    devices.configure(devices.choose_precision(device))
    os.makedirs(args.workdir, exist_ok=True)
    paths.models_path = os.path.join(args.workdir, "models")
    networks = write_estimators(paths.models_path, args.small)

    size, gen_size, steps, repeats = (1024, 768, args.steps, args.repeats) if not args.small else (128, 64, 4, 1)
    print("| depth estimation | ours | transformers pipeline | ratio |\n|---|---|---|---|")
    estimation = bench_estimation(networks, size, repeats, device)
    print("| depth2img | ours | diffusers StableDiffusionDepth2ImgPipeline | ratio |\n|---|---|---|---|")
    depth2img = bench_depth2img(args.workdir, networks, gen_size, steps, args.strength, repeats, args.small, device)
    results = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "small": args.small, "estimation_size": size, "estimation": estimation, "depth2img": depth2img,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
