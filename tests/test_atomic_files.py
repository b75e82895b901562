"""modules.atomic_files: the one atomic-write implementation behind images, config.json, cache.json and styles.csv."""

from __future__ import annotations

import os

import pytest

from modules.atomic_files import atomic_write, atomic_write_text

posix_only = pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_binary_write_creates_file(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, lambda f: f.write(b"\x00\xffdata"))
    assert target.read_bytes() == b"\x00\xffdata"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_binary_write_replaces_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    atomic_write(str(target), lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_text_write_encodes_without_newline_translation(tmp_path):
    target = tmp_path / "t.csv"
    atomic_write_text(target, "äöü\r\nx\n")
    assert target.read_bytes() == "äöü\r\nx\n".encode()
    atomic_write_text(target, "a", encoding="utf-8-sig")
    assert target.read_bytes() == b"\xef\xbb\xbfa"


def test_crash_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "config.json"
    target.write_bytes(b"old")

    def crash(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # BaseException too, not only Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_failed_rename_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_bytes(b"old")
    seen = []

    def failing_replace(src, dst):
        with open(src, "rb") as f:
            seen.append(f.read())  # the temp file was complete and closed before the rename
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert seen == [b"new"]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_temp_file_is_hidden_and_next_to_target(tmp_path):
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))
        f.write(b"x")

    atomic_write(tmp_path / "out.png", write)
    assert len(seen) == 1 and seen[0].startswith(".") and seen[0].endswith(".tmp")


def test_target_name_at_the_length_limit(tmp_path):
    name = "x" * 251 + ".png"  # the temp name must not grow past NAME_MAX
    atomic_write_text(tmp_path / name, "x")
    assert os.listdir(tmp_path) == [name]


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
    assert os.listdir(tmp_path) == []


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write_text(tmp_path / "x.txt", "x")
    assert len(synced) == (2 if os.name == "posix" else 1)


@posix_only
def test_existing_mode_is_kept(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    atomic_write_text(target, "new")
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.read_text() == "new"


@posix_only
def test_new_file_gets_umask_mode(tmp_path):
    target = tmp_path / "new.txt"
    atomic_write_text(target, "x")
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()


@posix_only
def test_keep_mode_false_uses_umask_even_when_overwriting(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    atomic_write(target, lambda f: f.write(b"new"), keep_mode=False)
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()
