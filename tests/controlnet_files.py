"""Tiny random-weight ControlNets, T2I-Adapters and IP-Adapters for tests, written in the layouts people download.

ControlNets are `ControlNetModel.from_unet` of tiny_models' UNets (same widths, heads, context and depths, so a
ControlNet fits the UNet of its family), with seeded noise on every tensor (the zero convolutions too, so a key
mix-up cannot hide behind zeros). Layouts:
- "diffusers": the ControlNetModel state dict as one .safetensors file, or a diffusers folder (config.json +
  diffusion_pytorch_model.safetensors) when the path has no suffix;
- "original": lllyasviel's layout (`control_model.input_blocks...`, `zero_convs.N.0`, `input_hint_block.N`,
  `middle_block_out.0`; SDXL adds `label_emb`), as .safetensors or a .pth pickle. The UNet half is renamed by
  modules/models/ldm_export.py and the ControlNet half below: neither shares code with the loader's
  original->diffusers conversion (diffusers' single-file helper), so a mapping bug cannot cancel out.

T2I-Adapters are sized for the tiny UNets too: one feature per UNet down block, widths = block_out_channels,
an unshuffle factor that puts the first feature at the latent size (8, the tiny VAE's scale factor) for SD1 and
at the size after SDXL's first down block (16) for SDXL (full_adapter_xl). The light adapter has one feature
more than its width list, so it cannot fit a two-level UNet: it is written at the widths of the SD1 UNet and
fits only real four-level UNets.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter
from safetensors.torch import save_file
from tiny_models import build_unet, unet_config

from modules.models.ldm_export import UNET_PREFIX, unet_to_ldm

ORIGINAL_PREFIX = "control_model."
_CONTROLNET_ONLY = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
ADAPTER_SHAPES = {  # family -> (adapter_type, channels, downscale_factor)
    "sd1": ("full_adapter", [32, 64], 8),
    "sdxl": ("full_adapter_xl", [64, 128], 16),
}
ADAPTER_RES_BLOCKS = 2
IP_CONTEXT = {"sd1": 768, "sd2": 1024, "sdxl": 2048}  # real widths: families are told from them


def _jitter(module: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def build_controlnet(family: str = "sd1", seed: int = 0) -> ControlNetModel:
    """A ControlNet copied from tiny_models.build_unet(family, seed=seed), every tensor jittered."""
    unet = build_unet(family, seed=seed)
    controlnet = ControlNetModel.from_unet(unet)
    _jitter(controlnet, 1000 + seed)
    return controlnet.eval()


def controlnet_to_original(controlnet: ControlNetModel, prefix: str = ORIGINAL_PREFIX) -> dict[str, torch.Tensor]:
    """A ControlNetModel's tensors under lllyasviel's original key names."""
    sd = controlnet.state_dict()
    unet_part = {k: v for k, v in sd.items() if not k.startswith(_CONTROLNET_ONLY)}
    out = {prefix + k[len(UNET_PREFIX):]: v for k, v in unet_to_ldm(unet_part, {}).items()}
    hint = "controlnet_cond_embedding."
    inner = sorted({int(k.split(".")[2]) for k in sd if k.startswith(hint + "blocks.")})
    for param in ("weight", "bias"):
        out[f"{prefix}input_hint_block.0.{param}"] = sd[f"{hint}conv_in.{param}"]
        for i in inner:  # SiLUs sit at the odd indices of the original nn.Sequential
            out[f"{prefix}input_hint_block.{2 * (i + 1)}.{param}"] = sd[f"{hint}blocks.{i}.{param}"]
        out[f"{prefix}input_hint_block.{2 * (len(inner) + 1)}.{param}"] = sd[f"{hint}conv_out.{param}"]
        out[f"{prefix}middle_block_out.0.{param}"] = sd[f"controlnet_mid_block.{param}"]
        for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("controlnet_down_blocks.")}):
            out[f"{prefix}zero_convs.{i}.0.{param}"] = sd[f"controlnet_down_blocks.{i}.{param}"]
    assert len(out) == len(sd), "every ControlNet tensor has an original name"
    return out


def save(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> Path:
    """.safetensors, else a torch pickle (.pth/.pt/.ckpt/.bin)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype else v).detach().contiguous().clone() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, str(path))
    return path


def write_controlnet(path: str | Path, family: str = "sd1", layout: str = "original", seed: int = 0,
                     prefix: str = ORIGINAL_PREFIX, dtype: torch.dtype | None = None) -> ControlNetModel:
    """Write a tiny ControlNet of `family` at `path` and return the diffusers reference model.

    layout "original": `prefix` + original keys (prefix "" for the files that lack it); "diffusers": a state
    dict file, or a diffusers folder when `path` has no suffix."""
    target = Path(path)
    controlnet = build_controlnet(family, seed)
    if layout == "original":
        save(target, controlnet_to_original(controlnet, prefix), dtype)
    elif layout == "diffusers" and not target.suffix:
        controlnet.save_pretrained(str(target), safe_serialization=True)
    elif layout == "diffusers":
        save(target, controlnet.state_dict(), dtype)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return controlnet


def build_t2i_adapter(family: str = "sd1", kind: str = "full", seed: int = 0) -> T2IAdapter:
    if kind == "light":
        adapter = T2IAdapter(in_channels=3, channels=list(unet_config("sd1")["block_out_channels"]),
                             num_res_blocks=ADAPTER_RES_BLOCKS, downscale_factor=8, adapter_type="light_adapter")
    else:
        adapter_type, channels, factor = ADAPTER_SHAPES[family]
        adapter = T2IAdapter(in_channels=3, channels=channels, num_res_blocks=ADAPTER_RES_BLOCKS,
                             downscale_factor=factor, adapter_type=adapter_type)
    _jitter(adapter, 2000 + seed, scale=0.1)
    return adapter.eval()


def adapter_to_original(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    """A T2IAdapter's tensors under TencentARC's names: the full adapter's blocks in one flat list, the light
    adapter's nested."""
    light = adapter.config.adapter_type == "light_adapter"
    out: dict[str, torch.Tensor] = {}
    for key, value in adapter.state_dict().items():
        parts = key.split(".")  # adapter, body, I, resnets, J, block1, weight | adapter, conv_in, weight
        if parts[1] == "conv_in":
            out[".".join(parts[1:])] = value
        elif parts[3] == "resnets":
            level, j = int(parts[2]), int(parts[4])
            rest = ".".join(parts[5:])
            flat = f"body.{level}.body.{j}" if light else f"body.{level * ADAPTER_RES_BLOCKS + j}"
            out[f"{flat}.{rest}"] = value
        else:  # in_conv / out_conv
            level = int(parts[2])
            block = level if light else level * ADAPTER_RES_BLOCKS
            out[f"body.{block}.{'.'.join(parts[3:])}"] = value
    return out


def write_t2i_adapter(path: str | Path, family: str = "sd1", layout: str = "original", kind: str = "full",
                      seed: int = 0) -> T2IAdapter:
    """Write a tiny T2I-Adapter (kind "full", or "light" for SD1) and return the diffusers reference model.
    layout "original" (TencentARC) or "diffusers" (a state dict file, or a folder when `path` has no suffix)."""
    target = Path(path)
    adapter = build_t2i_adapter(family, kind, seed)
    if layout == "original":
        save(target, adapter_to_original(adapter))
    elif layout == "diffusers" and not target.suffix:
        adapter.save_pretrained(str(target), safe_serialization=True)
    elif layout == "diffusers":
        save(target, adapter.state_dict())
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return adapter


def ip_adapter_tensors(family: str = "sd1", seed: int = 0, tokens: int = 4, clip_dim: int = 32,
                       hidden: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    """IP-Adapter weights nested as the released .bin files are: {"image_proj": {...}, "ip_adapter": {...}},
    at the family's real context width (from which its family is told) and tiny other sizes."""
    g = torch.Generator().manual_seed(seed)
    context = IP_CONTEXT[family]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g) * 0.02

    return {
        "image_proj": {"proj.weight": rand(tokens * context, clip_dim), "proj.bias": rand(tokens * context),
                       "norm.weight": rand(context), "norm.bias": rand(context)},
        "ip_adapter": {f"{i}.{name}": rand(hidden, context) for i in (1, 3) for name in ("to_k_ip.weight",
                                                                                           "to_v_ip.weight")},
    }


def write_ip_adapter(path: str | Path, family: str = "sd1", seed: int = 0) -> Path:
    """.bin/.pth: the nested pickle; .safetensors: the same flattened to "image_proj.proj.weight", ..."""
    target = Path(path)
    nested = ip_adapter_tensors(family, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".safetensors":
        save_file({f"{group}.{k}": v for group, d in nested.items() for k, v in d.items()}, str(target))
    else:
        torch.save(nested, str(target))
    return target


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def write_evil_pickle(path: str | Path, marker: Path) -> Path:
    """A .pth that runs `touch marker` when unpickled without restrictions (beside real-looking keys)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"control_model.input_hint_block.0.weight": torch.zeros(1), "x": _Evil(marker)}, str(target))
    return target


def controlnet_runner(units: list) -> tuple:
    """(script runner, script args) with only the built-in ControlNet script and `units` as its arguments: what a
    job needs to run ControlNet units without building the page (no gradio, e.g. on a bare GPU machine)."""
    from modules import scripts

    repo = Path(__file__).resolve().parent.parent
    script = scripts.load_module(str(repo / "scripts" / "controlnet.py")).Script()
    script.filename = str(repo / "scripts" / "controlnet.py")
    script.args_from, script.args_to = 0, len(units)
    runner = scripts.ScriptRunner(is_img2img=False, scripts=[script], alwayson_scripts=[script])
    return runner, tuple(units)
