"""The default-model training script on a tiny config and 64x64 images: stages train, resume and export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tools.default_model import training

TINY = training.ModelConfig(
    image_size=64,
    unet_channels=(32, 64),
    unet_layers=1,
    unet_attention=(False, True),
    head_channels=32,
    text_hidden=64,
    text_layers=1,
    vae_channels=(32, 32, 32, 32),
    vae_layers=1,
)
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}


def stand_in_source(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """A self-contained scene stand-in, so these tests do not depend on the scene world's details."""
    name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    image = Image.new("RGB", (size, size), (255, 255, 255))
    x = int(rng.integers(0, size // 2))
    ImageDraw.Draw(image).rectangle([x, x, x + size // 2, x + size // 2], fill=COLOURS[name])
    return image, f"a {name} square"


def config(out: Path, stage: str, steps: int, **kw) -> training.TrainConfig:
    base = training.TrainConfig(out=out, stage=stage, steps=steps, batch_size=2, lr=1e-3, warmup_steps=1,
                                log_every=1, save_every=100, model=TINY)
    return replace(base, **kw)


def test_default_model_fits_in_40_mb():
    assert training.projected_checkpoint_bytes(training.ModelConfig()) <= 40_000_000
    counts = training.parameter_counts(training.ModelConfig())
    assert set(counts) == {"unet", "vae", "text_encoder"} and all(n > 0 for n in counts.values())


def test_vae_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    vae = training.build_vae(TINY)
    rng = np.random.default_rng(0)
    images = torch.stack([training.image_to_tensor(stand_in_source(rng, 64)[0], 64) for _ in range(2)])
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _ = training.vae_loss(vae, images, 1e-6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_diffusion_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    unet = training.build_unet(TINY)
    latents = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 77, TINY.text_hidden)
    schedule = training.alphas_cumprod()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        # The same noise and timesteps each time, so the drop is learning rather than luck.
        loss = training.diffusion_loss(unet, latents, context, schedule, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_caption_dropout_empties_about_the_asked_share():
    gen = torch.Generator().manual_seed(0)
    ids = training.tokenize(["a red circle"] * 2000)
    dropped = training.drop_captions(ids, 0.1, gen)
    empty = (dropped == training.tokenize([""])[0]).all(dim=1)
    assert 0.07 < empty.float().mean().item() < 0.13
    assert (dropped[~empty] == ids[~empty]).all()  # the rest are untouched


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Both stages, a few steps each; the UNet stage is cut short and then resumed."""
    out = tmp_path_factory.mktemp("run")
    vae = training.train_stage(config(out, "vae", 3), stand_in_source)
    assert vae.done and vae.step == 3
    first = training.train_stage(config(out, "unet", 2, ema_decay=0.9), stand_in_source)
    assert first.done and first.step == 2
    return out


def test_stages_log_finite_losses(trained: Path):
    for stage, rows in (("vae", 3), ("unet", 2)):
        steps, losses = training.read_loss_csv(trained / f"loss_{stage}.csv")
        assert steps == list(range(1, rows + 1))
        assert all(np.isfinite(losses))
    ckpt = training.load_checkpoint(trained, "unet")
    assert 0 < ckpt["scaling_factor"] < 100  # measured from the trained VAE's latents


def test_resume_continues_from_the_saved_step(trained: Path):
    with pytest.raises(FileExistsError):
        training.train_stage(config(trained, "unet", 4), stand_in_source)  # no silent overwrite
    result = training.train_stage(config(trained, "unet", 4, resume=True, ema_decay=0.9), stand_in_source)
    assert result.step == 4 and result.done
    steps, _ = training.read_loss_csv(trained / "loss_unet.csv")
    assert steps == [1, 2, 3, 4]
    assert training.load_checkpoint(trained, "unet")["step"] == 4


def test_time_budget_stops_and_checkpoints(tmp_path: Path):
    result = training.train_stage(config(tmp_path, "vae", 50, time_budget_min=0.001), stand_in_source)
    assert not result.done and result.step < 50
    ckpt = training.load_checkpoint(tmp_path, "vae")
    assert ckpt["step"] == result.step and not ckpt["done"]


def test_export_round_trips_through_the_loader(trained: Path, tmp_path: Path):
    target = tmp_path / "default.safetensors"
    written, error = training.export(trained, target)  # raises when the loaded UNet disagrees
    assert written.exists() and error < 1e-2
    sidecar = json.loads(written.with_suffix(".json").read_text())
    assert sidecar["family"] == "sd1"
    assert sidecar["unet"]["attention_head_dim"] == TINY.attention_heads
    assert sidecar["vae"]["scaling_factor"] == pytest.approx(training.load_checkpoint(trained, "unet")["scaling_factor"])


def test_scene_world_source_gives_captioned_images():
    pytest.importorskip("tools.default_model.scenes")
    image, text = training.scene_world_source()(np.random.default_rng(0), 64)
    assert image.size == (64, 64) and text


def test_loss_plot_is_written_when_matplotlib_is_there(trained: Path):
    pytest.importorskip("matplotlib")
    assert (trained / "loss_vae.png").exists() and (trained / "loss_unet.png").exists()


def test_stage_done_counts_steps(trained: Path):
    assert training.stage_done(trained, "vae", 3)
    assert not training.stage_done(trained, "vae", 10)  # asking for more steps continues the stage


def test_warm_start_continues_from_an_exported_file(trained: Path, tmp_path: Path):
    exported, _ = training.export(trained, tmp_path / "first.safetensors")
    out = tmp_path / "again"
    training.warm_start(out, exported, vae_steps=3, model=TINY)
    assert training.stage_done(out, "vae", 3)  # the file's VAE is kept, not retrained
    result = training.train_stage(config(out, "unet", 2, resume=True), stand_in_source)
    assert result.done and result.step == 2
    unet, _, _ = training.trained_modules(out, use_ema=False)
    before, _, _ = training.trained_modules(trained)
    # Training went on from the file's weights: close to them (fp16 rounding + two small steps), not a fresh init.
    a, b = unet.state_dict(), before.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 0.05
    with pytest.raises(FileExistsError):
        training.warm_start(out, exported, vae_steps=3, model=TINY)


def test_decoder_stage_trains_the_decoder_and_keeps_the_latent_space(trained: Path, tmp_path: Path):
    exported, _ = training.export(trained, tmp_path / "first.safetensors")
    out = tmp_path / "decoder"
    training.warm_start(out, exported, vae_steps=3, model=TINY)
    before = training.finished_vae(out, TINY).state_dict()
    result = training.train_stage(config(out, "decoder", 3), stand_in_source)
    assert result.done and (out / "loss_decoder.csv").exists()
    after = training.finished_vae(out, TINY).state_dict()  # now read from the decoder stage's checkpoint
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
