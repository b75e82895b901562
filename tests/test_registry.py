"""modules/models/registry.py: scanning checkpoints, titles, hashes and A1111 alias lookups."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from modules import hashes
from modules.models import registry


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own cache.json, empty registry, and no command-line flags from whatever modules.shared holds."""
    monkeypatch.setattr(hashes, "cache_filename", str(tmp_path / "cache.json"))
    monkeypatch.setattr(hashes, "_data", None)
    monkeypatch.setattr(hashes, "_loaded_from", None)
    monkeypatch.setattr(hashes, "hashing_enabled", lambda: True)
    monkeypatch.setattr(registry, "cmd_opt", lambda name: None)
    monkeypatch.setattr(registry, "_roots", [])
    registry.checkpoints_list.clear()
    registry.checkpoint_aliases.clear()
    yield
    registry.checkpoints_list.clear()
    registry.checkpoint_aliases.clear()


@pytest.fixture
def models(tmp_path):
    d = tmp_path / "models" / "Stable-diffusion"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def counting(monkeypatch):
    calls: list[str] = []
    real = hashes.calculate_sha256

    def counted(path: str) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(hashes, "calculate_sha256", counted)
    return calls


def write_checkpoint(path, seed: int = 0, metadata: dict[str, str] | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"model.w": rng.standard_normal((4, 4)).astype(np.float32)}, str(path), metadata=metadata)
    return str(path)


def write_diffusers(folder) -> str:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    write_checkpoint(folder / "unet" / "diffusion_pytorch_model.safetensors")
    return str(folder)


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def names() -> list[str]:
    return [i.name for i in registry.checkpoints_list.values()]


def test_scan_names_and_attributes(models):
    path = write_checkpoint(models / "sub" / "My Model.safetensors")
    registry.list_models(str(models))
    [info] = registry.checkpoints_list.values()
    assert info.filename == os.path.abspath(path)
    assert info.name == os.path.join("sub", "My Model.safetensors")
    assert info.name_for_extra == "My Model"
    assert info.model_name == "sub_My Model"
    assert info.is_safetensors and not info.is_diffusers
    assert info.hash is None and info.sha256 is None and info.shorthash is None
    assert info.title == info.name and info.short_title == "My Model"
    assert registry.checkpoint_tiles() == [info.name]


def test_title_gets_short_sha256_lazily_then_from_cache(models, counting):
    path = write_checkpoint(models / "model.safetensors")
    registry.list_models(str(models))
    assert counting == []  # a scan never hashes
    info = registry.checkpoints_list["model.safetensors"]

    expected = sha(path)
    assert info.calculate_shorthash() == expected[:10]
    assert len(counting) == 1
    assert info.hash == info.shorthash == expected[:10] and info.sha256 == expected
    assert info.title == f"model.safetensors [{expected[:10]}]"
    assert info.short_title == f"model [{expected[:10]}]"
    assert list(registry.checkpoints_list) == [info.title]
    for alias in ("model.safetensors", "model", info.title, expected, expected[:10]):
        assert registry.checkpoint_aliases[alias] is info
    assert registry.checkpoint_alisases is registry.checkpoint_aliases

    # cache.json holds it under A1111's key ...
    cached = json.loads(open(hashes.cache_path()).read())["hashes"]["checkpoint/model.safetensors"]
    assert cached["sha256"] == expected
    # ... so the next scan titles the model without hashing, and so does a second calculate_shorthash
    counting.clear()
    registry.list_models(str(models))
    again = registry.checkpoints_list[f"model.safetensors [{expected[:10]}]"]
    assert again.calculate_shorthash() == expected[:10]
    assert counting == []

    # a touched file is hashed again
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    registry.list_models(str(models))
    assert registry.checkpoint_tiles() == ["model.safetensors"]
    registry.checkpoints_list["model.safetensors"].calculate_shorthash()
    assert len(counting) == 1


def test_calculate_hashes_on_request(models, counting):
    write_checkpoint(models / "a.safetensors")
    registry.list_models(str(models), calculate_hashes=True)
    assert len(counting) == 1
    [title] = registry.checkpoint_tiles()
    assert title.startswith("a.safetensors [")


def test_rehash_keeps_list_order(models):
    for n in ("a", "b", "c"):
        write_checkpoint(models / f"{n}.safetensors", seed=ord(n))
    registry.list_models(str(models))
    registry.checkpoint_aliases["b.safetensors"].calculate_shorthash()
    assert names() == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert registry.checkpoint_tiles()[1].startswith("b.safetensors [")


def test_stale_info_updates_listed_twin(models):
    write_checkpoint(models / "a.safetensors")
    registry.list_models(str(models))
    stale = registry.checkpoints_list["a.safetensors"]
    registry.list_models(str(models))  # e.g. a refresh while the model stays loaded
    stale.calculate_shorthash()
    [listed] = registry.checkpoints_list.values()
    assert listed is not stale and listed.title == stale.title


def test_refresh_picks_up_added_and_removed_files(models):
    a = write_checkpoint(models / "a.safetensors")
    registry.list_models(str(models))
    assert names() == ["a.safetensors"]

    write_checkpoint(models / "b.ckpt")
    os.remove(a)
    registry.list_models(str(models))
    assert names() == ["b.ckpt"]
    assert "a.safetensors" not in registry.checkpoint_aliases
    info = registry.checkpoints_list["b.ckpt"]
    assert not info.is_safetensors and info.metadata == {}


def test_recursion_natural_order_and_skips(models):
    write_checkpoint(models / "model10.safetensors")
    write_checkpoint(models / "Model2.ckpt")
    write_checkpoint(models / "sub" / "deeper" / "x.safetensors")
    write_checkpoint(models / "sub" / "a.safetensors")
    write_checkpoint(models / ".hidden" / "secret.safetensors")
    write_checkpoint(models / "model.vae.safetensors")
    write_checkpoint(models / "other.VAE.ckpt")
    (models / "model.vae.pt").write_bytes(b"x")
    (models / "notes.txt").write_text("hi")
    (models / "._model10.safetensors").write_bytes(b"resource fork")
    registry.list_models(str(models))
    assert names() == [
        "Model2.ckpt",
        "model10.safetensors",
        os.path.join("sub", "a.safetensors"),
        os.path.join("sub", "deeper", "x.safetensors"),
    ]
    assert registry.checkpoint_aliases["sub_deeper_x"].name_for_extra == "x"


def test_diffusers_folder_is_one_model(models):
    folder = write_diffusers(models / "sd15-diffusers")
    registry.list_models(str(models))
    [info] = registry.checkpoints_list.values()
    assert info.is_diffusers and not info.is_safetensors
    assert info.filename == os.path.abspath(folder)
    assert info.name == "sd15-diffusers" and info.model_name == "sd15-diffusers"
    assert info.metadata == {}
    assert len(info.calculate_shorthash()) == 10


def test_ckpt_and_ckpt_dir(tmp_path, models):
    write_checkpoint(models / "z_local.safetensors")
    extra = tmp_path / "drive" / "ckpts"
    write_checkpoint(extra / "y_remote.safetensors")
    write_checkpoint(extra / "sub" / "deep.ckpt")
    single = write_checkpoint(tmp_path / "elsewhere" / "picked.safetensors")

    registry.list_models(str(models), ckpt_dir=str(extra), ckpt_file=single)
    assert names() == [
        "picked.safetensors",  # --ckpt first
        "y_remote.safetensors",  # --ckpt-dir before models/Stable-diffusion, as in A1111
        os.path.join("sub", "deep.ckpt"),
        "z_local.safetensors",
    ]
    assert registry.select_checkpoint(None).name == "picked.safetensors"


def test_ckpt_inside_model_dir_is_listed_once(models):
    path = write_checkpoint(models / "sub" / "m.safetensors")
    write_checkpoint(models / "a.safetensors")
    registry.list_models(str(models), ckpt_file=path)
    assert names() == [os.path.join("sub", "m.safetensors"), "a.safetensors"]


def test_missing_ckpt_is_not_an_error(tmp_path, models):
    write_checkpoint(models / "a.safetensors")
    registry.list_models(str(models), ckpt_file=str(tmp_path / "gone.safetensors"))
    assert names() == ["a.safetensors"]


def test_defaults_come_from_paths_and_cmd_opts(tmp_path, models, monkeypatch):
    write_checkpoint(models / "a.safetensors")
    extra = tmp_path / "extra"
    write_checkpoint(extra / "b.safetensors")
    monkeypatch.setattr(registry.paths, "sd_model_dir", str(models))
    monkeypatch.setattr(registry, "cmd_opt", lambda name: {"ckpt_dir": str(extra)}.get(name))
    registry.list_models()
    assert names() == ["b.safetensors", "a.safetensors"]
    # a bare CheckpointInfo (e.g. from the merger) is named against the same roots
    assert registry.CheckpointInfo(str(models / "a.safetensors")).name == "a.safetensors"


def test_get_closet_checkpoint_match(models):
    path = write_checkpoint(models / "sub" / "anime model.safetensors")
    write_checkpoint(models / "anime model v2.safetensors", seed=1)
    registry.list_models(str(models))
    info = registry.checkpoint_aliases[os.path.join("sub", "anime model.safetensors")]
    short = sha(path)[:10]

    match = registry.get_closet_checkpoint_match
    assert match(info.name) is info
    assert match("sub_anime model") is info  # model_name
    assert match(None) is None and match("") is None
    assert match("nothing like it") is None
    # hash not known yet: a title with a hash still resolves by its name
    assert match(f"{info.name} [{short}]") is info
    assert match("anime model v2.safetensors [0123456789]").name == "anime model v2.safetensors"
    # substring match picks the shortest title
    assert match("anime").name == "anime model v2.safetensors"

    info.calculate_shorthash()
    assert match(short) is info
    assert match(sha(path)) is info
    assert match(info.title) is info
    assert match(f"anime model [{short}]") is info  # short_title


def test_select_checkpoint(models):
    assert registry.select_checkpoint(None) is None
    assert registry.select_checkpoint("anything") is None
    write_checkpoint(models / "a.safetensors")
    b = write_checkpoint(models / "b.safetensors", seed=1)
    registry.list_models(str(models))
    assert registry.select_checkpoint(None).name == "a.safetensors"
    assert registry.select_checkpoint("b").name == "b.safetensors"
    assert registry.select_checkpoint("not there").name == "a.safetensors"
    # a title saved in config.json by an earlier session, before this session knows the hash
    assert registry.select_checkpoint(f"b.safetensors [{sha(b)[:10]}]").name == "b.safetensors"


def test_metadata_from_header_only(models):
    write_checkpoint(
        models / "m.safetensors",
        metadata={"modelspec.title": "Test", "ss_tag_frequency": json.dumps({"a": {"b": 1}}), "bad": "{nope"},
    )
    registry.list_models(str(models))
    info = registry.checkpoints_list["m.safetensors"]
    assert info.metadata == {"modelspec.title": "Test", "ss_tag_frequency": {"a": {"b": 1}}, "bad": "{nope"}


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # empty file
        b"\x05\x00",  # truncated length
        struct.pack("<Q", 10**12) + b"{}",  # absurd header length: refused without reading it
        struct.pack("<Q", 50) + b'{"__metadata__": {',  # truncated header
        struct.pack("<Q", 4) + b"abcd",  # not JSON
        struct.pack("<Q", 2) + b"[]",  # JSON, but not an object
    ],
)
def test_broken_header_gives_empty_metadata(models, raw):
    (models / "broken.safetensors").write_bytes(raw)
    registry.list_models(str(models))
    info = registry.checkpoints_list["broken.safetensors"]
    assert info.metadata == {}
    with pytest.raises(ValueError):
        registry.read_metadata_from_safetensors(info.filename)


def test_natural_sort_key():
    assert sorted(["a10", "A2", "a1"], key=registry.natural_sort_key) == ["a1", "A2", "a10"]


# --- symlinks: files are listed, folders are not walked ---------------------------------------------------


def test_symlink_to_the_filesystem_root_is_not_walked(models):
    """A1111 followed folder links: one pointing at / made every scan crawl the whole disk."""
    import time

    write_checkpoint(models / "mine.safetensors")
    os.symlink("/", models / "everything")
    started = time.monotonic()
    registry.list_models(str(models))
    assert time.monotonic() - started < 5
    assert names() == ["mine.safetensors"]


def test_symlinked_folder_of_models_elsewhere_is_not_walked(tmp_path, models):
    write_checkpoint(tmp_path / "elsewhere" / "far.safetensors")
    os.symlink(tmp_path / "elsewhere", models / "linked")
    os.symlink(models, models / "loop")  # a link back up would loop forever if followed
    registry.list_models(str(models))
    assert names() == []
    registry.list_models(str(models), ckpt_dir=str(tmp_path / "elsewhere"))  # such a folder belongs in --ckpt-dir
    assert names() == ["far.safetensors"]


def test_symlinked_files_and_diffusers_folders_are_listed(tmp_path, models):
    target = write_checkpoint(tmp_path / "store" / "real.safetensors")
    os.symlink(target, models / "alias.safetensors")
    os.symlink(write_diffusers(tmp_path / "store" / "pipeline"), models / "pipeline")
    os.symlink(tmp_path / "store" / "missing.safetensors", models / "broken.safetensors")
    os.symlink("/dev/null", models / "device.ckpt")  # not a regular file
    registry.list_models(str(models))
    assert names() == ["alias.safetensors", "pipeline"]
    assert registry.checkpoints_list["pipeline"].is_diffusers
