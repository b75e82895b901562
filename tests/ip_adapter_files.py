"""Tiny random-weight IP-Adapters and CLIP vision encoders for tests, written in the layouts people download.

CLIP vision encoders are transformers' `CLIPVisionModelWithProjection` (224-pixel input, 14-pixel patches as the
real ones, a 64-wide two-layer ViT) saved as .safetensors, or as a .pth pickle carrying the `position_ids` buffer
older transformers saved (as h94's pytorch_model.bin, the extension's clip_h.pth, does).

IP-Adapters are written in h94's original layout (nested {"image_proj": ..., "ip_adapter": ...} pickles, or the
same keys flattened in .safetensors) with the shapes of tencent-ailab's modules, not built from diffusers' classes,
so the loader's diffusers conversion is checked, not mirrored:
- base: `proj` (Linear clip -> tokens x context) + `norm` (LayerNorm);
- plus: the Resampler (`latents`, `proj_in`, 4 x [PerceiverAttention(norm1, norm2, to_q, to_kv, to_out),
  FeedForward(LayerNorm, Linear, GELU, Linear)], `proj_out`, `norm_out`), 64 channels per head;
- full: `proj` = Sequential(Linear, GELU, Linear, LayerNorm).
`ip_adapter.N.to_k_ip/to_v_ip` (N = 1, 3, ...) fit the cross-attention layers of the UNet handed in (tiny_models').
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

CLIP_HIDDEN = 64
CLIP_PROJECTION = 32
RESAMPLER_WIDTH = 64
RESAMPLER_DEPTH = 4  # diffusers' conversion (and the released files) have four Resampler layers


def clip_config(hidden: int = CLIP_HIDDEN, projection: int = CLIP_PROJECTION, layers: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // 64), image_size=224, patch_size=14,
                            projection_dim=projection, hidden_act="gelu", layer_norm_eps=1e-5)


def build_clip_vision(seed: int = 0, **config) -> CLIPVisionModelWithProjection:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(clip_config(**config))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def write_clip_vision(path: str | Path, seed: int = 0, **config) -> CLIPVisionModelWithProjection:
    """Write a tiny encoder at `path` (.safetensors, else a pickle with the old position_ids buffer) and return
    the reference model."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = build_clip_vision(seed, **config)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if target.suffix == ".safetensors":
        save_file(state, str(target))
    else:
        positions = model.vision_model.embeddings.num_positions
        state["vision_model.embeddings.position_ids"] = torch.arange(positions)[None]
        torch.save(state, str(target))
    return model


def cross_attention_shapes(unet: torch.nn.Module) -> list[tuple[int, int]]:
    """(out, in) of each cross-attention layer's key projection, in diffusers' processor order."""
    shapes = []
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            to_k = unet.get_submodule(name.removesuffix(".processor")).to_k
            shapes.append((to_k.out_features, to_k.in_features))
    return shapes


def ip_adapter_state(unet: torch.nn.Module, variant: str = "base", clip_width: int = CLIP_PROJECTION,
                     seed: int = 0, tokens: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter for `unet` in h94's nested layout. `clip_width`: the encoder's projection width (base) or
    hidden width (plus, full)."""
    g = torch.Generator().manual_seed(seed)
    layers = cross_attention_shapes(unet)
    context = layers[0][1]

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(shape, generator=g) * scale

    def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(width, scale=0.05), f"{prefix}.bias": rand(width, scale=0.05)}

    if variant == "base":
        image_proj = {"proj.weight": rand(tokens * context, clip_width), "proj.bias": rand(tokens * context),
                      **norm("norm", context)}
    elif variant == "full":
        image_proj = {"proj.0.weight": rand(clip_width, clip_width), "proj.0.bias": rand(clip_width),
                      "proj.2.weight": rand(context, clip_width), "proj.2.bias": rand(context), **norm("proj.3", context)}
    elif variant == "plus":
        dim, inner = RESAMPLER_WIDTH, RESAMPLER_WIDTH  # one head of 64 channels
        image_proj = {"latents": rand(1, tokens, dim), "proj_in.weight": rand(dim, clip_width), "proj_in.bias": rand(dim),
                      "proj_out.weight": rand(context, dim), "proj_out.bias": rand(context), **norm("norm_out", context)}
        for i in range(RESAMPLER_DEPTH):
            image_proj.update({**norm(f"layers.{i}.0.norm1", dim), **norm(f"layers.{i}.0.norm2", dim),
                               f"layers.{i}.0.to_q.weight": rand(inner, dim),
                               f"layers.{i}.0.to_kv.weight": rand(2 * inner, dim),
                               f"layers.{i}.0.to_out.weight": rand(dim, inner), **norm(f"layers.{i}.1.0", dim),
                               f"layers.{i}.1.1.weight": rand(4 * dim, dim), f"layers.{i}.1.3.weight": rand(dim, 4 * dim)})
    else:
        raise ValueError(f"unknown variant {variant!r}")
    ip_layers = {}
    for i, (out, inp) in enumerate(layers):
        ip_layers[f"{2 * i + 1}.to_k_ip.weight"] = rand(out, inp)
        ip_layers[f"{2 * i + 1}.to_v_ip.weight"] = rand(out, inp)
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def save_ip_adapter(path: str | Path, nested: dict[str, dict[str, torch.Tensor]],
                    dtype: torch.dtype | None = None) -> Path:
    """.safetensors: the keys flattened ("image_proj.proj.weight"); otherwise the nested pickle h94 ships."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    nested = {group: {k: (v.to(dtype) if dtype else v).contiguous() for k, v in d.items()}
              for group, d in nested.items()}
    if target.suffix == ".safetensors":
        save_file({f"{group}.{k}": v for group, d in nested.items() for k, v in d.items()}, str(target))
    else:
        torch.save(nested, str(target))
    return target
