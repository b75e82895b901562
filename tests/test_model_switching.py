"""Checkpoints found in the A1111 folders load through `modules.sd_models`, switch, cache and fail safely."""

from __future__ import annotations

import gc
import os
import weakref

import psutil
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_family, write_tiny_checkpoint

from modules import sd_models, shared
from modules.models import loader, vae_registry
from modules.models.checkpoint_files import ModelFileError, ModelFileMissingError
from modules.models.ldm_export import vae_to_ldm


@pytest.fixture
def data_dir(tmp_path, isolated_data_dir):
    """A fresh --data-dir with the A1111 model folders, and settings back to defaults afterwards."""
    with isolated_data_dir(tmp_path) as root:
        yield root


def _ckpt(data_dir, name, family="sd1", seed=0, **kw):
    path = data_dir / "models" / "Stable-diffusion" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_checkpoint(path, family, seed=seed, **kw)
    return path


def _unet_output(model):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 77, model.unet.config.cross_attention_dim)
    with torch.no_grad():
        return model.unet(x, torch.tensor([10]), encoder_hidden_states=ctx).sample


def test_folder_scan_titles_and_first_load(data_dir):
    _ckpt(data_dir, "sub/alpha.safetensors")
    sd_models.list_models()
    assert [info.name for info in sd_models.checkpoints_list.values()] == [os.path.join("sub", "alpha.safetensors")]
    model = sd_models.load_model()
    assert shared.sd_model is model
    info = model.sd_checkpoint_info
    assert len(info.shorthash) == 10 and info.title == f"{os.path.join('sub', 'alpha.safetensors')} [{info.shorthash}]"
    assert shared.opts.sd_model_checkpoint == info.title


def test_no_checkpoint_gives_a_clear_message(data_dir):
    sd_models.list_models()
    with pytest.raises(sd_models.NoCheckpointError, match="No checkpoints found. Put a .safetensors checkpoint in"):
        sd_models.load_model()


def test_switching_replaces_the_model_and_a_bad_file_keeps_the_previous_one(data_dir):
    _ckpt(data_dir, "a.safetensors", seed=1)
    _ckpt(data_dir, "b.safetensors", "sd2", seed=2, prediction="epsilon")
    bad = data_dir / "models" / "Stable-diffusion" / "c-broken.safetensors"
    bad.write_bytes(b"\x08\0\0\0\0\0\0\0{}garbage")
    sd_models.list_models()
    first = sd_models.load_model(sd_models.get_closet_checkpoint_match("a.safetensors"))
    reference = _unet_output(first)
    second = sd_models.load_model(sd_models.get_closet_checkpoint_match("b.safetensors"))
    assert second.is_sd2 and shared.sd_model is second
    assert sd_models.model_data.loaded_sd_models == [second.sd_model_checkpoint]  # limit 1: the first one is gone

    back = sd_models.load_model(sd_models.get_closet_checkpoint_match("a.safetensors"))
    with pytest.raises(ModelFileError, match="c-broken.safetensors: "):
        sd_models.load_model(sd_models.get_closet_checkpoint_match("c-broken"))
    assert shared.sd_model is back  # still current, and still computes the same
    torch.testing.assert_close(_unet_output(sd_models.model_data.sd_model), reference)


def test_cache_keeps_recent_models_so_switching_back_does_not_reload(data_dir, monkeypatch):
    shared.opts.sd_checkpoints_limit = 2
    _ckpt(data_dir, "a.safetensors", seed=1)
    _ckpt(data_dir, "b.safetensors", seed=2)
    _ckpt(data_dir, "c.safetensors", seed=3)
    sd_models.list_models()
    loads = []
    real = loader.load_model
    monkeypatch.setattr("modules.models.manager.load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    a = sd_models.load_model(sd_models.get_closet_checkpoint_match("a.safetensors"))
    sd_models.load_model(sd_models.get_closet_checkpoint_match("b.safetensors"))
    again = sd_models.load_model(sd_models.get_closet_checkpoint_match("a.safetensors"))
    assert again is a and len(loads) == 2
    sd_models.load_model(sd_models.get_closet_checkpoint_match("c.safetensors"))  # evicts b, the least recent
    assert [os.path.basename(f) for f in sd_models.model_data.loaded_sd_models] == ["a.safetensors", "c.safetensors"]


def test_memory_is_returned_when_switching(data_dir):
    """Resident memory after 10 switches between two checkpoints does not keep growing (A1111 leaks here)."""
    _ckpt(data_dir, "a.safetensors", seed=1)
    _ckpt(data_dir, "b.safetensors", seed=2)
    sd_models.list_models()
    infos = [sd_models.get_closet_checkpoint_match(n) for n in ("a.safetensors", "b.safetensors")]
    process = psutil.Process()
    rss = []
    for i in range(10):
        model = sd_models.load_model(infos[i % 2])
        size = model.parameter_bytes()
        del model
        gc.collect()
        rss.append(process.memory_info().rss)
    growth = rss[-1] - rss[1]
    # Leaking even one model copy per two switches would add 4 models' worth; allow under one.
    assert growth < size, f"RSS grew by {growth / 2**20:.1f} MiB over 8 switches (one model is {size / 2**20:.1f} MiB)"


def test_libraries_are_set_aside_from_the_collector_and_a_switched_out_model_is_still_freed(data_dir):
    """modules.initialize.freeze_imported_objects, which the server runs before its first model (and conftest at
    the start of each test process): the libraries' objects are frozen; a model loaded later is not, so it is
    collected once switched out."""
    assert gc.get_freeze_count() > 100_000
    _ckpt(data_dir, "a.safetensors", seed=1)
    _ckpt(data_dir, "b.safetensors", seed=2)
    sd_models.list_models()
    infos = [sd_models.get_closet_checkpoint_match(n) for n in ("a.safetensors", "b.safetensors")]
    first = weakref.ref(sd_models.load_model(infos[0]).unet)
    sd_models.load_model(infos[1])
    gc.collect()
    assert first() is None


def _write_vae(path, seed):
    vae = build_family("sd1", seed=seed).vae
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae.state_dict()).items()}
    save_file(state, str(path))
    return vae


def _decode(model):
    latent = torch.ones(1, 4, 4, 4) * 0.3
    with torch.no_grad():
        return model.vae.decode(latent).sample


def test_vae_choice_automatic_none_and_named(data_dir):
    ckpt = _ckpt(data_dir, "m.safetensors", seed=1)
    sd_models.list_models()
    own = _decode(sd_models.load_model())
    near = _write_vae(ckpt.with_name("m.vae.safetensors"), seed=7)
    named = _write_vae(data_dir / "models" / "VAE" / "other.safetensors", seed=8)
    sd_models.list_models()
    vae_registry.refresh_vae_list()
    shared.opts.sd_vae = "Automatic"
    sd_models.reload_vae_weights()
    torch.testing.assert_close(_decode(shared.sd_model), _decode_with(near))
    shared.opts.sd_vae = "other.safetensors"
    sd_models.reload_vae_weights()
    torch.testing.assert_close(_decode(shared.sd_model), _decode_with(named))
    shared.opts.sd_vae = "None"
    sd_models.reload_vae_weights()
    torch.testing.assert_close(_decode(shared.sd_model), own)


def _decode_with(vae):
    latent = torch.ones(1, 4, 4, 4) * 0.3
    with torch.no_grad():
        return vae.decode(latent).sample


def test_vae_from_commandline_and_a_vae_that_does_not_fit(data_dir):
    _ckpt(data_dir, "m.safetensors", seed=1)
    sd_models.list_models()
    model = sd_models.load_model()
    own = _decode(model)
    wrong = data_dir / "models" / "VAE" / "xl.safetensors"
    xl_vae = build_family("sdxl").vae
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(xl_vae.state_dict()).items()}
    state["encoder.conv_in.weight"] = torch.zeros(16, 3, 3, 3)  # a different width
    save_file(state, str(wrong))
    with pytest.raises(ModelFileError, match="xl.safetensors: VAE does not fit this model"):
        sd_models.reload_vae_weights(vae_file=str(wrong))
    torch.testing.assert_close(_decode(shared.sd_model), own)  # untouched

    flagged = _write_vae(data_dir / "flag.safetensors", seed=9)
    shared.cmd_opts.vae_path = str(data_dir / "flag.safetensors")
    sd_models.reload_vae_weights()
    torch.testing.assert_close(_decode(shared.sd_model), _decode_with(flagged))


def test_failure_after_the_header_check_brings_the_previous_model_back(data_dir, monkeypatch):
    """E.g. out of memory while building: the previous model is reloaded and stays current."""
    _ckpt(data_dir, "a.safetensors", seed=1)
    _ckpt(data_dir, "b.safetensors", seed=2)
    sd_models.list_models()
    first = sd_models.load_model(sd_models.get_closet_checkpoint_match("a.safetensors"))
    reference = _unet_output(first)
    del first
    real = loader.load_model

    def out_of_memory(path, *args, **kwargs):
        if path.endswith("b.safetensors"):
            raise MemoryError("simulated: out of memory while building the UNet")
        return real(path, *args, **kwargs)

    monkeypatch.setattr("modules.models.manager.load_model", out_of_memory)
    with pytest.raises(MemoryError):
        sd_models.load_model(sd_models.get_closet_checkpoint_match("b.safetensors"))
    current = sd_models.model_data.sd_model
    assert shared.sd_model is current
    assert os.path.basename(current.sd_model_checkpoint) == "a.safetensors"
    torch.testing.assert_close(_unet_output(current), reference)


def test_a_checkpoint_deleted_after_listing_is_named_and_the_model_stays(data_dir):
    _ckpt(data_dir, "a.safetensors", seed=1)
    gone = _ckpt(data_dir, "sub/gone.safetensors", seed=2)
    sd_models.list_models()
    first = sd_models.load_model(sd_models.get_closet_checkpoint_match("a.safetensors"))
    info = sd_models.get_closet_checkpoint_match("gone")
    gone.unlink()
    shared.opts.data["sd_model_checkpoint"] = info.title  # as override_settings does before it loads
    with pytest.raises(ModelFileMissingError) as error:
        sd_models.load_model(info)
    assert str(error.value).startswith(f"{os.path.join('sub', 'gone.safetensors')}: the file is no longer on disk")
    assert str(data_dir) not in str(error.value)
    assert shared.sd_model is first
    assert shared.opts.sd_model_checkpoint == first.sd_checkpoint_info.title  # the setting names the model in use
    with pytest.raises(ModelFileMissingError):
        sd_models.manager.load_auxiliary(info)  # the refiner's way in
    assert shared.sd_model is first
