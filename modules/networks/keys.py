"""Which layer of the loaded model a key in a LoRA file names.

The model is diffusers' UNet and transformers' CLIP text encoders, but files name layers in several dialects:
- kohya (`lora_unet_*`, `lora_te_*`, SDXL `lora_te1_*` / `lora_te2_*`): the module path with "." -> "_", where
  the UNet path is diffusers' for SD1/SD2 files and the original (ldm/sgm) one for SDXL files; both are listed;
- diffusers / PEFT (`unet.<path>`, `text_encoder.<path>`, `text_encoder_2.<path>`), with or without PEFT's
  `base_model.model.` prefix; the older `<path>.processor.to_q_lora` form is renamed to `<path>.to_q`;
- LyCORIS/kohya names for the original layout (`lora_unet_input_blocks_4_1_...`).
Every name maps to (component, module path) on our model; the table is built once per loaded model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from modules.models.ldm_export import UNET_PREFIX, unet_to_ldm

_TARGET_TYPES = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass(frozen=True)
class Target:
    component: str  # "unet", "te0", "te1"
    module_name: str  # path inside that component (diffusers / transformers names)

    @property
    def is_text_encoder(self) -> bool:
        return self.component != "unet"


def _targets(module: torch.nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, _TARGET_TYPES)]


def _ldm_unet_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers module path -> original (ldm/sgm) module path, for every weight of the UNet."""
    keys = list(unet.state_dict())
    numbered = {key: i for i, key in enumerate(keys)}
    try:
        ldm = unet_to_ldm(numbered, unet.config)
    except (ValueError, KeyError, AttributeError):
        return {}
    by_number = {number: name[len(UNET_PREFIX):] for name, number in ldm.items()}
    out = {}
    for key, number in numbered.items():
        if key.endswith(".weight"):
            out[key[: -len(".weight")]] = by_number[number][: -len(".weight")]
    return out


def _text_prefixes(family: str, index: int) -> tuple[str, ...]:
    if family in ("sdxl", "sdxl_refiner"):
        if family == "sdxl_refiner":  # the refiner has only OpenCLIP-G, which files call te2 / text_encoder_2
            return ("lora_te2_", "text_encoder_2.")
        return ("lora_te1_", "text_encoder.") if index == 0 else ("lora_te2_", "text_encoder_2.")
    return ("lora_te_", "text_encoder.")


def build_key_map(model) -> dict[str, Target]:
    """Every layer name a file may use -> the target on `model` (a StableDiffusionModel)."""
    table: dict[str, Target] = {}
    ldm_names = _ldm_unet_names(model.unet)
    for name in _targets(model.unet):
        target = Target("unet", name)
        for spelled in (name, ldm_names.get(name)):
            if spelled:
                table["lora_unet_" + spelled.replace(".", "_")] = target
                table["unet." + spelled] = target
        table["diffusion_model." + ldm_names.get(name, name)] = target
    for index, encoder in enumerate(model.text_encoders):
        underscore, dotted = _text_prefixes(model.spec.family, index)
        for name in _targets(encoder):
            target = Target(f"te{index}", name)
            bare = name.removeprefix("text_model.")
            # Files say "text_model.encoder..." (transformers 4); transformers 5 dropped that level; some
            # trainers never wrote it. Every spelling maps to the same layer.
            for spelled in (bare, "text_model." + bare):
                table[underscore + spelled.replace(".", "_")] = target
                table[dotted + spelled] = target
    return table


_PEFT_PREFIX = "base_model.model."
_OLD_DIFFUSERS = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def normalise_key(key: str) -> str:
    """A file key in one spelling: PEFT's wrapper prefix gone, old diffusers attention-processor names renamed."""
    if key.startswith(_PEFT_PREFIX):
        key = "unet." + key[len(_PEFT_PREFIX):]
    match = _OLD_DIFFUSERS.search(key)
    if match:
        layer = match.group(1) + (".0" if match.group(1) == "to_out" else "")
        key = f"{key[:match.start()]}.{layer}.lora.{match.group(2)}.weight"
    return key


def group_by_layer(keys: list[str], suffixes: frozenset[str], table: dict[str, Target]
                   ) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Split file keys into {layer name: {suffix: original key}} for layers the model has, and the keys left
    over. The longest known suffix that leaves a known layer name wins (".weight" alone is IA3's)."""
    ordered = sorted(suffixes, key=len, reverse=True)
    layers: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    for key in keys:
        spelled = normalise_key(key)
        for suffix in ordered:
            if spelled.endswith("." + suffix) and spelled[: -len(suffix) - 1] in table:
                layers.setdefault(spelled[: -len(suffix) - 1], {})[suffix] = key
                break
        else:
            unmatched.append(key)
    return layers, unmatched
