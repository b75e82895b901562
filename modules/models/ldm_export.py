"""Write diffusers components as an original ("LDM") single-file Stable Diffusion checkpoint.

This is the inverse of the single-file loader: it produces the key layout people download
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.N.*``).
Tests use it to write tiny random-weight checkpoints in the real on-disk format; it also serves a future
"save as single file" feature. Every diffusers key must map somewhere: an unknown key raises instead of being
silently dropped, so a checkpoint written here never loses weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# diffusers ResnetBlock2D (UNet) -> ldm ResBlock sub-module names.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL text_time embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",  # nn.Embedding class labels (x4 upscaler)
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers VAE attention (mid block) -> ldm AttnBlock names.
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}  # norm1/conv1/norm2/conv2 keep their names
_VAE_TOP = {"conv_norm_out": "norm_out"}  # conv_in, conv_out, quant_conv, post_quant_conv keep theirs


def _split_module(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, param = key.rpartition(".")
    return module, param


def _rename_head(rest: str, names: Mapping[str, str]) -> str:
    """Rename the leading sub-module of ``rest`` (e.g. 'norm1.weight') using ``names``; keep it if unknown."""
    for old in sorted(names, key=len, reverse=True):  # longest first: 'to_out.0' before 'to_out'
        if rest.startswith(old + "."):
            return names[old] + rest[len(old) :]
    return rest


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _unet_block_map(keys: list[str]) -> dict[str, str]:
    """diffusers block prefix -> ldm block prefix, derived from which sub-modules the state dict has."""
    prefixes: dict[str, str] = {}
    ldm_index = 1  # input_blocks.0 is conv_in
    for block in _indices(keys, r"down_blocks\.(\d+)\."):
        base = f"down_blocks.{block}."
        for layer in _indices(keys, rf"{re.escape(base)}resnets\.(\d+)\."):
            prefixes[f"{base}resnets.{layer}."] = f"input_blocks.{ldm_index}.0."
            prefixes[f"{base}attentions.{layer}."] = f"input_blocks.{ldm_index}.1."
            ldm_index += 1
        if any(k.startswith(f"{base}downsamplers.0.") for k in keys):
            prefixes[f"{base}downsamplers.0.conv."] = f"input_blocks.{ldm_index}.0.op."
            ldm_index += 1

    # ldm's middle block is a flat sequence: ResBlock, SpatialTransformer, ResBlock.
    prefixes["mid_block.resnets.0."] = "middle_block.0."
    prefixes["mid_block.attentions.0."] = "middle_block.1."
    prefixes["mid_block.resnets.1."] = "middle_block.2."

    ldm_index = 0
    for block in _indices(keys, r"up_blocks\.(\d+)\."):
        base = f"up_blocks.{block}."
        layers = _indices(keys, rf"{re.escape(base)}resnets\.(\d+)\.")
        has_attention = any(k.startswith(f"{base}attentions.") for k in keys)
        for layer in layers:
            prefixes[f"{base}resnets.{layer}."] = f"output_blocks.{ldm_index}.0."
            prefixes[f"{base}attentions.{layer}."] = f"output_blocks.{ldm_index}.1."
            if layer == layers[-1]:
                # The upsampler rides in the level's last output block, after the attention if there is one.
                slot = 2 if has_attention else 1
                prefixes[f"{base}upsamplers.0.conv."] = f"output_blocks.{ldm_index}.{slot}.conv."
            ldm_index += 1
    return prefixes


def _check_config(keys: list[str], config: Mapping[str, Any]) -> None:
    """Catch a state dict / config mismatch early; the layout itself is read from the keys."""
    for side, name in (("down", "down_block_types"), ("up", "up_block_types")):
        expected = config.get(name)
        found = len(_indices(keys, rf"{side}_blocks\.(\d+)\."))
        if expected is not None and found != len(expected):
            raise ValueError(f"UNet state dict has {found} {side} blocks but config {name} lists {len(expected)}")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """UNet2DConditionModel state dict -> ``model.diffusion_model.*`` keys of an original checkpoint."""
    keys = list(state_dict)
    _check_config(keys, config)
    blocks = _unet_block_map(keys)
    ordered = sorted(blocks, key=len, reverse=True)
    out: StateDict = {}
    for key, tensor in state_dict.items():
        module, param = _split_module(key)
        top = _UNET_TOP.get(module)
        if top is not None:
            out[f"{UNET_PREFIX}{top}.{param}"] = tensor
            continue
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"no original-checkpoint name for UNet key {key!r}")
        rest = key[len(prefix) :]
        if ".resnets." in prefix:
            rest = _rename_head(rest, _UNET_RESNET)
        # Attention (SpatialTransformer) and sampler convs keep diffusers' inner names.
        out[UNET_PREFIX + blocks[prefix] + rest] = tensor
    return out


def _vae_key(key: str, num_up: int) -> str:
    top = _VAE_TOP.get(_split_module(key)[0].partition(".")[2])
    if top is not None:
        side = key.partition(".")[0]
        return f"{side}.{top}.{_split_module(key)[1]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename_head(m[3], _VAE_RESNET)}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        # ldm numbers decoder levels from the lowest resolution's opposite end: diffusers up_blocks[i] = up[n-1-i].
        return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{_rename_head(m[3], _VAE_RESNET)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_head(m[3], _VAE_RESNET)}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename_head(m[2], _VAE_ATTN)}"
    if re.match(r"(encoder\.conv_(in|out)|decoder\.conv_(in|out)|quant_conv|post_quant_conv)\.", key):
        return key
    raise ValueError(f"no original-checkpoint name for VAE key {key!r}")


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """AutoencoderKL state dict -> ``first_stage_model.*`` keys of an original checkpoint."""
    num_up = len(_indices(state_dict, r"decoder\.up_blocks\.(\d+)\."))
    out: StateDict = {}
    for key, tensor in state_dict.items():
        new = _vae_key(key, num_up)
        if ".mid.attn_1." in new and new.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # ldm's attention projections are 1x1 convolutions
        out[VAE_PREFIX + new] = tensor
    return out


def _text_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys relative to the text transformer; transformers 5 dropped CLIPTextModel's ``text_model.`` level."""
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def clip_l_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """transformers CLIPTextModel -> ``<prefix>transformer.text_model.*`` (SD1's and SDXL's first encoder)."""
    out: StateDict = {}
    for key, tensor in _text_model_keys(state_dict).items():
        if key.startswith("text_projection."):
            raise ValueError("clip_l_to_ldm expects a CLIPTextModel without projection; use open_clip_to_ldm")
        out[f"{prefix}transformer.text_model.{key}"] = tensor
    return out


_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def open_clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """CLIPTextModel(WithProjection) holding OpenCLIP weights -> ``<prefix>model.*`` (OpenCLIP's own names).

    OpenCLIP keeps q/k/v as one ``in_proj`` matrix and stores ``text_projection`` as [hidden, proj] (it computes
    ``x @ text_projection``). A model without projection (SD2's encoder) gets an identity projection.
    """
    sd = _text_model_keys(state_dict)
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        if key in _OPEN_CLIP_TOP:
            out[prefix + "model." + _OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "model.text_projection"] = tensor.t()
        elif key == "embeddings.position_ids":
            continue  # a transformers buffer (older versions); OpenCLIP has no such tensor
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = tensor
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)$", key):
            rest = _rename_head(m[2], _OPEN_CLIP_LAYER)
            if rest == m[2]:
                raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
            out[f"{prefix}model.transformer.resblocks.{m[1]}.{rest}"] = tensor
        else:
            raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
    for (layer, param), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer} lacks one of q/k/v {param}")
        out[f"{prefix}model.transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    if prefix + "model.text_projection" not in out:
        embed = sd["embeddings.token_embedding.weight"]
        out[prefix + "model.text_projection"] = torch.eye(embed.shape[1], dtype=embed.dtype)
    return out


def ddpm_schedule_buffers(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> StateDict:
    """The noise-schedule buffers SD1/SD2 checkpoints carry (ldm's 'linear' = diffusers' scaled_linear)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return {
        "betas": betas.float(),
        "alphas_cumprod": alphas_cumprod.float(),
        "alphas_cumprod_prev": alphas_cumprod_prev.float(),
    }


def _state_dict(obj: Any) -> Mapping[str, torch.Tensor]:
    return obj.state_dict() if isinstance(obj, torch.nn.Module) else obj


def checkpoint_state_dict(
    family: str,
    unet: torch.nn.Module,
    vae: Any,
    text_encoders: list[Any],
    *,
    dtype: torch.dtype | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> StateDict:
    """The full single-file state dict for ``family`` (see ``write_checkpoint``), ready to save."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    expected = 2 if family == "sdxl" else 1
    if len(text_encoders) != expected:
        raise ValueError(f"{family} takes {expected} text encoder(s), got {len(text_encoders)}")
    te = [_state_dict(t) for t in text_encoders]

    sd: StateDict = {}
    sd.update(unet_to_ldm(_state_dict(unet), unet.config))
    sd.update(vae_to_ldm(_state_dict(vae)))
    if family == "sd1":
        sd.update(clip_l_to_ldm(te[0], "cond_stage_model."))
    elif family == "sd2":
        sd.update(open_clip_to_ldm(te[0], "cond_stage_model."))
    elif family == "sdxl":
        sd.update(clip_l_to_ldm(te[0], "conditioner.embedders.0."))
        sd.update(open_clip_to_ldm(te[1], "conditioner.embedders.1."))
    else:
        sd.update(open_clip_to_ldm(te[0], "conditioner.embedders.0."))
    if family in ("sd1", "sd2"):
        sd.update(ddpm_schedule_buffers())
    if extra:
        sd.update(extra)
    return _prepare_for_save(sd, dtype)


def _prepare_for_save(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> StateDict:
    """Detached, contiguous CPU tensors that own their memory: safetensors refuses shared or strided storage."""
    out: StateDict = {}
    seen: set[int] = set()
    for key, tensor in sd.items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def write_checkpoint(
    path: str | Path,
    family: str,
    unet: torch.nn.Module,
    vae: Any,
    text_encoders: list[Any],
    *,
    dtype: torch.dtype | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save diffusers components as one original-layout checkpoint.

    ``family``: "sd1" (text_encoders=[CLIP-L]), "sd2" ([OpenCLIP]), "sdxl" ([CLIP-L, OpenCLIP-G with
    projection]) or "sdxl_refiner" ([OpenCLIP-G with projection]). ``unet`` is a UNet2DConditionModel (its
    config is needed); ``vae`` and the encoders may be modules or state dicts. A path ending in ``.ckpt`` is
    written as a pickled ``{"state_dict": ...}`` like the original releases, anything else as safetensors.
    """
    path = Path(path)
    sd = checkpoint_state_dict(family, unet, vae, text_encoders, dtype=dtype, extra=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".ckpt":
        torch.save({"state_dict": sd}, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    return path
