"""A1111's "FP8 weight" setting (`fp8_storage`): the UNet's Linear and Conv2d weights stored as float8 (e4m3),
half the memory of float16, each layer casting its weight back to the input's dtype as it runs.

The weights keep their Parameters and storages (only the values become 8-bit), so the model patcher still writes
LoRA in place (patches are computed in float32 from the 8-bit originals, then rounded to 8 bits, as in A1111
without "Cache FP16 weight for LoRA") and CUDA graphs and compiled forwards see them. The input and output layers
and the embeddings stay in 16 bits: they are small, and the UNet's `dtype` (read from its first weight) must stay
the compute dtype. Going back to 16 bits needs the file's values, so turning the setting off reloads the
checkpoint (as A1111 does).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

CHOICES = ("Disable", "Enable for SDXL", "Enable")
STORAGE_DTYPE = torch.float8_e4m3fn
# kept in the compute dtype: the first and last layers and the time/class embeddings
KEEP_PREFIXES = ("conv_in", "conv_out", "time_embedding", "add_embedding", "class_embedding")


class Fp8Linear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)


class Fp8Conv2d(torch.nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight.to(x.dtype), self.bias)


_SWAPS = {torch.nn.Linear: Fp8Linear, torch.nn.Conv2d: Fp8Conv2d}


def setting() -> str:
    from modules import shared

    value = str(getattr(getattr(shared, "opts", None), "fp8_storage", "Disable") or "Disable")
    return value if value in CHOICES else "Disable"


def wanted(model: Any, choice: str | None = None) -> bool:
    choice = setting() if choice is None else choice
    return choice == "Enable" or (choice == "Enable for SDXL" and bool(getattr(model, "is_sdxl", False)))


def is_fp8(model: Any) -> bool:
    return bool(getattr(model, "fp8_storage", False))


def _layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in unet.named_modules()
            if type(m) in _SWAPS and not name.startswith(KEEP_PREFIXES)]


def cache_full_precision() -> bool:
    """A1111's "Cache FP16 weight for LoRA": keep the 16-bit values in RAM so LoRA merges start from them."""
    from modules import shared

    return bool(getattr(getattr(shared, "opts", None), "cache_fp16_weight", False))


def _ram_copy(weight: torch.Tensor) -> torch.Tensor:
    copy = weight.detach().to("cpu", copy=True)
    return copy.pin_memory() if weight.is_cuda else copy


def convert(model: Any) -> int:
    """Store the UNet's Linear/Conv2d weights in 8 bits; returns how many layers. Biases stay as they are. With
    `cache_fp16_weight` each weight's 16-bit values stay in RAM (`_sd_full_precision`), where the model patcher
    takes its originals from: a LoRA is then added to them and rounded once."""
    from modules.engine.unet_graph import bump_structure_version

    layers = _layers(model.unet)
    keep = cache_full_precision()
    with torch.no_grad():
        for layer in layers:
            if keep:
                layer.weight._sd_full_precision = _ram_copy(layer.weight.data)
            layer.weight.data = layer.weight.data.to(STORAGE_DTYPE)
            layer.__class__ = _SWAPS[type(layer)]
    model.fp8_storage = True
    model.fp8_keeps_16_bit = keep
    patcher = getattr(model, "patcher", None)
    if patcher is not None:
        patcher.storages_replaced()  # graphs recorded over the 16-bit storages are stale
    bump_structure_version(model.unet)  # the layers' forwards changed too
    return len(layers)


def settle(model: Any) -> bool:
    """Convert `model` if the setting wants 8-bit weights and it has 16-bit ones. Returns False when the model has
    8-bit weights the setting no longer wants (or was converted with the other "Cache FP16 weight for LoRA"
    choice): only a reload from the file brings 16 bits back."""
    if is_fp8(model):
        return wanted(model) and bool(getattr(model, "fp8_keeps_16_bit", False)) == cache_full_precision()
    if wanted(model):
        convert(model)
    return True


def infotext_values(model: Any) -> dict[str, Any]:
    """What A1111 writes while 8-bit weights are in effect: "FP8 weight" and "Cache FP16 weight for LoRA"."""
    if not is_fp8(model):
        return {"FP8 weight": None, "Cache FP16 weight for LoRA": None}
    return {"FP8 weight": setting(), "Cache FP16 weight for LoRA": bool(getattr(model, "fp8_keeps_16_bit", False))}
