"""The "Approx NN" and "TAESD" live previews (modules.engine.preview_models) from tiny random-weight files in the
real layouts, checked against independent references; missing, corrupt and hostile files; and a real job."""

from __future__ import annotations

import logging
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from modules import paths, shared
from modules.engine import preview_models, previews
from modules.models import memory

A1111_CHOICES = ["Full", "Approx NN", "Approx cheap", "TAESD"]


# --- independent references, written from the published architectures ---------------------------------------


class _RefClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _RefBlock(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n, n, 3, padding=1))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + x)


def reference_taesd_decoder(seed: int, channels: int = 4) -> nn.Sequential:
    """madebyollin/taesd's decoder layout (so its state dict has the real file's keys), output in [0, 1]."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [_RefClamp(), nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [_RefBlock(64), _RefBlock(64), _RefBlock(64), nn.Upsample(scale_factor=2),
                   nn.Conv2d(64, 64, 3, padding=1, bias=False)]
    layers += [_RefBlock(64), nn.Conv2d(64, 3, 3, padding=1)]
    net = nn.Sequential(*layers)
    with torch.no_grad():  # default init gives near-flat outputs; larger weights make mapping errors visible
        for p in net.parameters():
            p.mul_(2.0)
    return net.eval()


APPROX_SHAPES = [(8, 4, 7), (16, 8, 5), (32, 16, 3), (64, 32, 3), (32, 64, 3), (16, 32, 3), (8, 16, 3), (3, 8, 3)]


def approx_nn_weights(seed: int) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes of A1111's VAE-approx/model.pt."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (out_ch, in_ch, k) in enumerate(APPROX_SHAPES, start=1):
        state[f"conv{i}.weight"] = torch.randn(out_ch, in_ch, k, k, generator=g) * (1.0 / (in_ch * k * k) ** 0.5)
        state[f"conv{i}.bias"] = torch.randn(out_ch, generator=g) * 0.1
    return state


def reference_approx_nn(state: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
    """VAEApprox by hand: 2x nearest upscale, pad 11, eight unpadded convs each followed by leaky ReLU (0.1)."""
    x = latents.float().repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    x = F.pad(x, (11, 11, 11, 11))
    for i in range(1, 9):
        x = F.leaky_relu(F.conv2d(x, state[f"conv{i}.weight"], state[f"conv{i}.bias"]), 0.1)
    return x


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty models folder as paths.models_path, and no preview network cached before or after."""
    monkeypatch.setattr(paths, "data_path", str(tmp_path))
    monkeypatch.setattr(paths, "models_path", str(tmp_path / "models"))
    preview_models.clear_cache()
    previews._failed_networks.clear()
    yield tmp_path / "models"
    preview_models.clear_cache()
    previews._failed_networks.clear()


def write_taesd(models: Path, name: str = "taesd_decoder.pth", folder: str = "VAE-taesd", seed: int = 0) -> nn.Module:
    ref = reference_taesd_decoder(seed)
    target = models / folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    state = ref.state_dict()
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    else:
        torch.save(state, target)
    return ref


def write_approx(models: Path, name: str = "model.pt", seed: int = 0) -> dict[str, torch.Tensor]:
    state = approx_nn_weights(seed)
    target = models / "VAE-approx" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".safetensors"):
        save_file(state, str(target))
    else:
        torch.save(state, target)
    return state


def latents(h: int = 5, w: int = 7, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed)) * 2


def cheap(latent: torch.Tensor, is_sdxl: bool = False) -> bytes:
    return previews.latent_to_preview(latent, is_sdxl).tobytes()


def net_output(method: str, is_sdxl: bool, x: torch.Tensor) -> torch.Tensor:
    decode = preview_models.decoder(method, is_sdxl, "cpu", torch.float32)
    assert decode is not None
    return decode(x)


# --- settings --------------------------------------------------------------------------------------------------


def test_setting_offers_a1111s_four_methods_and_names_the_files():
    info = shared.opts.data_labels["show_progress_type"]
    assert info.component_args["choices"] == A1111_CHOICES
    assert list(previews.PREVIEW_TYPES) == A1111_CHOICES
    assert info.default == "Approx cheap"
    for expected in ("models/VAE-approx/model.pt", "vaeapprox-sdxl.safetensors", "models/VAE-taesd/taesd_decoder.pth",
                     "taesdxl_decoder.pth", "never downloaded"):
        assert expected in info.comment_after


# --- the networks against their references ----------------------------------------------------------------------


def test_taesd_equals_the_reference_layout_and_diffusers_decoder_tiny(models_dir):
    ref = write_taesd(models_dir)
    x = latents()
    got = net_output("TAESD", False, x)
    with torch.no_grad():
        expected = ref(x) * 2 - 1  # TAESD gives [0, 1]; previews work in [-1, 1]
    assert got.shape == (1, 3, 40, 56)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.std() > 0.05  # not a flat image that any mapping would match

    # diffusers' own AutoencoderTiny, given the same weights in its file layout, decodes the same.
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny().eval()
    diffusers_state = {f"decoder.layers.{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v
                       for k, v in ref.state_dict().items()}
    missing, unexpected = tiny.load_state_dict(diffusers_state, strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(got, tiny.decode(x).sample, rtol=1e-5, atol=1e-5)


def test_taesd_accepts_a_diffusers_autoencoder_tiny_file(models_dir):
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    tiny = AutoencoderTiny().eval()
    target = models_dir / "VAE-taesd" / "taesd_decoder.safetensors"
    target.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(target))
    x = latents(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(net_output("TAESD", False, x), tiny.decode(x).sample)


def test_taesd_is_found_in_vae_approx_too_and_sdxl_uses_its_own_file(models_dir):
    ref = write_taesd(models_dir, "taesdxl_decoder.pth", folder="VAE-approx", seed=5)
    assert preview_models.find_weights("TAESD", True) == str(models_dir / "VAE-approx" / "taesdxl_decoder.pth")
    assert preview_models.find_weights("TAESD", False) is None
    x = latents(4, 4)
    with torch.no_grad():
        torch.testing.assert_close(net_output("TAESD", True, x), ref(x) * 2 - 1, rtol=1e-5, atol=1e-5)


def test_approx_nn_equals_an_independent_reference(models_dir):
    state = write_approx(models_dir)
    x = latents()
    got = net_output("Approx NN", False, x)
    assert got.shape == (1, 3, 10, 14)  # a quarter of the image
    torch.testing.assert_close(got, reference_approx_nn(state, x), rtol=1e-5, atol=1e-5)
    assert got.std() > 0.01


def test_approx_nn_sdxl_reads_safetensors(models_dir):
    state = write_approx(models_dir, "vaeapprox-sdxl.safetensors", seed=7)
    assert preview_models.find_weights("Approx NN", False) is None
    x = latents(3, 6)
    torch.testing.assert_close(net_output("Approx NN", True, x), reference_approx_nn(state, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["Approx NN", "TAESD"])
def test_preview_has_the_final_image_size(models_dir, method):
    write_approx(models_dir)
    write_taesd(models_dir)
    x = latents(5, 7, batch=2)
    image = previews.latents_to_preview(x, preview_type=method)
    assert isinstance(image, Image.Image) and image.size == (56, 40)
    assert image.tobytes() != cheap(x[0])
    assert previews.latents_to_preview(x, preview_type=method, grid=True).size == (112, 40)  # 2 side by side


def test_approx_nn_preview_is_its_output_enlarged(models_dir):
    state = write_approx(models_dir)
    x = latents(3, 4)
    image = previews.latents_to_preview(x, preview_type="Approx NN")
    expected = previews.rgb_to_image(reference_approx_nn(state, x)[0], scale=4)
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_preview_from_settings_uses_the_chosen_network(models_dir, monkeypatch):
    write_approx(models_dir)
    write_taesd(models_dir)
    monkeypatch.setitem(shared.opts.data, "show_progress_grid", False)
    x = latents(4, 4)
    model = types.SimpleNamespace(is_sdxl=False)
    made = {}
    for method in A1111_CHOICES[1:]:
        monkeypatch.setitem(shared.opts.data, "show_progress_type", method)
        made[method] = previews.preview_from_settings(x, model=model).tobytes()
    assert made["Approx cheap"] == cheap(x[0])
    assert len(set(made.values())) == 3
    assert made["TAESD"] == previews.latents_to_preview(x, preview_type="TAESD").tobytes()


# --- caching, device and dtype, the memory owner ----------------------------------------------------------------


def test_network_is_loaded_once_moved_on_request_and_can_be_dropped(models_dir, monkeypatch):
    write_taesd(models_dir)
    reads = []
    real_load = preview_models.load_network
    monkeypatch.setattr(preview_models, "load_network", lambda *a: reads.append(a) or real_load(*a))
    first = preview_models.network("TAESD", False, "cpu", torch.float32)
    assert preview_models.network("TAESD", False, "cpu", torch.float32) is first and len(reads) == 1
    assert not any(p.requires_grad for p in first.parameters())
    half = preview_models.network("TAESD", False, "cpu", torch.bfloat16)
    assert half is first and next(half.parameters()).dtype == torch.bfloat16  # one copy per family
    assert "live-preview:TAESD:sd" in memory.owner
    memory.owner.unload("live-preview:TAESD:sd")
    assert preview_models.network("TAESD", False, "cpu", torch.float32) is not first and len(reads) == 2


def test_a_changed_file_is_loaded_again(models_dir):
    write_taesd(models_dir, seed=0)
    x = latents(2, 2)
    before = net_output("TAESD", False, x)
    os.utime(models_dir / "VAE-taesd" / "taesd_decoder.pth", ns=(1, 1))
    write_taesd(models_dir, seed=9)
    assert not torch.allclose(before, net_output("TAESD", False, x))


def test_preview_leaves_the_latent_alone(models_dir):
    write_approx(models_dir)
    write_taesd(models_dir)
    x = latents(4, 4).requires_grad_(True)
    copy = x.detach().clone()
    for method in ("Approx NN", "TAESD"):
        previews.latents_to_preview(x, preview_type=method)
    assert torch.equal(x.detach(), copy) and x.grad is None


# --- missing, corrupt and hostile files ---------------------------------------------------------------------------


def test_missing_file_falls_back_to_cheap_and_says_so_once(models_dir, caplog):
    x = latents(3, 3)
    with caplog.at_level(logging.WARNING, logger=preview_models.__name__):
        for _ in range(3):
            assert previews.latents_to_preview(x, preview_type="TAESD").tobytes() == cheap(x[0])
            assert previews.latents_to_preview(x, preview_type="Approx NN").tobytes() == cheap(x[0])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    taesd = next(line for line in lines if '"TAESD"' in line)
    assert "Approx cheap" in taesd and os.path.join("models", "VAE-taesd", "taesd_decoder.pth") in taesd
    assert "nothing is downloaded" in taesd
    assert str(paths.data_path) not in taesd  # where to put it, relative to the data dir
    approx = next(line for line in lines if '"Approx NN"' in line)
    assert os.path.join("models", "VAE-approx", "model.pt") in approx


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("taesd_decoder.pth", b"\x80\x02 this is not a checkpoint"),
        ("taesd_decoder.pth", b"PK\x03\x04 truncated zip"),
        ("taesd_decoder.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"),
        ("taesd_decoder.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}"),
    ],
)
def test_corrupt_file_is_refused_by_name_and_falls_back(models_dir, caplog, monkeypatch, name, content):
    target = models_dir / "VAE-taesd" / name
    target.parent.mkdir(parents=True)
    target.write_bytes(content)
    x = latents(2, 2)
    with caplog.at_level(logging.WARNING, logger=preview_models.__name__):
        assert previews.latents_to_preview(x, preview_type="TAESD").tobytes() == cheap(x[0])
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"refused {name}" in line and "Approx cheap" in line
    # A refused file is not read again on every step ...
    monkeypatch.setattr(preview_models, "load_network", lambda *a: pytest.fail("read again"))
    assert preview_models.network("TAESD", False, "cpu", torch.float32) is None


def test_file_with_the_wrong_network_is_refused(models_dir, caplog):
    write_approx(models_dir)  # an Approx NN file under TAESD's name
    os.makedirs(models_dir / "VAE-taesd")
    os.replace(models_dir / "VAE-approx" / "model.pt", models_dir / "VAE-taesd" / "taesd_decoder.pth")
    with caplog.at_level(logging.WARNING, logger=preview_models.__name__):
        assert preview_models.network("TAESD", False, "cpu", torch.float32) is None
    assert "does not hold a TAESD preview network" in caplog.text


def test_oversized_file_is_refused_unread(models_dir, caplog, monkeypatch):
    write_taesd(models_dir)
    monkeypatch.setattr(preview_models, "MAX_WEIGHTS_BYTES", 1000)
    with caplog.at_level(logging.WARNING, logger=preview_models.__name__):
        assert preview_models.network("TAESD", False, "cpu", torch.float32) is None
    assert "far larger than" in caplog.text


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_evil_pickle_is_refused_and_never_runs(models_dir, caplog, tmp_path):
    marker = tmp_path / "pwned"
    target = models_dir / "VAE-approx" / "model.pt"
    target.parent.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Evil(str(marker))}, target)
    x = latents(2, 2)
    with caplog.at_level(logging.WARNING, logger=preview_models.__name__):
        assert previews.latents_to_preview(x, preview_type="Approx NN").tobytes() == cheap(x[0])
    assert not marker.exists()
    assert "refused model.pt" in caplog.text and "allow-list" in caplog.text


def test_a_network_failing_on_the_latent_falls_back_once(models_dir, caplog):
    def boom(_latents: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("expected 4 channels")

    x = latents(2, 2)
    with caplog.at_level(logging.WARNING, logger=previews.__name__):
        for _ in range(2):
            assert previews.latents_to_preview(x, preview_type="TAESD", decode_fn=boom).tobytes() == cheap(x[0])
    assert caplog.text.count("expected 4 channels") == 1


# --- a real job on the tiny model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        models = root / "models"
        write_taesd(models, seed=11)
        write_taesd(models, "taesdxl_decoder.pth", seed=12)
        write_approx(models, seed=13)
        write_approx(models, "vaeapprox-sdxl.safetensors", seed=14)
        preview_models.clear_cache()
        yield root
        preview_models.clear_cache()


def run_job(checkpoint: str, method: str, monkeypatch) -> tuple[Image.Image, Image.Image]:
    from modules import processing, sd_models

    sd_models.load_model(sd_models.get_closet_checkpoint_match(checkpoint))
    for key, value in (("live_previews_enable", True), ("show_progress_every_n_steps", 1),
                       ("show_progress_type", method), ("show_progress_grid", False)):
        monkeypatch.setitem(shared.opts.data, key, value)
    seen: list[Image.Image] = []
    real_assign = shared.state.assign_current_image
    monkeypatch.setattr(shared.state, "assign_current_image", lambda image: seen.append(image) or real_assign(image))
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", steps=3, width=64, height=64, sampler_name="Euler", seed=42, cfg_scale=7.0,
        do_not_save_samples=True, do_not_save_grid=True)
    result = processing.process_images(p)
    monkeypatch.undo()
    assert seen, "no live preview was made"
    return seen[-1], result.images[0]


@pytest.mark.parametrize("checkpoint", ["sd1.safetensors", "xl.safetensors"])
def test_a_job_previews_differ_by_method_and_the_image_does_not(job_data_dir, monkeypatch, caplog, checkpoint):
    methods = A1111_CHOICES if checkpoint.startswith("sd1") else ["Approx NN", "Approx cheap", "TAESD"]
    with caplog.at_level(logging.WARNING):
        runs = {method: run_job(checkpoint, method, monkeypatch) for method in methods}
    fallbacks = [r.getMessage() for r in caplog.records if r.name in (preview_models.__name__, previews.__name__)]
    assert not fallbacks  # every method ran its own decoder, none fell back
    finals = {method: np.asarray(final) for method, (_, final) in runs.items()}
    first = finals[methods[0]]
    assert all(np.array_equal(first, other) for other in finals.values())
    previews_made = {method: preview for method, (preview, _) in runs.items()}
    assert all(p.size == (64, 64) for p in previews_made.values())
    assert len({p.tobytes() for p in previews_made.values()}) == len(methods)
