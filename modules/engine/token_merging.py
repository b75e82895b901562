"""Token merging (ToMe for Stable Diffusion) with A1111's settings: token_merging_ratio (the first pass),
token_merging_ratio_img2img, token_merging_ratio_hr (the hires pass), and the request fields of the same names.

Like A1111 this uses the `tomesd` package with A1111's arguments: before each self-attention of the UNet's
transformer blocks at full latent resolution (max_downsample=1), `ratio` of the tokens are merged into their most
similar neighbours (bipartite soft matching, one destination token per 2×2 cell, no randomness) and unmerged after
it. Cross-attention and the feed-forward layers are left alone. SDXL (base and refiner) has no attention at full
resolution, so as in A1111 the setting changes nothing there; the refiner's UNet is not patched (nor in A1111).

The patch changes the code the UNet's forward runs: it is applied for one sampling pass only, removed in a
`finally` (a failed job never leaves the shared model patched), and attributes it added are deleted. While it is
on, the UNet runs under a CUDA graph variant named by the ratio and arguments (modules.engine.unet_graph), so the
next job with the same ToMe replays the graphs this one captured, and the plain graphs stay valid. The compiled
forward (`compile_unet`) is not used under ToMe: tomesd makes new block classes on every patch, on which the
compiler's guards would fail and recompile inside the job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from modules.engine import unet_graph

log = logging.getLogger(__name__)

# A1111's sd_models.apply_token_merging: tomesd's defaults for the rest (max_downsample=1, sx=sy=2)
A1111_ARGUMENTS: dict[str, Any] = {"max_downsample": 1, "sx": 2, "sy": 2, "use_rand": False, "merge_attn": True,
                                   "merge_crossattn": False, "merge_mlp": False}
MAX_RATIO = 0.9  # the settings' slider range
# what tomesd sets on the UNet and its blocks and does not take off again in remove_patch
TOMESD_ATTRIBUTES = ("_tome_info", "use_ada_layer_norm", "use_ada_layer_norm_zero")


def _opt(name: str) -> float:
    from modules import shared  # lazy: the engine reads settings only where a job cannot pass them

    return float(getattr(getattr(shared, "opts", None), name, 0.0) or 0.0)


def ratio_for(p: Any, hires: bool = False) -> float:
    """The ratio of one pass of processing job `p`, by A1111's rules (`get_token_merging_ratio`): the request's
    field, else the setting; the hires pass prefers its own field and setting; img2img prefers
    token_merging_ratio_img2img unless the job overrides token_merging_ratio itself."""
    own = float(getattr(p, "token_merging_ratio", 0) or 0)
    if hires:
        return float(getattr(p, "token_merging_ratio_hr", 0) or 0) or _opt("token_merging_ratio_hr") or own \
            or _opt("token_merging_ratio")
    if getattr(p, "kind", "txt2img") == "img2img":
        overridden = "token_merging_ratio" in (getattr(p, "override_settings", None) or {})
        return own or (overridden and _opt("token_merging_ratio")) or _opt("token_merging_ratio_img2img") \
            or _opt("token_merging_ratio")
    return own or _opt("token_merging_ratio")


def _transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in unet.modules() if any(c.__name__ == "BasicTransformerBlock" for c in type(m).__mro__)]


def _check_blocks(blocks: list[torch.nn.Module]) -> None:
    """tomesd's block forward is a copy of diffusers' for plain layer-norm blocks (every SD 1/2/XL UNet); it would
    silently skip the parts other blocks have (ada norms, positional embeddings, GLIGEN, chunked feed-forward)."""
    for block in blocks:
        if (getattr(block, "norm_type", "layer_norm") != "layer_norm" or getattr(block, "pos_embed", None) is not None
                or getattr(block, "_chunk_size", None) is not None or hasattr(block, "fuser")):
            raise ValueError("token merging: this UNet's transformer blocks are of a kind tomesd cannot patch")


def is_patched(unet: torch.nn.Module) -> bool:
    return hasattr(unet, "_tome_info")


@contextlib.contextmanager
def merged(unet: torch.nn.Module, ratio: float, **arguments: Any) -> Iterator[bool]:
    """Within the block the UNet runs ToMe with `ratio` (0: untouched); yields whether it is patched.
    `arguments` override A1111's tomesd arguments (A1111_ARGUMENTS)."""
    ratio = float(ratio or 0)
    if ratio <= 0:
        yield False
        return
    if not 0 < ratio <= MAX_RATIO:
        raise ValueError(f"token merging ratio {ratio:g} is not between 0 and {MAX_RATIO}")
    if is_patched(unet):  # someone else's patch (an extension's): not ours to replace or remove
        log.warning("token merging: the UNet is already patched with ToMe; leaving it as it is")
        yield False
        return
    import tomesd

    blocks = _transformer_blocks(unet)
    _check_blocks(blocks)
    added = {id(m): [a for a in TOMESD_ATTRIBUTES if a not in vars(m)] for m in (unet, *blocks)}
    settings = {**A1111_ARGUMENTS, **arguments}
    try:
        tomesd.apply_patch(unet, ratio=ratio, **settings)
        with unet_graph.graph_variant(unet, ("tome", ratio, tuple(sorted(settings.items())))):
            yield True
    finally:
        tomesd.remove_patch(unet)
        for module in (unet, *blocks):  # tomesd leaves its state and flags behind: remove them exactly
            for name in added[id(module)]:
                vars(module).pop(name, None)


@contextlib.contextmanager
def for_pass(p: Any, model: Any, hires: bool = False) -> Iterator[bool]:
    """ToMe on `model`'s UNet for one sampling pass of job `p` (the first pass, or the hires pass)."""
    with merged(model.unet, ratio_for(p, hires)) as patched:
        yield patched
