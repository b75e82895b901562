"""Live previews from latents (modules.engine.previews)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from modules import shared
from modules.engine import previews


def one_hot_latent(channel: int, value: float, h: int = 2, w: int = 3) -> torch.Tensor:
    latent = torch.zeros(4, h, w)
    latent[channel] = value
    return latent


def test_cheap_approximation_is_the_published_linear_map():
    for is_sdxl, table in ((False, previews.APPROX_CHEAP_SD), (True, previews.APPROX_CHEAP_SDXL)):
        for channel in range(4):
            rgb = previews.cheap_approximation(one_hot_latent(channel, 1.0), is_sdxl)
            assert rgb.shape == (3, 2, 3)
            torch.testing.assert_close(rgb[:, 0, 0], torch.tensor(table[channel]))
    # Batched input keeps its batch dimension.
    assert previews.cheap_approximation(torch.zeros(5, 4, 2, 3)).shape == (5, 3, 2, 3)


def test_sd_and_sdxl_tables_differ_and_are_four_by_three():
    for table in (previews.APPROX_CHEAP_SD, previews.APPROX_CHEAP_SDXL):
        assert len(table) == 4 and all(len(row) == 3 for row in table)
    assert previews.APPROX_CHEAP_SD != previews.APPROX_CHEAP_SDXL


def test_latent_to_preview_has_the_image_size_and_is_upscaled_nearest():
    latent = torch.randn(4, 8, 12, generator=torch.Generator().manual_seed(0))
    image = previews.latent_to_preview(latent)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.size == (12 * 8, 8 * 8)
    pixels = np.asarray(image)
    # Every 8x8 block is one latent pixel's colour.
    block = pixels[8:16, 16:24]
    assert (block == block[0, 0]).all()
    rgb = previews.cheap_approximation(latent)[:, 1, 2]
    expected = ((rgb * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).numpy()
    assert (block[0, 0] == expected).all()


def test_values_are_clamped_and_nans_do_not_break_the_image():
    # Channel 0 of SD1 is positive in every colour: large values saturate to white, large negative to black.
    assert np.asarray(previews.latent_to_preview(one_hot_latent(0, 100.0))).min() == 255
    assert np.asarray(previews.latent_to_preview(one_hot_latent(0, -100.0))).max() == 0
    assert np.asarray(previews.latent_to_preview(one_hot_latent(0, float("nan")))).max() == 0


def test_half_precision_latents_work():
    image = previews.latent_to_preview(torch.randn(4, 4, 4).half(), is_sdxl=True)
    assert image.size == (32, 32)


def test_full_preview_uses_the_decoder():
    seen = []

    def decode(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape)
        return torch.ones(batch.shape[0], 3, batch.shape[2] * 8, batch.shape[3] * 8)  # white

    image = previews.full_preview(decode, torch.zeros(4, 3, 5))
    assert seen == [(1, 4, 3, 5)]
    assert image.size == (40, 24)
    assert np.asarray(image).min() == 255


def test_latents_to_preview_first_image_grid_and_full_fallback():
    latents = torch.randn(4, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    first = previews.latents_to_preview(latents)
    assert first.size == (16, 16)
    assert first.tobytes() == previews.latent_to_preview(latents[0]).tobytes()
    grid = previews.latents_to_preview(latents, grid=True)
    assert grid.size == (32, 32)  # 2x2 grid of 16x16 previews
    # "Full" without a decoder shows the cheap preview instead of nothing.
    fallback = previews.latents_to_preview(latents, preview_type="Full", decode_fn=None)
    assert fallback.tobytes() == first.tobytes()


def test_preview_from_settings_picks_model_type_and_mode(monkeypatch, tmp_path):
    from modules import paths
    from modules.engine import preview_models

    monkeypatch.setattr(paths, "models_path", str(tmp_path))  # no preview network files
    preview_models.clear_cache()
    latents = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    monkeypatch.setitem(shared.opts.data, "show_progress_grid", False)
    monkeypatch.setitem(shared.opts.data, "show_progress_type", "Approx cheap")
    sdxl = types.SimpleNamespace(is_sdxl=True)
    got = previews.preview_from_settings(latents, model=sdxl)
    assert got.tobytes() == previews.latent_to_preview(latents[0], is_sdxl=True).tobytes()

    decoded = types.SimpleNamespace(is_sdxl=False, decode_first_stage=lambda b: -torch.ones(1, 3, 16, 16))
    monkeypatch.setitem(shared.opts.data, "show_progress_type", "Full")
    assert np.asarray(previews.preview_from_settings(latents, model=decoded)).max() == 0
    # "Approx NN" without its weights file falls back to the cheap preview.
    monkeypatch.setitem(shared.opts.data, "show_progress_type", "Approx NN")
    got = previews.preview_from_settings(latents, model=decoded)
    assert got.tobytes() == previews.latent_to_preview(latents[0]).tobytes()


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("live_previews_enable", True),
        ("show_progress_every_n_steps", 10),
        ("show_progress_type", "Approx cheap"),
        ("live_preview_refresh_period", 1000),
        ("live_previews_image_format", "png"),
        ("randn_source", "GPU"),
        ("eta_noise_seed_delta", 0),
    ],
)
def test_settings_are_registered_with_a1111_defaults(key, default):
    assert shared.opts.data_labels[key].default == default


def test_preview_type_choices():
    assert shared.opts.data_labels["show_progress_type"].component_args["choices"] == list(previews.PREVIEW_TYPES)
