"""diffusers configs for ControlNetModel and T2IAdapter, read off the shapes of diffusers-layout weights.

Shapes decide every size (widths, depths, levels, which levels attend, the hint encoder, the adapter type), so
any file loads without a config, tiny test models included. Attention head counts cannot be read from weights:
they follow the UNet rule of modules/models/configs_from_weights.py (SD1: 8 heads; SD2/SDXL: 64 channels a head),
so a ControlNet gets the heads of the UNet it was copied from. A diffusers folder's config.json may set the
few fields shapes cannot tell (heads, global pooling, ...); its sizes are never believed over the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modules.controlnet.classify import ADAPTER_DOWNSCALE, count_indices
from modules.models.configs_from_weights import SDXL_TIME_EMBED_DIM

DEFAULT_CONTEXT = {"sd1": 768, "sd2": 1024, "sdxl": 2048}
MAX_LEVELS = 8  # real models have 3 or 4 levels

# Fields a config.json may set, each with its check; everything about sizes comes from the weights.
_OVERRIDABLE = {
    "attention_head_dim": "heads",
    "num_attention_heads": "heads",
    "global_pool_conditions": bool,
    "upcast_attention": bool,
    "flip_sin_to_cos": bool,
    "freq_shift": int,
    "controlnet_conditioning_channel_order": ("rgb", "bgr"),
    "addition_time_embed_dim": int,
    "norm_eps": float,
}


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"weight {key!r} is missing")
    return tuple(int(d) for d in sd[key].shape)


def _heads(family: str | None, channels: list[int]) -> int | list[int]:
    if family in (None, "sd1"):
        return 8
    return [max(1, c // 64) for c in channels]


def controlnet_config(sd: Mapping[str, Any], family: str | None) -> dict[str, Any]:
    """ControlNetModel config of a diffusers-layout state dict."""
    keys = list(sd)
    levels = count_indices(keys, r"down_blocks\.(\d+)\.")
    if not 0 < levels <= MAX_LEVELS:
        raise ValueError(f"has {levels} down blocks; a ControlNet has 1 to {MAX_LEVELS}")
    channels = [_shape(sd, f"down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(levels)]
    depth = [count_indices(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") if attention[i]
             else 1 for i in range(levels)]
    mid_attention = any(k.startswith("mid_block.attentions.") for k in keys)
    if mid_attention and not attention[-1]:
        # the mid block takes the last level's depth; a level without attention ignores its own
        depth[-1] = count_indices(keys, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    to_k = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in keys if k.endswith(".proj_in.weight")), None)
    hint = _shape(sd, "controlnet_cond_embedding.conv_in.weight")
    hint_blocks = count_indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    if hint_blocks % 2:
        raise ValueError(f"the hint encoder has {hint_blocks} inner convolutions; it needs pairs")
    hint_channels = [hint[0]] + [_shape(sd, f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight")[0]
                                 for i in range(hint_blocks // 2)]
    config: dict[str, Any] = {
        "in_channels": _shape(sd, "conv_in.weight")[1],
        "conditioning_channels": hint[1],
        "conditioning_embedding_out_channels": hint_channels,
        "block_out_channels": channels,
        "layers_per_block": count_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_attention else "UNetMidBlock2D",
        "transformer_layers_per_block": depth,
        "cross_attention_dim": _shape(sd, to_k)[1] if to_k else DEFAULT_CONTEXT.get(family or "sd1", 768),
        "use_linear_projection": bool(proj_in) and len(_shape(sd, proj_in)) == 2,
        "attention_head_dim": _heads(family, channels),
    }
    if "add_embedding.linear_1.weight" in sd:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                      projection_class_embeddings_input_dim=_shape(sd, "add_embedding.linear_1.weight")[1])
    return config


def _valid_override(name: str, value: Any, levels: int) -> bool:
    rule = _OVERRIDABLE[name]
    if rule == "heads":
        values = value if isinstance(value, list) else [value]
        return (isinstance(value, int) or len(values) == levels) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1024 for v in values)
    if isinstance(rule, tuple):
        return value in rule
    if rule is int:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 8192
    if rule is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    return isinstance(value, rule)


def apply_overrides(config: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with the fields of a config.json that shapes cannot tell, each checked; the rest is ignored."""
    levels = len(config.get("block_out_channels", ()))
    out = dict(config)
    for name in _OVERRIDABLE:
        if name in given and given[name] is not None and _valid_override(name, given[name], levels):
            out[name] = given[name]
    return out


def adapter_config(sd: Mapping[str, Any]) -> dict[str, Any]:
    """T2IAdapter config of a diffusers-layout (`adapter.*`) state dict."""
    keys = list(sd)
    blocks = count_indices(keys, r"adapter\.body\.(\d+)\.")
    if not 0 < blocks <= MAX_LEVELS + 1:
        raise ValueError(f"has {blocks} adapter blocks; a T2I-Adapter has 1 to {MAX_LEVELS + 1}")
    res_blocks = count_indices(keys, r"adapter\.body\.0\.resnets\.(\d+)\.")
    if "adapter.conv_in.weight" in sd:
        unshuffled = _shape(sd, "adapter.conv_in.weight")[1]
        family = next((f for f, factor in ADAPTER_DOWNSCALE.items()
                       if unshuffled in (factor * factor, 3 * factor * factor)), None)
        if family is None:
            raise ValueError(f"its first convolution takes {unshuffled} channels, which fits no pixel-unshuffled "
                             "1- or 3-channel image")
        factor = ADAPTER_DOWNSCALE[family]
        return {
            "in_channels": unshuffled // (factor * factor),
            "channels": [_shape(sd, f"adapter.body.{i}.resnets.0.block1.weight")[0] for i in range(blocks)],
            "num_res_blocks": res_blocks,
            "downscale_factor": factor,
            "adapter_type": "full_adapter_xl" if family == "sdxl" else "full_adapter",
        }
    # light adapter: one block per level plus a last one that keeps the width
    unshuffled = _shape(sd, "adapter.body.0.in_conv.weight")[1]
    factor = ADAPTER_DOWNSCALE["sd1"]
    if unshuffled not in (factor * factor, 3 * factor * factor) or blocks < 2:
        raise ValueError(f"is a light adapter whose first block takes {unshuffled} channels over {blocks} blocks")
    return {
        "in_channels": unshuffled // (factor * factor),
        "channels": [_shape(sd, f"adapter.body.{i}.out_conv.weight")[0] for i in range(blocks - 1)],
        "num_res_blocks": res_blocks,
        "downscale_factor": factor,
        "adapter_type": "light_adapter",
    }


