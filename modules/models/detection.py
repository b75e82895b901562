"""Which kind of Stable Diffusion model a single-file checkpoint holds, decided from its weights alone.

Families: SD1.x, SD2.x, SDXL base and SDXL refiner, told apart by their text encoders' key layout. Variants come
from the UNet's input channels: 4 normal, 9 inpainting, 5 depth, 8 instruct-pix2pix. SD2 v-prediction is found
as A1111 finds it, by probing the UNet (see `probe_v_prediction`), unless a marker key or a sidecar says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."
REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
VARIANT_BY_IN_CHANNELS = {4: "normal", 9: "inpaint", 5: "depth", 8: "instruct-pix2pix"}
VARIANT_NAMES = {"normal": "", "inpaint": "inpainting", "depth": "depth", "instruct-pix2pix": "instruct-pix2pix"}


class NotStableDiffusionError(ValueError):
    """The weights are readable but are not a Stable Diffusion checkpoint we know."""


@dataclass
class ModelSpec:
    """What a checkpoint is; enough to build its diffusers components."""

    family: str  # sd1 | sd2 | sdxl | sdxl_refiner
    variant: str = "normal"  # normal | inpaint | depth | instruct-pix2pix
    prediction_type: str | None = None  # epsilon | v_prediction; None = not decided yet (SD2 probe pending)
    prediction_source: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)  # component config overrides from a sidecar

    @property
    def display_name(self) -> str:
        parts = [FAMILY_NAMES[self.family]]
        if VARIANT_NAMES[self.variant]:
            parts.append(VARIANT_NAMES[self.variant])
        if self.prediction_type == "v_prediction":
            parts.append("v-prediction")
        return " ".join(parts)

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl_refiner")


def _has_prefix(keys: set[str] | list[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def describe_foreign_weights(keys: list[str]) -> str:
    """A hint at what a non-checkpoint file is, for the error message."""
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        return "it looks like a LoRA; put it in models/Lora"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys) and not _has_prefix(keys, UNET_PREFIX):
        return "it looks like a VAE; put it in models/VAE"
    if _has_prefix(keys, "control_model.") or _has_prefix(keys, "controlnet_"):
        return "it looks like a ControlNet model; put it in models/ControlNet"
    if any(k.startswith(("string_to_param", "emb_params")) for k in keys):
        return "it looks like a textual-inversion embedding; put it in embeddings/"
    if _has_prefix(keys, "down_blocks.") or _has_prefix(keys, "unet."):
        return "it looks like diffusers-format weights, which belong in a diffusers folder with model_index.json"
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        return "it looks like a Flux model, which is not supported"
    return "no Stable Diffusion UNet weights (model.diffusion_model.*) were found"


def detect_family(state_dict: dict[str, torch.Tensor]) -> ModelSpec:
    keys = list(state_dict.keys())
    key_set = set(keys)
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in key_set:
        raise NotStableDiffusionError(f"not a Stable Diffusion checkpoint: {describe_foreign_weights(keys)}")

    if _has_prefix(keys, SDXL_TEXT2_PREFIX) and _has_prefix(keys, SDXL_TEXT1_PREFIX):
        family = "sdxl"
    elif _has_prefix(keys, REFINER_TEXT_PREFIX):
        family = "sdxl_refiner"
    elif _has_prefix(keys, SD2_TEXT_PREFIX):
        family = "sd2"
    elif _has_prefix(keys, SD1_TEXT_PREFIX):
        family = "sd1"
    elif f"{UNET_PREFIX}label_emb.0.0.weight" in key_set:
        raise NotStableDiffusionError("SDXL-style UNet without its text encoders (conditioner.embedders.*)")
    else:
        raise NotStableDiffusionError("UNet found but no text encoder weights (cond_stage_model.* / conditioner.*)")

    if not _has_prefix(keys, VAE_PREFIX):
        raise NotStableDiffusionError(f"{FAMILY_NAMES[family]} checkpoint without VAE weights (first_stage_model.*)")

    in_channels = int(state_dict[f"{UNET_PREFIX}input_blocks.0.0.weight"].shape[1])
    variant = VARIANT_BY_IN_CHANNELS.get(in_channels)
    if variant is None:
        raise NotStableDiffusionError(f"UNet takes {in_channels} input channels, which no known variant uses")

    spec = ModelSpec(family=family, variant=variant)
    # Marker keys some trainers write (A1111 dev and ComfyUI read them too).
    if "v_pred" in key_set:
        spec.prediction_type, spec.prediction_source = "v_prediction", "v_pred key in the checkpoint"
    elif family != "sd2":
        spec.prediction_type, spec.prediction_source = "epsilon", "family default"
    return spec


@torch.no_grad()
def probe_v_prediction(unet: torch.nn.Module, context_dim: int) -> bool:
    """A1111's test: at the last timestep a v-model's output is far below its input; an eps-model's is not.

    With x = 0.5 everywhere at t = 999 an epsilon model predicts noise close to x, while a v model predicts
    roughly -x0, so mean(output - x) < -1 marks v-prediction.
    """
    param = next(unet.parameters())
    in_channels = unet.config.in_channels
    x = torch.full((1, in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 2, context_dim), 0.5, device=param.device, dtype=param.dtype)
    t = torch.tensor([999], device=param.device)
    out = unet(x, t, encoder_hidden_states=context).sample.float()
    return (out - x[:, :4].float()).mean().item() < -1
