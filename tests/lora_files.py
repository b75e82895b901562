"""LoRA-family files for tests, written in the layouts trainers produce, for the tiny models of tiny_models.py.

Each writer returns the state dict it saved; `expected_weight` helpers in the tests recompute the merged weight
from those tensors with plain formulas, independently of modules.networks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

# Layers of the tiny models a file targets: diffusers names (module path in our model), per family.
SD1_UNET_LAYERS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.0.resnets.0.conv1",  # a 3x3 conv: LoCon
)
# Text-encoder layers by their module path in our model; files name them "text_model.<path>" (kohya, PEFT).
TE_LAYERS = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1")


def module_of(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """A layer by path; text encoders with a projection keep transformers 4's "text_model." level."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return root.get_submodule("text_model." + path)


def low_rank_pair(weight: torch.Tensor, rank: int, generator: torch.Generator, scale: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) for a Linear (out, in) or a conv (out, in, kh, kw) weight: down carries the kernel."""
    out_ch, in_ch = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    down = torch.randn((rank, in_ch, *kernel), generator=generator) * scale
    up = torch.randn((out_ch, rank, *([1] * len(kernel))), generator=generator) * scale
    return up, down


def kohya_name(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "_")


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    else:
        torch.save(tensors, str(path))
    return path


def kohya_lora(model, seed: int, rank: int = 2, alpha: float | None = 1.0, unet_layers=SD1_UNET_LAYERS,
               te_layers=TE_LAYERS, te_prefixes=("lora_te_",)) -> dict[str, torch.Tensor]:
    """kohya LoRA/LoCon tensors for `model` (a StableDiffusionModel) on the given layers."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    targets = [("lora_unet_", model.unet, path) for path in unet_layers]
    for index, prefix in enumerate(te_prefixes):
        targets += [(prefix, model.text_encoders[index], path) for path in te_layers]
    for prefix, root, path in targets:
        weight = module_of(root, path).weight
        up, down = low_rank_pair(weight, rank, g)
        name = kohya_name(prefix, path if prefix == "lora_unet_" else "text_model." + path)
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.lora_down.weight"] = down
        if alpha is not None:
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def lora_delta(tensors: dict[str, torch.Tensor], name: str, weight_shape: torch.Size) -> torch.Tensor:
    """up @ down * alpha / rank, written out plainly (convs flattened over the kernel)."""
    up = tensors[f"{name}.lora_up.weight"].float()
    down = tensors[f"{name}.lora_down.weight"].float()
    rank = down.shape[0]
    alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else rank
    product = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (product * (alpha / rank)).reshape(weight_shape)
