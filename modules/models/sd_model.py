"""The loaded model: diffusers components plus what the engine and extensions need to know about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from modules.models.detection import ModelSpec


@dataclass
class StableDiffusionModel:
    spec: ModelSpec
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    alphas_cumprod: torch.Tensor
    checkpoint_info: Any = None  # registry.CheckpointInfo
    vae_file: str | None = None  # external VAE in use; None = the checkpoint's own
    baked_vae_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # to undo an external VAE
    attention: str = "sdpa"
    patcher: Any = field(default=None, repr=False)  # models.patcher.ModelPatcher, made on first use
    fp8_storage: bool = False  # the UNet's weights are stored in 8 bits (models.fp8_storage)
    fp8_keeps_16_bit: bool = False  # ... with their 16-bit values kept in RAM for LoRA ("Cache FP16 weight for LoRA")
    offload: Any = field(default=None, repr=False)  # models.offload.OffloadState under --medvram/--lowvram

    # --- A1111 attribute names that extensions read -------------------------------------------------------------
    @property
    def sd_checkpoint_info(self):
        return self.checkpoint_info

    @property
    def sd_model_checkpoint(self) -> str | None:
        return getattr(self.checkpoint_info, "filename", None)

    @property
    def sd_model_hash(self) -> str | None:
        return getattr(self.checkpoint_info, "shorthash", None) or getattr(self.checkpoint_info, "hash", None)

    @property
    def is_sdxl(self) -> bool:
        return self.spec.is_sdxl

    @property
    def is_sdxl_refiner(self) -> bool:
        return self.spec.family == "sdxl_refiner"

    @property
    def is_sd2(self) -> bool:
        return self.spec.family == "sd2"

    @property
    def is_sd1(self) -> bool:
        return self.spec.family == "sd1"

    @property
    def parameterization(self) -> str:
        return "v" if self.spec.prediction_type == "v_prediction" else "eps"

    @property
    def is_inpainting(self) -> bool:
        return self.spec.variant == "inpaint"

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 8 for every released model (tiny test models use less)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        if self.offload is not None:  # offloaded weights wait in RAM; the work still runs on the device
            return self.offload.device
        return next(self.unet.parameters()).device

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders]

    def to(self, device: torch.device | str) -> StableDiffusionModel:
        from modules.devices import move_modules

        move_modules(self.modules(), torch.device(device))
        return self

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.modules() for p in m.parameters())
