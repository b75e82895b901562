"""modules/hashes.py: sha256 cache in cache.json, addnet hash, old 8-char model hash."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import pytest
from safetensors.numpy import save_file

from modules import hashes


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(hashes, "cache_filename", str(tmp_path / "data" / "cache.json"))
    monkeypatch.setattr(hashes, "_data", None)
    monkeypatch.setattr(hashes, "_loaded_from", None)
    monkeypatch.setattr(hashes, "hashing_enabled", lambda: True)
    return tmp_path / "data" / "cache.json"


@pytest.fixture
def counting(monkeypatch):
    calls: list[str] = []
    real = hashes.calculate_sha256

    def counted(path: str) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(hashes, "calculate_sha256", counted)
    return calls


def write_model(path, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((8, 4)).astype(np.float32)}, str(path), metadata={"k": "v"})
    return str(path)


def bump_mtime(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_calculate_sha256_matches_hashlib_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(hashes, "BLOCK_SIZE", 7)  # many small blocks
    data = os.urandom(1000)
    (tmp_path / "f.bin").write_bytes(data)
    assert hashes.calculate_sha256(str(tmp_path / "f.bin")) == hashlib.sha256(data).hexdigest()


def test_sha256_is_computed_once_then_served_from_cache(tmp_path, isolated_cache, counting):
    path = write_model(tmp_path / "m.safetensors")
    expected = hashlib.sha256(open(path, "rb").read()).hexdigest()

    assert hashes.sha256_from_cache(path, "checkpoint/m.safetensors") is None
    assert hashes.sha256(path, "checkpoint/m.safetensors") == expected
    assert len(counting) == 1

    on_disk = json.loads(isolated_cache.read_text())
    entry = on_disk["hashes"]["checkpoint/m.safetensors"]
    assert entry == {"mtime": os.path.getmtime(path), "sha256": expected}

    counting.clear()
    assert hashes.sha256(path, "checkpoint/m.safetensors") == expected
    assert hashes.sha256_from_cache(path, "checkpoint/m.safetensors") == expected
    assert counting == []


def test_cache_survives_a_restart(tmp_path, counting):
    path = write_model(tmp_path / "m.safetensors")
    value = hashes.sha256(path, "checkpoint/m")
    hashes._data = None  # a new process: only cache.json remains
    counting.clear()
    assert hashes.sha256(path, "checkpoint/m") == value
    assert counting == []


def test_mtime_change_recomputes(tmp_path, counting):
    path = write_model(tmp_path / "m.safetensors")
    hashes.sha256(path, "checkpoint/m")
    bump_mtime(path)
    assert hashes.sha256_from_cache(path, "checkpoint/m") is None
    counting.clear()
    hashes.sha256(path, "checkpoint/m")
    assert len(counting) == 1


def test_missing_file_is_not_served_from_cache(tmp_path):
    path = write_model(tmp_path / "m.safetensors")
    hashes.sha256(path, "checkpoint/m")
    os.remove(path)
    assert hashes.sha256_from_cache(path, "checkpoint/m") is None


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "[1, 2, 3]", '{"hashes": "oops"}', '{"hashes": {"checkpoint/m": "oops"}}'],
)
def test_corrupt_cache_is_treated_as_empty(tmp_path, isolated_cache, content):
    isolated_cache.parent.mkdir(parents=True)
    isolated_cache.write_text(content)
    path = write_model(tmp_path / "m.safetensors")
    assert hashes.sha256_from_cache(path, "checkpoint/m") is None
    value = hashes.sha256(path, "checkpoint/m")
    assert json.loads(isolated_cache.read_text())["hashes"]["checkpoint/m"]["sha256"] == value


def test_a1111_cache_file_is_read_and_other_sections_kept(tmp_path, isolated_cache, counting):
    path = write_model(tmp_path / "m.safetensors")
    isolated_cache.parent.mkdir(parents=True)
    isolated_cache.write_text(
        json.dumps(
            {
                "hashes": {"checkpoint/m": {"mtime": os.path.getmtime(path), "sha256": "ab" * 32}},
                "safetensors-metadata": {"checkpoint/m": {"mtime": 1.0, "value": {"x": 1}}},
            }
        )
    )
    assert hashes.sha256(path, "checkpoint/m") == "ab" * 32
    assert counting == []
    hashes.sha256(path, "lora/m", use_addnet_hash=True)
    on_disk = json.loads(isolated_cache.read_text())
    assert set(on_disk) == {"hashes", "safetensors-metadata", "hashes-addnet"}


def test_cache_write_is_atomic(tmp_path, isolated_cache, monkeypatch):
    path = write_model(tmp_path / "m.safetensors")
    hashes.sha256(path, "checkpoint/m")
    before = isolated_cache.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(hashes.os, "replace", failing_replace)
    other = write_model(tmp_path / "n.safetensors", seed=1)
    # A failed write is logged, not raised: the hash is still returned.
    assert hashes.sha256(other, "checkpoint/n") == hashes.calculate_sha256(other)
    assert isolated_cache.read_bytes() == before  # the old file is intact
    assert os.listdir(isolated_cache.parent) == ["cache.json"]  # no temp file left behind

    with pytest.raises(OSError):
        hashes.dump_cache()
    assert os.listdir(isolated_cache.parent) == ["cache.json"]


def test_concurrent_hashing_keeps_every_entry(tmp_path, isolated_cache):
    files = [write_model(tmp_path / f"m{i}.safetensors", seed=i) for i in range(12)]
    threads = [threading.Thread(target=hashes.sha256, args=(f, f"checkpoint/{i}")) for i, f in enumerate(files)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on_disk = json.loads(isolated_cache.read_text())["hashes"]
    assert set(on_disk) == {f"checkpoint/{i}" for i in range(12)}
    for i, f in enumerate(files):
        assert on_disk[f"checkpoint/{i}"]["sha256"] == hashes.calculate_sha256(f)


def test_cache_location_follows_paths_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(hashes, "cache_filename", None)
    monkeypatch.setattr(hashes.paths, "data_path", str(tmp_path / "elsewhere"))
    assert hashes.cache_path() == str(tmp_path / "elsewhere" / "cache.json")
    path = write_model(tmp_path / "m.safetensors")
    hashes.sha256(path, "checkpoint/m")
    assert (tmp_path / "elsewhere" / "cache.json").is_file()


def test_no_hashing_returns_cached_value_only(tmp_path, monkeypatch, counting):
    path = write_model(tmp_path / "m.safetensors")
    monkeypatch.setattr(hashes, "hashing_enabled", lambda: False)
    assert hashes.sha256(path, "checkpoint/m") is None
    assert counting == []
    monkeypatch.setattr(hashes, "hashing_enabled", lambda: True)
    value = hashes.sha256(path, "checkpoint/m")
    monkeypatch.setattr(hashes, "hashing_enabled", lambda: False)
    assert hashes.sha256(path, "checkpoint/m") == value


def test_addnet_hash_is_sha256_of_tensor_data(tmp_path):
    path = write_model(tmp_path / "lora.safetensors")
    raw = open(path, "rb").read()
    header_len = int.from_bytes(raw[:8], "little")
    expected = hashlib.sha256(raw[8 + header_len :]).hexdigest()
    assert hashes.addnet_hash_safetensors(path) == expected
    with open(path, "rb") as f:  # A1111 passes an open file
        assert hashes.addnet_hash_safetensors(f) == expected
    assert expected != hashlib.sha256(raw).hexdigest()

    # Metadata lives in the header, so it does not change the addnet hash.
    other = tmp_path / "same_tensors.safetensors"
    save_file(
        {"w": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)},
        str(other),
        metadata={"x": "different"},
    )
    assert hashes.addnet_hash_safetensors(str(other)) == expected


def test_addnet_hash_cached_in_its_own_section(tmp_path, isolated_cache):
    path = write_model(tmp_path / "lora.safetensors")
    addnet = hashes.sha256(path, "lora/x", use_addnet_hash=True)
    full = hashes.sha256(path, "lora/x")
    assert addnet == hashes.addnet_hash_safetensors(path) != full
    on_disk = json.loads(isolated_cache.read_text())
    assert on_disk["hashes-addnet"]["lora/x"]["sha256"] == addnet
    assert on_disk["hashes"]["lora/x"]["sha256"] == full


def test_model_hash_is_a1111_old_hash(tmp_path):
    data = os.urandom(0x100000 + 0x10000 + 100)
    (tmp_path / "big.ckpt").write_bytes(data)
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert hashes.model_hash(str(tmp_path / "big.ckpt")) == expected
    assert hashes.model_hash(str(tmp_path / "missing.ckpt")) == "NOFILE"


def test_folder_hash_is_stable_and_tracks_content(tmp_path):
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "w.safetensors").write_bytes(b"abc")
    first = hashes.sha256(str(folder), "checkpoint/pipe")
    assert first == hashes.calculate_sha256(str(folder))
    assert hashes.sha256_from_cache(str(folder), "checkpoint/pipe") == first

    (folder / "unet" / "w.safetensors").write_bytes(b"abd")
    bump_mtime(str(folder / "unet" / "w.safetensors"))
    assert hashes.sha256_from_cache(str(folder), "checkpoint/pipe") is None
    assert hashes.sha256(str(folder), "checkpoint/pipe") != first
