"""Tiled VAE decode and encode (settings tiled_vae_decode, tiled_vae_tile_size; modules/engine/vae_tiling.py) on
tiny random-weight models: close to the whole decode above the tile size, identical below it and with the setting
off, the shared VAE's tiling state put back after every job (failed ones too), and the float32 NaN fallback.

The tiny VAE has the real one's four levels (8 pixels per latent cell) and default tile of 64 pixels; a tile of
128 pixels splits a 192×192 picture into 2×2 overlapping tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import processing, sd_models
from modules.engine import generate, vae_tiling

TILE = 128
TILED = {"tiled_vae_decode": True, "tiled_vae_tile_size": TILE}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


@pytest.fixture
def model(data_dir):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))


@pytest.fixture
def tiles(model, monkeypatch) -> list[tuple[int, ...]]:
    """The shape of every latent tile the decoder sees and every picture tile the encoder sees, through tiling."""
    seen: list[tuple[int, ...]] = []
    vae = model.vae
    decode, encode = vae.tiled_decode, vae._tiled_encode

    def tiled_decode(z, *args, **kwargs):
        seen.append(("decode", *z.shape[-2:]))
        return decode(z, *args, **kwargs)

    def tiled_encode(x, *args, **kwargs):
        seen.append(("encode", *x.shape[-2:]))
        return encode(x, *args, **kwargs)

    monkeypatch.setattr(vae, "tiled_decode", tiled_decode)
    monkeypatch.setattr(vae, "_tiled_encode", tiled_encode)
    return seen


def txt2img(size: int = 192, **kw) -> processing.Processed:
    args = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 2, "width": size, "height": size,
            "sampler_name": "Euler", "seed": 42, "do_not_save_samples": True, "do_not_save_grid": True}
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**{**args, **kw}))


def px(result: processing.Processed) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def old_decode(model, latents: torch.Tensor) -> torch.Tensor:
    """vae_decode as it was before tiling existed."""
    with torch.no_grad():
        images = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0].float()
    return ((images + 1) / 2).clamp(0, 1)


def test_a_picture_larger_than_the_tile_is_close_to_the_whole_decode(model, tiles):
    latents = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))  # 192×192 pixels
    whole = generate.vae_decode(model, latents, tile_size=0)
    tiled = generate.vae_decode(model, latents, tile_size=TILE)
    assert tiles == [("decode", 24, 24)] and tiled.shape == whole.shape == (1, 3, 192, 192)
    difference = (tiled - whole).abs()
    # measured on the tiny random VAE: mean 0.025, max 0.29 (of 0..1) - each tile's mid-block attention sees only
    # the tile; another picture differs by about 0.2 on average
    assert 0 < difference.mean() < 0.05 and difference.max() < 0.5
    other = generate.vae_decode(model, torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(1)))
    assert (other - whole).abs().mean() > 4 * difference.mean()


def test_a_picture_no_larger_than_the_tile_is_decoded_whole(model, tiles):
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # 128×128: exactly one tile
    assert torch.equal(generate.vae_decode(model, latents, tile_size=TILE), old_decode(model, latents))
    assert torch.equal(generate.vae_decode(model, latents[:, :, :8], tile_size=TILE), old_decode(model, latents[:, :, :8]))
    assert tiles == []


def test_encoding_tiles_too(model, tiles):
    pictures = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(2))
    whole = generate.vae_encode(model, pictures, tile_size=0)
    tiled = generate.vae_encode(model, pictures, tile_size=TILE)
    assert tiles == [("encode", 192, 192)] and tiled.shape == whole.shape
    assert 0 < (tiled - whole).abs().mean() < 0.5 * whole.abs().mean()  # measured: 0.27 of the mean latent size
    assert torch.equal(generate.vae_encode(model, pictures[..., :128, :128], tile_size=TILE),
                       generate.vae_encode(model, pictures[..., :128, :128], tile_size=0))


def test_the_setting_off_is_bit_identical_to_the_whole_decode(model, tiles):
    latents = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate.vae_decode(model, latents), old_decode(model, latents))  # default: off
    before = vae_tiling.tiling_state(model.vae)
    plain = txt2img()
    assert tiles == [] and vae_tiling.tiling_state(model.vae) == before
    assert np.array_equal(px(plain), px(txt2img(override_settings={"tiled_vae_decode": False, "tiled_vae_tile_size": 64})))


def test_a_job_with_the_setting_decodes_in_tiles_and_puts_the_vae_back(model, tiles):
    before = vae_tiling.tiling_state(model.vae)
    assert before["use_tiling"] is False
    plain = txt2img()
    tiled = txt2img(override_settings=TILED)
    assert tiles == [("decode", 24, 24)]
    assert vae_tiling.tiling_state(model.vae) == before
    difference = np.abs(px(plain) - px(tiled))
    assert 0 < difference.mean() < 0.05 * 255  # the same picture, seams blended
    assert "tile" not in tiled.infotexts[0].lower()  # A1111 writes no key for it
    small = txt2img(size=128, override_settings=TILED)  # one tile: decoded whole, identical
    assert np.array_equal(px(small), px(txt2img(size=128))) and len(tiles) == 1


def test_img2img_encodes_its_large_init_image_in_tiles(model, tiles):
    init = txt2img().images[0]
    args = {"prompt": "x", "steps": 2, "width": 192, "height": 192, "seed": 1, "do_not_save_samples": True,
            "do_not_save_grid": True, "init_images": [init], "denoising_strength": 0.5, "override_settings": TILED}
    processing.process_images(processing.StableDiffusionProcessingImg2Img(**args))
    assert ("encode", 192, 192) in tiles and ("decode", 24, 24) in tiles


def test_a_failing_decode_leaves_the_vae_as_it_was(model, monkeypatch):
    before = vae_tiling.tiling_state(model.vae)

    def broken(*args, **kwargs):
        assert model.vae.use_tiling and model.vae.tile_sample_min_size == TILE
        raise RuntimeError("the decoder broke")

    monkeypatch.setattr(model.vae.decoder, "forward", broken)
    with pytest.raises(RuntimeError, match="the decoder broke"):
        txt2img(override_settings=TILED)
    assert vae_tiling.tiling_state(model.vae) == before


def test_the_float32_fallback_still_works_while_tiling(model, monkeypatch, tiles):
    precisions = []

    def overflowing(z, *args, **kwargs):  # what the SDXL VAE does in float16 on real weights
        precisions.append(z.dtype)
        out = torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8, dtype=z.dtype)
        return out + float("nan") if z.dtype == torch.float16 else out

    monkeypatch.setattr(model.vae.decoder, "forward", overflowing)
    model.vae.to(torch.float16)
    try:
        images = generate.vae_decode(model, torch.randn(1, 4, 24, 24), tile_size=TILE)
        assert model.vae.dtype == torch.float32  # A1111's automatic --no-half-vae, kept for the model
    finally:
        model.vae.to(torch.float32)
    assert torch.isfinite(images).all() and images.shape == (1, 3, 192, 192)
    assert precisions == [torch.float16] * 4 + [torch.float32] * 4  # 2×2 tiles, then again in float32
    assert model.vae.use_tiling is False and len(tiles) == 2


def _out_of_memory_when_whole(model, monkeypatch, whole_latent: int) -> list[tuple[int, int]]:
    """The decoder runs out of memory on a latent of `whole_latent` cells a side, and decodes smaller ones."""
    seen: list[tuple[int, int]] = []
    forward = model.vae.decoder.forward

    def limited(z, *args, **kwargs):
        seen.append(tuple(z.shape[-2:]))
        if z.shape[-1] >= whole_latent:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return forward(z, *args, **kwargs)

    monkeypatch.setattr(model.vae.decoder, "forward", limited)
    return seen


def test_a_whole_decode_out_of_memory_is_done_again_in_tiles_and_says_so(model, monkeypatch, caplog):
    tiled = txt2img(override_settings=TILED)  # the same job, tiled from the start
    seen = _out_of_memory_when_whole(model, monkeypatch, 24)
    result = txt2img(override_settings={"tiled_vae_decode": False, "tiled_vae_tile_size": TILE})
    assert seen[0] == (24, 24) and len(seen) == 5  # the whole latent, then 2×2 tiles
    assert np.array_equal(px(result), px(tiled))
    sentence = f"VAE decode ran out of GPU memory; decoded in tiles of {TILE} pixels instead"
    assert sentence in result.comments and sentence in caplog.text
    assert vae_tiling.tiling_state(model.vae)["use_tiling"] is False


def test_out_of_memory_while_already_tiling_or_with_tiles_refused_is_not_hidden(model, monkeypatch):
    _out_of_memory_when_whole(model, monkeypatch, 1)  # even a tile is too much
    latents = torch.randn(1, 4, 24, 24)
    with pytest.raises(torch.OutOfMemoryError):
        generate.vae_decode(model, latents, tile_size=TILE)
    with pytest.raises(torch.OutOfMemoryError):
        generate.vae_decode(model, latents, tile_size=0)  # 0: never tiles, so no second try either
