"""Full-size SD1.5 and SDXL networks with random weights, written as real single-file checkpoints.

Benchmarks need real sizes but no downloads: the architectures below are the published ones (UNet, VAE, CLIP
text encoders), the weights are random. `write_checkpoint_and_config` also writes a diffusers config folder so
plain diffusers' `from_single_file` can run offline on the same file (`diffusers_pipeline`), side by side with our
loader.
"""

from __future__ import annotations

import json
import os

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.models.ldm_export import checkpoint_state_dict
from modules.models.loader import load_tokenizer

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "hidden_act": "quick_gelu", "projection_dim": 768}
CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
             "hidden_act": "gelu", "projection_dim": 1280}
COMMON_TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
               "pad_token_id": 1, "layer_norm_eps": 1e-5}


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02)
    return module


def build(family: str, device: str = "cuda", dtype: torch.dtype = torch.float16) -> dict:
    """Random-weight diffusers/transformers modules of the real size for "sd15" or "sdxl"."""
    with torch.device(device):
        if family == "sd15":
            unet = UNet2DConditionModel(**SD15_UNET)
            vae = AutoencoderKL(**VAE, sample_size=512, scaling_factor=0.18215)
            text = [CLIPTextModel(CLIPTextConfig(**COMMON_TEXT, **CLIP_L))]
        else:
            unet = UNet2DConditionModel(**SDXL_UNET)
            vae = AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
            text = [CLIPTextModel(CLIPTextConfig(**COMMON_TEXT, **CLIP_L)),
                    CLIPTextModelWithProjection(CLIPTextConfig(**COMMON_TEXT, **CLIP_BIGG))]
    modules = {"unet": unet, "vae": vae, "text_encoders": text}
    for m in (unet, vae, *text):
        _randomize(m).to(dtype).eval().requires_grad_(False)
    return modules


def write_checkpoint_and_config(family: str, path: str, config_dir: str, device: str = "cuda") -> None:
    """Write `path` (original single-file layout, fp16) and a diffusers config folder for from_single_file."""
    parts = build(family, device=device)
    ldm_family = "sd1" if family == "sd15" else "sdxl"
    state = checkpoint_state_dict(ldm_family, parts["unet"], parts["vae"], parts["text_encoders"],
                                  dtype=torch.float16)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, path)
    del state

    os.makedirs(config_dir, exist_ok=True)
    parts["unet"].save_config(os.path.join(config_dir, "unet"))
    parts["vae"].save_config(os.path.join(config_dir, "vae"))
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_config(
        os.path.join(config_dir, "scheduler"))
    index = {"_diffusers_version": "0.42.1", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    names = ["text_encoder", "text_encoder_2"]
    kinds = ["clip-l", "open-clip"]
    for i, te in enumerate(parts["text_encoders"]):
        te.config.save_pretrained(os.path.join(config_dir, names[i]))
        load_tokenizer(kinds[i]).save_pretrained(os.path.join(config_dir, names[i].replace("text_encoder", "tokenizer")))
        index[names[i]] = ["transformers", type(te).__name__]
        index[names[i].replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
    if family == "sd15":
        index.update(_class_name="StableDiffusionPipeline", safety_checker=[None, None],
                     feature_extractor=[None, None], image_encoder=[None, None], requires_safety_checker=False)
    else:
        index.update(_class_name="StableDiffusionXLPipeline", image_encoder=[None, None],
                     feature_extractor=[None, None], force_zeros_for_empty_prompt=True)
    with open(os.path.join(config_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)
    del parts
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def diffusers_pipeline(family: str, path: str, config_dir: str):
    """Plain diffusers' StableDiffusion(XL)Pipeline.from_single_file for a file written above, fp16, on the GPU:
    the baseline the benchmarks compare against (offline, with the config folder)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    pipe = cls.from_single_file(path, config=config_dir, local_files_only=True, torch_dtype=torch.float16, **extra)
    return pipe.to("cuda")


def diffusers_fast_pipeline(family: str, path: str, config_dir: str):
    """The same pipeline set up as diffusers' speed guide says: Euler, channels_last, fused QKV projections,
    `torch.compile(mode="reduce-overhead")` on the UNet and on the VAE decode (compiles on its first call)."""
    from diffusers import EulerDiscreteScheduler

    fast = diffusers_pipeline(family, path, config_dir)
    fast.scheduler = EulerDiscreteScheduler.from_config(fast.scheduler.config)
    fast.set_progress_bar_config(disable=True)
    fast.fuse_qkv_projections()
    fast.unet.to(memory_format=torch.channels_last)
    fast.vae.to(memory_format=torch.channels_last)
    fast.unet = torch.compile(fast.unet, mode="reduce-overhead", fullgraph=True)
    fast.vae.decode = torch.compile(fast.vae.decode, mode="reduce-overhead", fullgraph=True)
    return fast
