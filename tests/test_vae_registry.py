"""modules/models/vae_registry.py: VAE scanning and A1111's VAE choice rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modules.models import registry, vae_registry


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    monkeypatch.setattr(vae_registry, "cmd_opt", lambda name: None)
    vae_registry.vae_dict.clear()
    yield
    vae_registry.vae_dict.clear()


@pytest.fixture
def dirs(tmp_path):
    vae = tmp_path / "models" / "VAE"
    ckpt = tmp_path / "models" / "Stable-diffusion"
    vae.mkdir(parents=True)
    ckpt.mkdir(parents=True)
    return vae, ckpt


def touch(path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 16)
    return str(path)


def write_diffusers_vae(folder, class_name: str = "AutoencoderKL") -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name}))
    touch(folder / "diffusion_pytorch_model.safetensors")
    return str(folder)


def test_scan(dirs, tmp_path):
    vae, ckpt = dirs
    touch(vae / "sdxl_vae.safetensors")
    touch(vae / "sub" / "kl-f8-anime2.ckpt")
    touch(vae / "vae-ft-mse-840000-ema-pruned.pt")
    touch(vae / "old.bin")
    touch(vae / "readme.txt")
    touch(vae / ".hidden" / "x.safetensors")
    diffusers_vae = write_diffusers_vae(vae / "sd-vae-ft-mse")
    write_diffusers_vae(vae / "not-a-vae", class_name="UNet2DConditionModel")
    touch(ckpt / "model.vae.safetensors")
    touch(ckpt / "deep" / "other.vae.pt")
    touch(ckpt / "model.safetensors")  # a checkpoint, not a VAE
    extra = tmp_path / "drive" / "vaes"
    touch(extra / "from_vae_dir.safetensors")

    vae_registry.refresh_vae_list([str(vae), str(extra)], [str(ckpt)])
    assert vae_registry.vae_dict == {
        "from_vae_dir.safetensors": str(extra / "from_vae_dir.safetensors"),
        "kl-f8-anime2.ckpt": str(vae / "sub" / "kl-f8-anime2.ckpt"),
        "model.vae.safetensors": str(ckpt / "model.vae.safetensors"),
        "old.bin": str(vae / "old.bin"),
        "other.vae.pt": str(ckpt / "deep" / "other.vae.pt"),
        "sd-vae-ft-mse": diffusers_vae,
        "sdxl_vae.safetensors": str(vae / "sdxl_vae.safetensors"),
        "vae-ft-mse-840000-ema-pruned.pt": str(vae / "vae-ft-mse-840000-ema-pruned.pt"),
    }
    assert vae_registry.vae_option_names() == ["Automatic", "None", *sorted(vae_registry.vae_dict, key=str.lower)]


def test_vae_files_in_checkpoint_dir_are_vaes_not_checkpoints(dirs, tmp_path, monkeypatch):
    vae, ckpt = dirs
    touch(ckpt / "model.safetensors")
    touch(ckpt / "model.vae.safetensors")
    vae_registry.refresh_vae_list([str(vae)], [str(ckpt)])
    assert list(vae_registry.vae_dict) == ["model.vae.safetensors"]

    monkeypatch.setattr(registry, "cmd_opt", lambda name: None)
    monkeypatch.setattr(registry.hashes, "cache_filename", str(tmp_path / "cache.json"))
    monkeypatch.setattr(registry.hashes, "_data", None)
    registry.list_models(str(ckpt))
    try:
        assert registry.checkpoint_tiles() == ["model.safetensors"]
    finally:
        registry.checkpoints_list.clear()
        registry.checkpoint_aliases.clear()


def test_refresh_replaces_the_list(dirs):
    vae, ckpt = dirs
    a = touch(vae / "a.safetensors")
    vae_registry.refresh_vae_list([str(vae)], [str(ckpt)])
    os.remove(a)
    touch(vae / "b.safetensors")
    vae_registry.refresh_vae_list([str(vae)], [str(ckpt)])
    assert list(vae_registry.vae_dict) == ["b.safetensors"]


def test_defaults_from_paths_and_cmd_opts(dirs, tmp_path, monkeypatch):
    vae, ckpt = dirs
    touch(vae / "a.safetensors")
    touch(ckpt / "m.vae.pt")
    extra = tmp_path / "extra"
    touch(extra / "b.safetensors")
    monkeypatch.setattr(vae_registry.paths, "vae_dir", str(vae))
    monkeypatch.setattr(vae_registry.paths, "sd_model_dir", str(ckpt))
    monkeypatch.setattr(vae_registry, "cmd_opt", lambda name: {"vae_dir": str(extra)}.get(name))
    vae_registry.refresh_vae_list()
    assert list(vae_registry.vae_dict) == ["a.safetensors", "b.safetensors", "m.vae.pt"]


# --- resolve_vae -------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(dirs):
    vae, ckpt = dirs
    touch(vae / "sdxl_vae.safetensors")
    path = touch(ckpt / "model.safetensors")
    vae_registry.refresh_vae_list([str(vae)], [str(ckpt)])
    return path


def test_vae_path_flag_wins(checkpoint, tmp_path):
    flag = touch(tmp_path / "forced.safetensors")
    touch(tmp_path / "models" / "Stable-diffusion" / "model.vae.safetensors")
    for choice in ("Automatic", "None", "sdxl_vae.safetensors", "unknown"):
        res = vae_registry.resolve_vae(checkpoint, choice, flag)
        assert res == vae_registry.VaeResolution(flag, "commandline argument")
        assert res.vae == flag


def test_missing_vae_path_flag_is_an_error(checkpoint, tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="nope.pt"):
        vae_registry.resolve_vae(checkpoint, "Automatic", missing)


def test_vae_path_flag_read_from_cmd_opts_by_default(checkpoint, tmp_path, monkeypatch):
    flag = touch(tmp_path / "forced.safetensors")
    monkeypatch.setattr(vae_registry, "cmd_opt", lambda name: {"vae_path": flag}.get(name))
    assert vae_registry.resolve_vae(checkpoint, "None").path == flag
    assert vae_registry.resolve_vae(checkpoint, "None", "").path is None  # "" = explicitly not set


def test_none_uses_builtin(checkpoint):
    touch(checkpoint.replace(".safetensors", ".vae.safetensors"))
    res = vae_registry.resolve_vae(checkpoint, "None", None)
    assert res.path is None and res.source == "built-in"


def test_automatic_without_neighbour_uses_builtin(checkpoint):
    assert vae_registry.resolve_vae(checkpoint, "Automatic", None) == vae_registry.VaeResolution(None, "built-in")


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ([".vae.safetensors", ".vae.pt", ".vae.ckpt"], ".vae.safetensors"),
        ([".vae.pt", ".vae.ckpt"], ".vae.pt"),
        ([".vae.ckpt"], ".vae.ckpt"),
    ],
)
def test_automatic_finds_vae_near_checkpoint_in_order(checkpoint, present, expected):
    stem = checkpoint[: -len(".safetensors")]
    for suffix in present:
        touch(stem + suffix)
    res = vae_registry.resolve_vae(checkpoint, "Automatic", None)
    assert res == vae_registry.VaeResolution(stem + expected, "found near checkpoint")


def test_automatic_ignores_vae_for_other_checkpoint(checkpoint):
    folder = os.path.dirname(checkpoint)
    touch(os.path.join(folder, "model2.vae.safetensors"))
    touch(os.path.join(folder, "mod.vae.safetensors"))
    assert vae_registry.resolve_vae(checkpoint, "Automatic", None).path is None


def test_automatic_for_diffusers_folder(dirs):
    _, ckpt = dirs
    folder = ckpt / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    vae_file = touch(ckpt / "pipe.vae.safetensors")
    assert vae_registry.resolve_vae(str(folder), "Automatic", None).path == vae_file


def test_named_choice(checkpoint, tmp_path):
    res = vae_registry.resolve_vae(checkpoint, "sdxl_vae.safetensors", None)
    assert res == vae_registry.VaeResolution(
        str(tmp_path / "models" / "VAE" / "sdxl_vae.safetensors"), "specified in settings"
    )


def test_unknown_name_lists_available(checkpoint):
    with pytest.raises(ValueError, match="missing.pt") as err:
        vae_registry.resolve_vae(checkpoint, "missing.pt", None)
    assert "sdxl_vae.safetensors" in str(err.value)

    vae_registry.vae_dict.clear()
    with pytest.raises(ValueError, match="no VAE files"):
        vae_registry.resolve_vae(checkpoint, "missing.pt", None)


def test_unknown_name_message_is_short(checkpoint):
    vae_registry.vae_dict.update({f"v{i}.safetensors": f"/x/v{i}.safetensors" for i in range(40)})
    with pytest.raises(ValueError) as err:
        vae_registry.resolve_vae(checkpoint, "missing.pt", None)
    assert "41 in all" in str(err.value) and "v30" not in str(err.value)
