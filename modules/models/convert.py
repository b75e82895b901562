"""Original (ldm/sgm) key layout -> diffusers/transformers key layout.

The UNet, VAE and OpenAI-CLIP renames come from diffusers' own single-file helpers. OpenCLIP text encoders are
converted here because diffusers' helper hard-codes the layer count of the full-size SD2 encoder.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from modules.models.detection import UNET_PREFIX

_OPEN_CLIP_LAYER_RENAMES = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
]


def unet_to_diffusers(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    unet_only = {k: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    return convert_ldm_unet_checkpoint(unet_only, config)


def vae_to_diffusers(state_dict: dict[str, torch.Tensor], prefix: str, config: dict) -> dict[str, torch.Tensor]:
    """`prefix` is "first_stage_model." inside a checkpoint, "" for a standalone VAE file."""
    vae_only = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return convert_ldm_vae_checkpoint(vae_only, config)


def clip_l_to_diffusers(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`<prefix>text_model.*` -> CLIPTextModel keys (transformers 5 has no `text_model.` level)."""
    t = f"{prefix}text_model."
    out = {k[len(t):]: v for k, v in state_dict.items() if k.startswith(t)}
    out.pop("embeddings.position_ids", None)  # a buffer in old exports; transformers rebuilds it
    return out


def normalise_legacy_clip_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    """Very old SD1 exports lack the `text_model.` level under `cond_stage_model.transformer.`."""
    legacy = [k for k in state_dict if k.startswith(prefix) and not k.startswith(f"{prefix}text_model.")]
    for key in legacy:
        state_dict[f"{prefix}text_model.{key[len(prefix):]}"] = state_dict.pop(key)


def open_clip_to_diffusers(
    state_dict: dict[str, torch.Tensor], prefix: str, num_layers: int, with_projection: bool
) -> dict[str, torch.Tensor]:
    """OpenCLIP `<prefix>*` -> CLIPTextModel(WithProjection) keys, keeping the first `num_layers` blocks."""
    base = "text_model." if with_projection else ""
    out: dict[str, torch.Tensor] = {
        f"{base}embeddings.token_embedding.weight": state_dict[f"{prefix}token_embedding.weight"],
        f"{base}embeddings.position_embedding.weight": state_dict[f"{prefix}positional_embedding"],
        f"{base}final_layer_norm.weight": state_dict[f"{prefix}ln_final.weight"],
        f"{base}final_layer_norm.bias": state_dict[f"{prefix}ln_final.bias"],
    }
    if with_projection:
        # OpenCLIP multiplies x @ P; a Linear layer computes x @ W.T, so W = P.T.
        out["text_projection.weight"] = state_dict[f"{prefix}text_projection"].T.contiguous()
    block = re.compile(re.escape(f"{prefix}transformer.resblocks.") + r"(\d+)\.(.+)")
    for key, value in state_dict.items():
        m = block.match(key)
        if not m or int(m.group(1)) >= num_layers:
            continue
        layer, rest = m.group(1), m.group(2)
        target = f"{base}encoder.layers.{layer}."
        if rest.startswith("attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{target}self_attn.{name}.{kind}"] = part.contiguous()
            continue
        for old, new in _OPEN_CLIP_LAYER_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[target + rest] = value
    return out
