"""Original key layouts -> diffusers key names.

ControlNet: lllyasviel's cldm layout (`control_model.` prefix optional): `input_blocks`, `middle_block` and
`time_embed` as in the SD UNet, plus `input_hint_block` (the hint encoder), `zero_convs.N.0` (one per input
block) and `middle_block_out.0`; SDXL files add `label_emb`. The renames come from diffusers' own single-file
helper (which shares the UNet's resnet/attention renames with `convert_ldm_unet_checkpoint`, as
modules/models/convert.py uses); the SDXL added embedding, which that helper skips, is mapped here.

T2I-Adapter: TencentARC's layout. The full adapter keeps its residual blocks in one flat list
(`body.K.block1`, K = level x blocks-per-level + j, `body.K.in_conv` where the width changes); the light adapter
nests them (`body.I.in_conv`, `body.I.body.J.block1`, `body.I.out_conv`).

Every weight must land somewhere: a weight the conversion would drop raises instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

from modules.controlnet.classify import count_indices, strip_original_prefix

StateDict = dict[str, torch.Tensor]


def _check_all_used(source: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor], what: str) -> None:
    used = {id(v) for v in converted.values()}
    left = sorted(k for k, v in source.items() if id(v) not in used)
    if left:
        shown = ", ".join(repr(k[:80]) for k in left[:4])
        raise ValueError(f"{len(left)} weights have no place in a {what} ({shown}{', ...' if len(left) > 4 else ''})")


def controlnet_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A ControlNet in the original layout -> ControlNetModel keys."""
    own = strip_original_prefix(state_dict)
    blocks = count_indices(own, r"input_blocks\.(\d+)\.")
    first_downsampler = next((i for i in range(1, blocks) if f"input_blocks.{i}.0.op.weight" in own), blocks)
    layers_per_block = first_downsampler - 1
    if layers_per_block < 1:
        raise ValueError("its input blocks do not follow the Stable Diffusion UNet layout")
    converted = convert_controlnet_checkpoint(own, {"layers_per_block": layers_per_block})
    for new, old in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
        if old in own:  # SDXL (sgm) files
            converted[new] = own[old]
    converted = {k: v for k, v in converted.items() if v is not None}
    _check_all_used(own, converted, "ControlNet")
    return converted


def _blocks_per_level(count: int, level_starts: set[int]) -> int:
    """Residual blocks per level of a full adapter's flat list: the largest count that divides the list and
    puts every width change at a level start, preferring two levels or more (TencentARC's adapters: 4 x 2)."""
    fits = [r for r in range(count, 0, -1) if count % r == 0 and all(s % r == 0 for s in level_starts)]
    several = [r for r in fits if count // r >= 2]
    return (several or fits)[0]


def _full_adapter(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    count = count_indices(state_dict, r"body\.(\d+)\.")
    if count == 0:
        raise ValueError("the adapter has no residual blocks")
    widths = [int(state_dict[f"body.{k}.block1.weight"].shape[0]) if f"body.{k}.block1.weight" in state_dict
              else -1 for k in range(count)]
    starts = {k for k in range(1, count) if widths[k] != widths[k - 1]}
    starts |= {k for k in range(count) if f"body.{k}.in_conv.weight" in state_dict}
    per_level = _blocks_per_level(count, starts)
    out: StateDict = {}
    pattern = re.compile(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$")
    for key, value in state_dict.items():
        if key.startswith("conv_in."):
            out["adapter." + key] = value
            continue
        m = pattern.match(key)
        if m is None:
            continue
        level, j = divmod(int(m.group(1)), per_level)
        part, param = m.group(2), m.group(3)
        if part == "in_conv":
            out[f"adapter.body.{level}.in_conv.{param}"] = value
        else:
            out[f"adapter.body.{level}.resnets.{j}.{part}.{param}"] = value
    return out


def _light_adapter(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    pattern = re.compile(r"body\.(\d+)\.(?:(in_conv|out_conv)|body\.(\d+)\.(block1|block2))\.(weight|bias)$")
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m is None:
            continue
        block, param = m.group(1), m.group(5)
        if m.group(2):
            out[f"adapter.body.{block}.{m.group(2)}.{param}"] = value
        else:
            out[f"adapter.body.{block}.resnets.{m.group(3)}.{m.group(4)}.{param}"] = value
    return out


def adapter_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A TencentARC T2I-Adapter (full, full XL or light) -> T2IAdapter keys."""
    odd = next((k for k in state_dict if ".skep." in k or ".down_opt." in k), None)
    if odd is not None:
        raise ValueError(f"this T2I-Adapter variant (skip or strided convolutions, {odd!r}) has no diffusers class")
    converted = _full_adapter(state_dict) if "conv_in.weight" in state_dict else _light_adapter(state_dict)
    _check_all_used(state_dict, converted, "T2I-Adapter")
    return converted
