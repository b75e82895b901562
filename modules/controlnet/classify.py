"""What a control-model file holds, told from its key names and tensor shapes alone (no tensor data is read).

Kinds: "controlnet", "t2i_adapter", "ip_adapter". Families: "sd1", "sd2", "sdxl", from the width of the
cross-attention context the weights expect (768 SD1, 1024 SD2, 2048 SDXL). Where a file has no such width, or an
unusual one (the tiny test models), the structure decides: an SDXL added embedding (`label_emb` /
`add_embedding`) means SDXL, a linear attention projection SD2, a 1x1-conv projection SD1.
Layouts: "original" (lllyasviel's `control_model.*` / TencentARC's `body.N.*`) or "diffusers".

Files we recognise but cannot build with diffusers' classes (Control-LoRA, ControlLLLite, ControlNet-Union,
the T2I style adapter) get kind None and a reason, so the listing can say why they are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONTEXT_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
ORIGINAL_PREFIX = "control_model."
# Pixel-unshuffle factor of T2I-Adapters: 8 for SD1 (full and light adapters), 16 for SDXL (full_adapter_xl).
ADAPTER_DOWNSCALE = {"sd1": 8, "sdxl": 16}


@dataclass(frozen=True)
class Classification:
    kind: str | None  # "controlnet" | "t2i_adapter" | "ip_adapter" | None (not usable)
    family: str | None  # "sd1" | "sd2" | "sdxl" | None (cannot be told)
    layout: str = ""  # "original" | "diffusers"
    reason: str = ""  # why kind is None


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(value, "shape", ()))


def _any_key(keys: Iterable[str], *parts: str) -> bool:
    return any(part in key for key in keys for part in parts)


def strip_original_prefix(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """The ControlNet's own weights of an original file: `control_model.*` without the prefix when present
    (ControlNet 1.0 releases also carry a whole SD checkpoint beside them), else the file as it is."""
    if any(k.startswith(ORIGINAL_PREFIX) for k in shapes):
        return {k[len(ORIGINAL_PREFIX):]: v for k, v in shapes.items() if k.startswith(ORIGINAL_PREFIX)}
    return dict(shapes)


def family_from_context(shapes: Mapping[str, Any], key_suffix: str) -> str | None:
    """The family whose text context width the first `*<key_suffix>` weight takes as input (its 2nd dim)."""
    for key, value in shapes.items():
        if key.endswith(key_suffix):
            shape = _shape(value)
            if len(shape) == 2:
                return CONTEXT_WIDTH_FAMILY.get(shape[1])
    return None


def _controlnet_family(shapes: Mapping[str, Any]) -> str | None:
    found = family_from_context(shapes, "attn2.to_k.weight")
    if found:
        return found
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in shapes):
        return "sdxl"
    proj_in = next((_shape(v) for k, v in shapes.items() if k.endswith(".proj_in.weight")), None)
    if proj_in is None:
        return None
    return "sd2" if len(proj_in) == 2 else "sd1"


def _adapter_family(conv_in_channels: int) -> str | None:
    """full/full_xl adapters: conv_in takes the pixel-unshuffled image, channels x factor² (1 or 3 channels)."""
    for family, factor in ADAPTER_DOWNSCALE.items():
        if conv_in_channels in (factor * factor, 3 * factor * factor):
            return family
    return None


def _classify_controlnet(shapes: Mapping[str, Any]) -> Classification | None:
    keys = list(shapes)
    if any(k == "lora_controlnet" for k in keys):
        return Classification(None, "sdxl", "original", "a Control-LoRA, which needs the base model's UNet weights "
                                                         "to be built; not supported")
    if any(k.startswith("lllite_") for k in keys):
        return Classification(None, None, "original", "a ControlLLLite model, which is not supported")
    if _any_key(keys, "task_embedding", "controlnet_mode_embedding", "spatial_ch_projs"):
        return Classification(None, None, "diffusers", "a ControlNet-Union model, which is not supported")
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return Classification("controlnet", _controlnet_family(shapes), "diffusers")
    own = strip_original_prefix(shapes)
    if "input_hint_block.0.weight" in own and any(k.startswith("zero_convs.") for k in own):
        return Classification("controlnet", _controlnet_family(own), "original")
    return None


def _classify_adapter(shapes: Mapping[str, Any]) -> Classification | None:
    keys = list(shapes)
    if any(k.startswith("style_embedding") for k in keys):
        return Classification(None, "sd1", "original", "a T2I style adapter (CLIP-vision tokens), not supported")
    for prefix, layout in (("adapter.", "diffusers"), ("", "original")):
        conv_in = shapes.get(f"{prefix}conv_in.weight")
        resnet = f"{prefix}body.0.resnets.0.block1.weight" if layout == "diffusers" else f"{prefix}body.0.block1.weight"
        if conv_in is not None and resnet in shapes:
            shape = _shape(conv_in)
            return Classification("t2i_adapter", _adapter_family(shape[1]) if len(shape) == 4 else None, layout)
        light = (f"{prefix}body.0.resnets.0.block1.weight" if layout == "diffusers"
                 else f"{prefix}body.0.body.0.block1.weight")
        if f"{prefix}body.0.in_conv.weight" in shapes and light in shapes:
            return Classification("t2i_adapter", "sd1", layout)  # the light adapter exists for SD1 only
    return None


def _classify_ip_adapter(shapes: Mapping[str, Any]) -> Classification | None:
    keys = list(shapes)
    if any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys):
        return Classification("ip_adapter", family_from_context(shapes, "to_k_ip.weight"), "original")
    return None


def classify(shapes: Mapping[str, Any]) -> Classification:
    """The kind, family and layout of a state dict given as {key: anything with a .shape}."""
    for rule in (_classify_controlnet, _classify_adapter, _classify_ip_adapter):
        found = rule(shapes)
        if found is not None:
            return found
    return Classification(None, None, "", f"not a ControlNet, T2I-Adapter or IP-Adapter ({_foreign_hint(shapes)})")


def _foreign_hint(shapes: Mapping[str, Any]) -> str:
    from modules.models.detection import describe_foreign_weights

    keys = list(shapes)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "it looks like a Stable Diffusion checkpoint; put it in models/Stable-diffusion"
    return describe_foreign_weights(keys)


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts of tensors (IP-Adapter's {"image_proj": {...}, "ip_adapter": {...}}) as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        elif hasattr(value, "shape"):
            out[prefix + key] = value
    return out


def count_indices(keys: Iterable[str], pattern: str) -> int:
    """1 + the largest N that `pattern` (with one group) captures in any key; 0 when none matches."""
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0
