"""ControlNet / T2I-Adapter / IP-Adapter model files: listing, titles and hashes, finding, classification,
loading every layout into diffusers' classes (checked against the reference models the fixtures wrote),
refusals by name, the cache and its LRU."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from controlnet_files import (
    build_controlnet,
    write_controlnet,
    write_evil_pickle,
    write_ip_adapter,
    write_t2i_adapter,
)
from safetensors.torch import load_file, save_file
from tiny_models import PROJECTION_DIM, build_unet

from modules import cmd_args, shared
from modules.controlnet import files, loading
from modules.controlnet.files import ControlModelFile
from modules.controlnet.loading import ControlModelError
from modules.models import checkpoint_files, memory

CPU = torch.device("cpu")


@dataclass
class Env:
    data: Path
    cn_dir: Path
    setting_dir: Path
    flag_dir: Path
    marker: Path
    refs: dict[str, torch.nn.Module] = field(default_factory=dict)


def legacy_hash(path: Path) -> str:
    """A1111's model_hash, written out: sha256 of 64 KiB at offset 1 MiB, first 8 hex."""
    data = path.read_bytes()[0x100000:0x110000]
    return hashlib.sha256(data).hexdigest()[:8]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    data = root / "data"
    cn = data / "models" / "ControlNet"
    e = Env(data, cn, root / "setting", root / "flag", root / "marker")
    refs = e.refs
    refs["cn_sd1_orig"] = write_controlnet(cn / "cn_sd1_orig.safetensors", "sd1", "original", seed=1)
    refs["cn_sd1_noprefix"] = write_controlnet(cn / "sub" / "cn_sd1_noprefix.pth", "sd1", "original", seed=2,
                                               prefix="")
    refs["cn_sd1_folder"] = write_controlnet(cn / "cn_sd1_folder", "sd1", "diffusers", seed=3)
    refs["cn_sd2_orig"] = write_controlnet(cn / "cn_sd2_orig.safetensors", "sd2", "original", seed=4)
    refs["cn_sdxl_orig"] = write_controlnet(cn / "cn_sdxl_orig.safetensors", "sdxl", "original", seed=5)
    refs["cn_sdxl_diffusers"] = write_controlnet(cn / "cn_sdxl_diffusers.safetensors", "sdxl", "diffusers", seed=6)
    refs["t2i_sd1_orig"] = write_t2i_adapter(cn / "t2i_sd1_orig.pth", "sd1", "original", seed=7)
    refs["t2i_sdxl_diffusers"] = write_t2i_adapter(cn / "t2i_sdxl_diffusers.safetensors", "sdxl", "diffusers", seed=8)
    refs["t2i_light_orig"] = write_t2i_adapter(cn / "t2i_light_orig.safetensors", "sd1", "original", kind="light")
    write_ip_adapter(cn / "ip_sd15.bin", "sd1")
    write_ip_adapter(cn / "ip_sdxl.safetensors", "sdxl")
    refs["ext_model"] = write_controlnet(data / "extensions" / "sd-webui-controlnet" / "models" / "ext_model.safetensors",
                                         "sd1", "diffusers", seed=9)
    refs["setting_model"] = write_controlnet(e.setting_dir / "setting_model.safetensors", "sd1", "original", seed=10)
    refs["flag_model"] = write_controlnet(e.flag_dir / "flag_model.safetensors", "sd1", "original", seed=11)
    # not listed: corrupt, hostile, foreign, unsupported, "None", hidden, wrong extension, a symlinked folder
    (cn / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    write_evil_pickle(cn / "evil.pth", e.marker)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(cn / "a_lora.safetensors"))
    save_file({"lora_controlnet": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)},
              str(cn / "control_lora.safetensors"))
    shutil.copy(cn / "cn_sd1_orig.safetensors", cn / "None.safetensors")
    shutil.copy(cn / "cn_sd1_orig.safetensors", cn / ".hidden.safetensors")
    (cn / "notes.txt").write_text("not a model")
    outside = root / "outside"
    write_controlnet(outside / "outside_model.safetensors", "sd1", "original", seed=12)
    os.symlink(outside, cn / "linked_folder")
    os.symlink(outside / "outside_model.safetensors", cn / "linked_file.safetensors")

    saved_opts, saved_cmd = dict(shared.opts.data), shared.cmd_opts
    shared.set_cmd_opts(cmd_args.parse_args(["--data-dir", str(data), "--controlnet-dir", str(e.flag_dir)],
                                            environ={}))
    shared.opts.data["control_net_models_path"] = str(e.setting_dir)
    files.refresh()
    try:
        yield e
    finally:
        loading.unload_all()
        shared.opts.data.clear()
        shared.opts.data.update(saved_opts)
        shared.set_cmd_opts(saved_cmd)
        files.refresh()


@pytest.fixture
def fresh_cache():
    loading.unload_all()
    yield
    loading.unload_all()


def get(name: str) -> ControlModelFile:
    found = files.find(name)
    assert found is not None, f"{name} is not listed"
    return found


# --- listing ---------------------------------------------------------------------------------------------------


EXPECTED = {  # name -> (kind, family, layout)
    "cn_sd1_folder": ("controlnet", "sd1", "diffusers"),
    "cn_sd1_noprefix": ("controlnet", "sd1", "original"),
    "cn_sd1_orig": ("controlnet", "sd1", "original"),
    "cn_sd2_orig": ("controlnet", "sd2", "original"),
    "cn_sdxl_diffusers": ("controlnet", "sdxl", "diffusers"),
    "cn_sdxl_orig": ("controlnet", "sdxl", "original"),
    "ext_model": ("controlnet", "sd1", "diffusers"),
    "flag_model": ("controlnet", "sd1", "original"),
    "ip_sd15": ("ip_adapter", "sd1", "original"),
    "ip_sdxl": ("ip_adapter", "sdxl", "original"),
    "linked_file": ("controlnet", "sd1", "original"),
    "setting_model": ("controlnet", "sd1", "original"),
    "t2i_light_orig": ("t2i_adapter", "sd1", "original"),
    "t2i_sd1_orig": ("t2i_adapter", "sd1", "original"),
    "t2i_sdxl_diffusers": ("t2i_adapter", "sdxl", "diffusers"),
}


def test_lists_every_folder_and_classifies_each_file(env):
    listed = files.list_files()
    assert [f.name for f in listed] == sorted(EXPECTED)  # natural order, "outside_model" not walked into
    assert {f.name: (f.kind, f.family, f.layout) for f in listed} == EXPECTED
    folder = get("cn_sd1_folder")
    assert folder.path == str(env.cn_dir / "cn_sd1_folder") and folder.is_folder
    assert folder.weights_path.endswith("diffusion_pytorch_model.safetensors")


def test_files_left_out_are_named_with_the_reason_and_logged_once(env, caplog):
    refused = files.refused()
    assert set(refused) == {"corrupt.safetensors", "evil.pth", "a_lora.safetensors", "control_lora.safetensors"}
    assert "not a valid .safetensors file" in refused["corrupt.safetensors"]
    assert "refused" in refused["evil.pth"] and "could run code" in refused["evil.pth"]
    assert "LoRA" in refused["a_lora.safetensors"]
    assert "Control-LoRA" in refused["control_lora.safetensors"]
    assert not env.marker.exists(), "the hostile pickle ran code"
    with caplog.at_level(logging.WARNING, logger="modules.controlnet.files"):
        files.refresh()
    assert not caplog.records, "an unchanged bad file is logged only once"
    (env.cn_dir / "corrupt2.safetensors").write_bytes(b"\x00")
    try:
        with caplog.at_level(logging.WARNING, logger="modules.controlnet.files"):
            files.refresh()
            files.refresh()
        assert [r.getMessage() for r in caplog.records] == [
            "ControlNet models: corrupt2.safetensors is not listed: not a valid .safetensors file: only 1 bytes "
            "long (empty or truncated)"]
    finally:
        (env.cn_dir / "corrupt2.safetensors").unlink()
        files.refresh()


def test_titles_carry_the_extensions_hash(env):
    f = get("cn_sd1_orig")
    assert f.title == f"cn_sd1_orig [{legacy_hash(env.cn_dir / 'cn_sd1_orig.safetensors')}]"
    folder = get("cn_sd1_folder")
    assert folder.title == f"cn_sd1_folder [{legacy_hash(Path(folder.weights_path))}]"
    assert f.title in files.titles("controlnet") and f.title not in files.titles("t2i_adapter")


def test_full_sha256_is_cached_in_the_data_dirs_cache(env):
    f = get("cn_sd2_orig")
    expected = hashlib.sha256((env.cn_dir / "cn_sd2_orig.safetensors").read_bytes()).hexdigest()
    assert f.sha256 == expected
    assert expected in (env.data / "cache.json").read_text()


def test_find_by_title_name_hash_and_none(env):
    f = get("cn_sd2_orig")
    assert files.find(f.title).path == f.path
    assert files.find("CN_SD2_ORIG").path == f.path
    assert files.find(f"cn_sd2_orig [{f.sha256[:10]}]").path == f.path
    assert files.find("None") is None and files.find("") is None and files.find(None) is None
    assert files.find("no_such_model") is None
    assert files.find("sdxl").name == "ip_sdxl"  # the extension's fallback: the shortest name containing it
    assert files.find("SD2").name == "cn_sd2_orig"


def test_a_renamed_file_is_found_by_the_hash_of_an_old_title(env):
    old = get("setting_model")
    old_title = old.title
    renamed = env.setting_dir / "renamed_model.safetensors"
    os.rename(old.path, renamed)
    try:
        found = files.find(old_title)
        assert found is not None and found.name == "renamed_model" and found.path == str(renamed)
    finally:
        os.rename(renamed, old.path)
        files.refresh()


def test_a_finished_download_refreshes_the_list(env):
    from modules import download_files

    target = env.cn_dir / "downloaded.safetensors"
    shutil.copy(env.cn_dir / "cn_sd1_orig.safetensors", target)
    try:
        assert "downloaded" not in [f.name for f in files.list_files()]
        download_files.rescan("controlnet")
        assert "downloaded" in [f.name for f in files.list_files()]
    finally:
        target.unlink()
        files.refresh()


# --- loading ---------------------------------------------------------------------------------------------------


def run_controlnet(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    config = model.config
    kwargs = {}
    if config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, PROJECTION_DIM, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        down, mid = model(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]),
                          encoder_hidden_states=torch.randn(1, 5, config.cross_attention_dim, generator=g),
                          controlnet_cond=torch.rand(1, 3, 64, 64, generator=g), return_dict=False, **kwargs)
    return [*down, mid]


def assert_same_weights(model, reference):
    a, b = model.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("name", ["cn_sd1_orig", "cn_sd1_noprefix", "cn_sd1_folder", "cn_sd2_orig",
                                  "cn_sdxl_orig", "cn_sdxl_diffusers", "ext_model"])
def test_controlnets_load_equal_to_the_reference(env, fresh_cache, name):
    loaded = loading.load(get(name), CPU, torch.float32)
    reference = env.refs[name]
    assert loaded.kind == "controlnet" and not loaded.model.training
    assert type(loaded.model).__name__ == "ControlNetModel"
    assert_same_weights(loaded.model, reference)
    for ours, theirs in zip(run_controlnet(loaded.model), run_controlnet(reference), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_controlnet_fits_the_tiny_unet_of_its_family(env, fresh_cache, family):
    loaded = loading.load(get(f"cn_{family}_orig"), CPU, torch.float32)
    unet = build_unet(family)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    added = ({"text_embeds": torch.randn(1, PROJECTION_DIM, generator=g),
              "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])} if family == "sdxl" else None)
    with torch.no_grad():
        down, mid = loaded.model(x, torch.tensor([500]), encoder_hidden_states=context,
                                 controlnet_cond=torch.rand(1, 3, 64, 64, generator=g), added_cond_kwargs=added,
                                 return_dict=False)
        plain = unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        steered = unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added,
                       down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert steered.shape == plain.shape and not torch.allclose(steered, plain)


@pytest.mark.parametrize("name,downscale,total", [("t2i_sd1_orig", 8, 16), ("t2i_sdxl_diffusers", 16, 32),
                                                  ("t2i_light_orig", 8, 32)])
def test_t2i_adapters_load_equal_to_the_reference(env, fresh_cache, name, downscale, total):
    loaded = loading.load(get(name), CPU, torch.float32)
    reference = env.refs[name]
    assert loaded.kind == "t2i_adapter" and type(loaded.model).__name__ == "T2IAdapter"
    assert (loaded.downscale_factor, loaded.total_downscale_factor) == (downscale, total)
    assert loaded.model.config.adapter_type == reference.config.adapter_type
    assert_same_weights(loaded.model, reference)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for ours, theirs in zip(loaded.model(image), reference(image), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_adapter_fits_the_tiny_unet_of_its_family(env, fresh_cache, family):
    loaded = loading.load(get("t2i_sd1_orig" if family == "sd1" else "t2i_sdxl_diffusers"), CPU, torch.float32)
    unet = build_unet(family)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)  # a 64x64 image's latent (the tiny VAE scales by 8)
    context = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    added = ({"text_embeds": torch.randn(1, PROJECTION_DIM, generator=g),
              "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])} if family == "sdxl" else None)
    with torch.no_grad():
        features = loaded.model(torch.rand(1, 3, 64, 64, generator=g))
        assert len(features) == len(unet.config.down_block_types)
        plain = unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        steered = unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added,
                       down_intrablock_additional_residuals=[f.clone() for f in features]).sample
    assert not torch.allclose(steered, plain)


def test_loads_in_the_asked_dtype(env, fresh_cache):
    loaded = loading.load(get("cn_sd1_orig"), CPU, torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    again = loading.load(get("cn_sd1_orig"), CPU, torch.float32)  # converted in place, not read again
    assert again.model is loaded.model and {p.dtype for p in again.model.parameters()} == {torch.float32}


def test_pickles_go_through_the_restricted_loader(env, fresh_cache, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loading.load(get("cn_sd1_noprefix"), CPU, torch.float32)
    assert calls == [True]


def test_a_hostile_pickle_is_refused_by_name(env, fresh_cache):
    evil = ControlModelFile("evil", str(env.cn_dir / "evil.pth"), "controlnet", "sd1")
    with pytest.raises(ControlModelError, match=r"^ControlNet evil: refused: .*could run code"):
        loading.load(evil, CPU, torch.float32)
    assert not env.marker.exists()


def test_a_corrupt_file_is_refused_by_name(env, fresh_cache):
    corrupt = ControlModelFile("corrupt", str(env.cn_dir / "corrupt.safetensors"), "controlnet", "sd1")
    with pytest.raises(ControlModelError, match=r"^ControlNet corrupt: not a valid \.safetensors file"):
        loading.load(corrupt, CPU, torch.float32)


def test_wrong_shapes_are_refused_by_name(env, fresh_cache, tmp_path):
    tensors = load_file(str(env.cn_dir / "cn_sd1_orig.safetensors"))
    key = "control_model.zero_convs.1.0.weight"
    tensors[key] = torch.zeros(7, *tensors[key].shape[1:])
    save_file(tensors, str(tmp_path / "bent.safetensors"))
    bent = ControlModelFile("bent", str(tmp_path / "bent.safetensors"), "controlnet", "sd1")
    with pytest.raises(ControlModelError, match=r"^ControlNet bent: does not fit a ControlNet: .*wrong shape "
                                                r"\(controlnet_down_blocks\.1\.weight: \(7,"):
        loading.load(bent, CPU, torch.float32)
    del tensors["control_model.middle_block_out.0.bias"]
    save_file(tensors, str(tmp_path / "short.safetensors"))
    short = ControlModelFile("short", str(tmp_path / "short.safetensors"), "controlnet", "sd1")
    with pytest.raises(ControlModelError, match=r"^ControlNet short: .*missing \(controlnet_mid_block\.bias\)"):
        loading.load(short, CPU, torch.float32)


def test_a_diffusers_folder_config_sets_only_what_shapes_cannot_tell(env, fresh_cache, tmp_path):
    import json

    folder = tmp_path / "pooled"
    reference = write_controlnet(folder, "sd1", "diffusers", seed=3)
    config = json.loads((folder / "config.json").read_text())
    config.update(global_pool_conditions=True, block_out_channels=[100000, 3], down_block_types=["X"] * 1000)
    (folder / "config.json").write_text(json.dumps(config))
    file = ControlModelFile("pooled", str(folder), "controlnet", "sd1", "diffusers",
                            str(folder / "diffusion_pytorch_model.safetensors"))
    loaded = loading.load(file, CPU, torch.float32)
    assert loaded.model.config.global_pool_conditions is True
    assert list(loaded.model.config.block_out_channels) == [32, 64]
    assert_same_weights(loaded.model, reference)
    assert all(r.shape[-2:] == (1, 1) for r in run_controlnet(loaded.model))  # pooled over the image


def test_ip_adapters_are_listed_but_not_loaded(env, fresh_cache):
    with pytest.raises(ControlModelError, match=r"^IP-Adapter ip_sd15: .*cannot be loaded yet"):
        loading.load(get("ip_sd15"), CPU, torch.float32)


# --- family checks ---------------------------------------------------------------------------------------------


def test_a_file_for_another_family_is_refused_by_name(env, fresh_cache):
    with pytest.raises(ControlModelError, match=r"^ControlNet cn_sdxl_orig: made for SDXL, the loaded model is SD1$"):
        loading.check_family(get("cn_sdxl_orig"), "sd1")
    loaded = loading.load(get("cn_sd1_orig"), CPU, torch.float32)
    with pytest.raises(ControlModelError, match=r"^ControlNet cn_sd1_orig: made for SD1, the loaded model is SDXL$"):
        loading.check_family(loaded, "sdxl")
    with pytest.raises(ControlModelError, match=r"^T2I-Adapter t2i_sdxl_diffusers: made for SDXL, the loaded model "
                                                r"is SD2$"):
        loading.check_family(get("t2i_sdxl_diffusers"), "sd2")
    loading.check_family(loaded, "sd1")
    loading.check_family(get("cn_sd2_orig"), "SD2")


# --- the cache -------------------------------------------------------------------------------------------------


@pytest.fixture
def count_reads(monkeypatch):
    reads: list[str] = []
    real = checkpoint_files.read_state_dict

    def counting(path, *args, **kwargs):
        reads.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_files, "read_state_dict", counting)
    return reads


def test_a_cached_model_is_not_read_again(env, fresh_cache, count_reads):
    first = loading.load(get("cn_sd2_orig"), CPU, torch.float32)
    second = loading.load(get("cn_sd2_orig"), CPU, torch.float32)
    assert second is first and count_reads == ["cn_sd2_orig.safetensors"]
    assert [h.group for h in memory.owner.handles(group="controlnet")] == ["controlnet"]
    path = env.cn_dir / "cn_sd2_orig.safetensors"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: read afresh
    third = loading.load(get("cn_sd2_orig"), CPU, torch.float32)
    assert third is not first and count_reads == ["cn_sd2_orig.safetensors"] * 2


def test_the_cache_keeps_the_most_recently_used_up_to_the_setting(env, fresh_cache, count_reads, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "control_net_model_cache_size", 2)
    a, b, c = get("cn_sd1_orig"), get("t2i_sd1_orig"), get("cn_sd1_folder")
    loading.load(a, CPU, torch.float32)
    loading.load(b, CPU, torch.float32)
    loading.load(a, CPU, torch.float32)  # a is now the more recent of the two
    loading.load(c, CPU, torch.float32)  # b goes
    assert [m.name for m in loading.loaded_models()] == ["cn_sd1_orig", "cn_sd1_folder"]
    assert len(memory.owner.handles(group="controlnet")) == 2
    loading.load(a, CPU, torch.float32)
    loading.load(b, CPU, torch.float32)
    assert count_reads == ["cn_sd1_orig.safetensors", "t2i_sd1_orig.pth", "diffusion_pytorch_model.safetensors",
                           "t2i_sd1_orig.pth"]


def test_memory_pressure_unloads_through_the_owner(env, fresh_cache, count_reads):
    loading.load(get("cn_sd1_orig"), CPU, torch.float32)
    (handle,) = memory.owner.handles(group="controlnet")
    memory.owner.unload(handle.name)  # what make_room / an out-of-memory retry does
    assert loading.loaded_models() == []
    loading.load(get("cn_sd1_orig"), CPU, torch.float32)
    assert count_reads == ["cn_sd1_orig.safetensors"] * 2


def test_reference_models_differ_by_seed():
    """The fixtures' models are distinct, so an equality above cannot pass by accident."""
    a, b = build_controlnet("sd1", 1), build_controlnet("sd1", 2)
    assert not torch.equal(a.controlnet_down_blocks[0].weight, b.controlnet_down_blocks[0].weight)
