"""Diffusers/transformers configs read off the shapes of original-layout weights.

Everything that the shapes determine (widths, depths, levels, which levels attend, context size) is read from
them, so any size of model loads without a config file, tiny test models included. What shapes cannot tell
(attention head counts, SDXL's time-embedding width) follows each family's fixed rule; a sidecar may override.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from modules.models.detection import UNET_PREFIX, ModelSpec

VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}
SDXL_TIME_EMBED_DIM = 256
DEFAULT_SAMPLE_SIZE = {"sd1": 64, "sd2": 64, "sdxl": 128, "sdxl_refiner": 128}


def _count_indices(keys: list[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_config(state_dict: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, Any]:
    p = UNET_PREFIX
    keys = [k for k in state_dict if k.startswith(p)]
    conv_in = state_dict[f"{p}input_blocks.0.0.weight"]
    n_input_blocks = _count_indices(keys, re.escape(p) + r"input_blocks\.(\d+)\.")

    # Walk the input blocks: resnets (optionally followed by a transformer) until a downsampler ends the level.
    levels: list[dict[str, Any]] = [{"channels": None, "resnets": 0, "attention": False, "depth": 1}]
    for i in range(1, n_input_blocks):
        if f"{p}input_blocks.{i}.0.op.weight" in state_dict:
            levels.append({"channels": None, "resnets": 0, "attention": False, "depth": 1})
            continue
        level = levels[-1]
        level["channels"] = int(state_dict[f"{p}input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        level["resnets"] += 1
        if f"{p}input_blocks.{i}.1.proj_in.weight" in state_dict:
            level["attention"] = True
            level["depth"] = _count_indices(keys, re.escape(f"{p}input_blocks.{i}.1.transformer_blocks.") + r"(\d+)\.")
    block_out_channels = [lvl["channels"] for lvl in levels]
    layers = {lvl["resnets"] for lvl in levels}
    if None in block_out_channels or len(layers) != 1:
        raise ValueError("UNet input blocks do not follow the Stable Diffusion layout")

    attn_key = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in state_dict.items() if k.startswith(p) and k.endswith(".proj_in.weight"))
    linear_projection = proj_in.ndim == 2
    if spec.family == "sd1":
        head_dim: int | list[int] = 8  # SD1 uses 8 heads everywhere (diffusers calls the head count head_dim)
    else:
        head_dim = [max(1, c // 64) for c in block_out_channels]  # SD2/SDXL: 64 channels per head

    config: dict[str, Any] = {
        "sample_size": DEFAULT_SAMPLE_SIZE[spec.family],
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(state_dict[f"{p}out.2.weight"].shape[0]),
        "block_out_channels": block_out_channels,
        "layers_per_block": layers.pop(),
        "down_block_types": ["CrossAttnDownBlock2D" if lvl["attention"] else "DownBlock2D" for lvl in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if lvl["attention"] else "UpBlock2D" for lvl in reversed(levels)],
        "transformer_layers_per_block": [lvl["depth"] for lvl in levels],
        "cross_attention_dim": int(state_dict[attn_key].shape[1]),
        "attention_head_dim": head_dim,
        "use_linear_projection": linear_projection,
    }
    if f"{p}label_emb.0.0.weight" in state_dict:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=int(state_dict[f"{p}label_emb.0.0.weight"].shape[1]),
        )
    if spec.family == "sd2" and spec.prediction_type == "v_prediction":
        config["upcast_attention"] = True  # SD2-768-v overflows fp16 attention otherwise
    overrides = dict(spec.overrides.get("unet", {}))
    head_channels = overrides.pop("num_head_channels", None)
    if head_channels:
        config["attention_head_dim"] = [max(1, c // int(head_channels)) for c in block_out_channels]
    config.update(overrides)
    return config


def vae_config(state_dict: dict[str, torch.Tensor], prefix: str, family: str) -> dict[str, Any]:
    keys = [k for k in state_dict if k.startswith(prefix)]
    levels = _count_indices(keys, re.escape(f"{prefix}encoder.down.") + r"(\d+)\.")
    if levels == 0 or f"{prefix}encoder.conv_in.weight" not in state_dict:
        raise ValueError("VAE encoder weights are missing")
    channels = [int(state_dict[f"{prefix}encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)]
    return {
        "in_channels": int(state_dict[f"{prefix}encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict[f"{prefix}decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": _count_indices(keys, re.escape(f"{prefix}encoder.down.0.block.") + r"(\d+)\."),
        "latent_channels": int(state_dict[f"{prefix}decoder.conv_in.weight"].shape[1]),
        "scaling_factor": VAE_SCALING[family],
        "sample_size": DEFAULT_SAMPLE_SIZE[family] * 8,
        "force_upcast": family in ("sdxl", "sdxl_refiner"),
    }


def _clip_common(hidden: int, vocab: int, positions: int, layers: int, intermediate: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": positions,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


def clip_l_config(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """OpenAI CLIP text encoder in transformers layout (`<prefix>text_model.*`)."""
    t = f"{prefix}text_model."
    tok = state_dict[f"{t}embeddings.token_embedding.weight"]
    keys = [k for k in state_dict if k.startswith(t)]
    config = _clip_common(
        hidden=int(tok.shape[1]),
        vocab=int(tok.shape[0]),
        positions=int(state_dict[f"{t}embeddings.position_embedding.weight"].shape[0]),
        layers=_count_indices(keys, re.escape(f"{t}encoder.layers.") + r"(\d+)\."),
        intermediate=int(state_dict[f"{t}encoder.layers.0.mlp.fc1.weight"].shape[0]),
    )
    config["hidden_act"] = "quick_gelu"
    return config


def open_clip_config(state_dict: dict[str, torch.Tensor], prefix: str, drop_last_layer: bool) -> dict[str, Any]:
    """OpenCLIP text encoder (`<prefix>token_embedding`, `transformer.resblocks.N`)."""
    tok = state_dict[f"{prefix}token_embedding.weight"]
    keys = [k for k in state_dict if k.startswith(prefix)]
    layers = _count_indices(keys, re.escape(f"{prefix}transformer.resblocks.") + r"(\d+)\.")
    config = _clip_common(
        hidden=int(tok.shape[1]),
        vocab=int(tok.shape[0]),
        positions=int(state_dict[f"{prefix}positional_embedding"].shape[0]),
        # SD2 conditions on the penultimate layer, so the last one is never run: do not build it.
        layers=layers - 1 if drop_last_layer else layers,
        intermediate=int(state_dict[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
    )
    config["hidden_act"] = "gelu"
    proj = state_dict.get(f"{prefix}text_projection")
    config["projection_dim"] = int(proj.shape[1]) if proj is not None else config["hidden_size"]
    return config
