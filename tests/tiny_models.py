"""Tiny, seeded, random-weight diffusers models for every Stable Diffusion family, and writers that save them
as original single-file checkpoints (the format users download), so tests exercise the real loaders.

The shapes follow the rules the single-file loader uses to infer configs from weights; keep them in step:
- UNet: channels multiples of 32 (32 norm groups); SD1 heads of 8 channels (int attention_head_dim), conv
  proj_in; SD2/SDXL one head per 64 channels, linear proj_in; SDXL "text_time" added embedding.
- Text encoders: CLIP vocabulary (49408 tokens, 77 positions), hidden 64, one head per 64 channels.
- VAE: two levels (32, 64), 4 latent channels.

Every tensor gets a little seeded noise on top of diffusers' init, so no two tensors are equal (norm weights
are all ones otherwise) and a key mix-up in a conversion cannot go unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.models.ldm_export import write_checkpoint

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
VARIANTS = {"normal": 4, "inpaint": 9, "depth": 5, "ip2p": 8}  # variant -> UNet in_channels
PREDICTIONS = (None, "epsilon", "v")

TEXT_HIDDEN = 64
PROJECTION_DIM = 32
TIME_EMBED_DIM = 256  # SDXL addition_time_embed_dim
SCALING_FACTOR = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}

# Seed offsets keep components distinct while the whole set depends on one seed.
_SEED_STRIDE = 100
_UNET, _VAE, _TE = 0, 1, 2


@dataclass
class TinyModel:
    family: str
    variant: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel | CLIPTextModelWithProjection] = field(default_factory=list)
    prediction: str | None = None
    path: Path | None = None  # set by write_tiny_checkpoint


def _jitter(module: torch.nn.Module, scale: float = 0.02) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def _build(factory, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
        _jitter(module)
    return module.eval()


def text_config(kind: str) -> CLIPTextConfig:
    """kind: "clip_l" (SD1, SDXL te1), "open_clip" (SD2), "open_clip_g" (SDXL te2 / refiner)."""
    layers = 3 if kind == "open_clip" else 2  # SD2 uses the penultimate layer, so it needs one to spare
    return CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_attention_heads=TEXT_HIDDEN // 64,
        num_hidden_layers=layers,
        hidden_act="quick_gelu" if kind == "clip_l" else "gelu",
        projection_dim=PROJECTION_DIM,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def build_text_encoder(kind: str, seed: int = 0) -> CLIPTextModel | CLIPTextModelWithProjection:
    cls = CLIPTextModelWithProjection if kind == "open_clip_g" else CLIPTextModel
    return _build(lambda: cls(text_config(kind)), seed)


def unet_config(family: str, variant: str = "normal") -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    common = {"sample_size": 8, "in_channels": VARIANTS[variant], "out_channels": 4, "layers_per_block": 1}
    if family == "sd1":
        return common | {
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 8,
            "use_linear_projection": False,
            "cross_attention_dim": TEXT_HIDDEN,
        }
    if family == "sd2":
        channels = (64, 128)
        return common | {
            "block_out_channels": channels,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": [c // 64 for c in channels],
            "use_linear_projection": True,
            "cross_attention_dim": TEXT_HIDDEN,
        }
    if family in ("sdxl", "sdxl_refiner"):
        channels = (64, 128)
        base = family == "sdxl"
        return common | {
            "block_out_channels": channels,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": [c // 64 for c in channels],
            "use_linear_projection": True,
            "transformer_layers_per_block": [1, 2],  # unequal depths exercise depth inference
            "cross_attention_dim": 2 * TEXT_HIDDEN if base else TEXT_HIDDEN,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": TIME_EMBED_DIM,
            # pooled text embedding + time ids: 6 for base (size, crop, target), 5 for refiner (aesthetic score)
            "projection_class_embeddings_input_dim": PROJECTION_DIM + (6 if base else 5) * TIME_EMBED_DIM,
        }
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def vae_config(family: str) -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        # Four levels, like the real VAE: 8 pixels per latent cell, so images stay cheap for the tiny UNet.
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": SCALING_FACTOR[family],
    }


def set_prediction_response(unet: UNet2DConditionModel, prediction: str) -> None:
    """Make the UNet answer the v-prediction probe the way a trained model of that kind does.

    The loader (like A1111) runs the UNet once on x = 0.5 everywhere at timestep 999 and calls the model
    v-prediction when mean(output - x) < -1. Random weights do not behave like a trained model, so the fixture
    reproduces the trained response directly: a zero conv_out weight makes the output its bias, -2 for a
    v model (mean(out - x) = -2.5) and 0.5 for an epsilon model (out = x, mean 0).
    """
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(-2.0 if prediction == "v" else 0.5)


def text_encoder_kinds(family: str) -> list[str]:
    return {
        "sd1": ["clip_l"],
        "sd2": ["open_clip"],
        "sdxl": ["clip_l", "open_clip_g"],
        "sdxl_refiner": ["open_clip_g"],
    }[family]


def build_unet(
    family: str, variant: str = "normal", seed: int = 0, prediction: str | None = None
) -> UNet2DConditionModel:
    """Just the UNet that ``build_family`` would make with the same arguments."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    unet = _build(lambda: UNet2DConditionModel(**unet_config(family, variant)), seed * _SEED_STRIDE + _UNET)
    if prediction is not None:
        set_prediction_response(unet, prediction)
    return unet


def build_family(family: str, variant: str = "normal", seed: int = 0, prediction: str | None = None) -> TinyModel:
    """Tiny diffusers UNet, VAE and text encoders of ``family`` ("sd1", "sd2", "sdxl", "sdxl_refiner").

    ``prediction`` ("epsilon" or "v") pins the UNet's answer to the v-prediction probe (the loader probes SD2
    only; see ``set_prediction_response``); None leaves the random weights as they are.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    base = seed * _SEED_STRIDE
    unet = build_unet(family, variant, seed, prediction)
    vae = _build(lambda: AutoencoderKL(**vae_config(family)), base + _VAE)
    encoders = [build_text_encoder(kind, base + _TE + i) for i, kind in enumerate(text_encoder_kinds(family))]
    return TinyModel(family, variant, unet, vae, encoders, prediction)


def write_tiny_checkpoint(
    path: str | Path,
    family: str,
    variant: str = "normal",
    seed: int = 0,
    fmt: str | None = None,
    prediction: str | None = None,
    dtype: torch.dtype | None = None,
) -> TinyModel:
    """Build a tiny model and save it as an original single-file checkpoint at ``path``.

    ``fmt`` is "safetensors" or "ckpt" (pickled ``{"state_dict": ...}``). Left out, a path ending in .ckpt
    gives ckpt and anything else safetensors; given, it also sets the file's suffix. The file written is
    ``model.path``.
    """
    target = Path(path)
    if fmt is None:
        fmt = "ckpt" if target.suffix == ".ckpt" else "safetensors"
    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"unknown format {fmt!r}")
    if target.suffix != "." + fmt:
        target = (
            target.with_suffix("." + fmt) if target.suffix in (".safetensors", ".ckpt") else Path(f"{target}.{fmt}")
        )
    model = build_family(family, variant, seed, prediction)
    model.path = write_checkpoint(target, family, model.unet, model.vae, model.text_encoders, dtype=dtype)
    return model
