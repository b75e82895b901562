"""Tiled VAE decode and encode for large images (settings tiled_vae_decode, tiled_vae_tile_size; off by default).

diffusers' AutoencoderKL can split its input into overlapping tiles and blend the seams, so the decoder's
activations (the largest allocation of a big picture: gigabytes at 2048²) stay the size of one tile. The picture
differs slightly from a whole decode, most near the seams: each tile's convolutions and mid-block attention see
only that tile. The VAE is shared by every job, so its tiling attributes are set for one call only and put back
afterwards, even when the call fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from diffusers import AutoencoderKL

# AutoencoderKL's tiling state (diffusers 0.2x-0.4x): all of it is saved and restored
TILING_ATTRIBUTES = ("use_tiling", "tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")
FALLBACK_TILE_SIZE = 512


def configured_tile_size() -> int:
    """The tile in pixels the settings ask for; 0 when tiled decoding is off."""
    from modules import shared  # the engine takes settings only where a job has no other way to pass them

    opts = getattr(shared, "opts", None)
    if not bool(getattr(opts, "tiled_vae_decode", False)):
        return 0
    return int(getattr(opts, "tiled_vae_tile_size", 512))


def fallback_tile_size() -> int:
    """The tile a whole decode that ran out of memory is done again with: the "VAE tile size" setting, also when
    tiled decoding is off."""
    from modules import shared

    return int(getattr(getattr(shared, "opts", None), "tiled_vae_tile_size", 0) or FALLBACK_TILE_SIZE)


def scale_factor(vae: Any) -> int:
    """Pixels per latent cell: 8 for the four-level SD VAEs."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def tiling_state(vae: Any) -> dict[str, Any]:
    return {name: getattr(vae, name) for name in TILING_ATTRIBUTES if hasattr(vae, name)}


def would_tile(vae: Any, height: int, width: int, tile_size: int | None = None) -> bool:
    """Whether `tiled` with these arguments splits a picture of `height` × `width` pixels."""
    tile = configured_tile_size() if tile_size is None else int(tile_size)
    return tile > 0 and isinstance(vae, AutoencoderKL) and (height > tile or width > tile)


@contextlib.contextmanager
def tiled(vae: Any, height: int, width: int, tile_size: int | None = None) -> Iterator[bool]:
    """Within the block `vae` decodes and encodes in tiles of `tile_size` pixels (None: the settings decide; 0:
    never) when a picture of `height` × `width` pixels is larger than one tile. Yields whether it tiles."""
    if not would_tile(vae, height, width, tile_size):
        yield False
        return
    tile = configured_tile_size() if tile_size is None else int(tile_size)
    factor = scale_factor(vae)
    tile = max(factor, tile - tile % factor)  # whole latent cells, so pixel and latent tiles line up
    saved = tiling_state(vae)
    vae.use_tiling = True
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // factor
    try:
        yield True
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)
