"""modules.atomic_files: the one atomic-write implementation behind images, config.json, cache.json and styles.csv."""

from __future__ import annotations

import os
import time

import pytest

from modules.atomic_files import atomic_write, atomic_write_text, is_temp_name, remove_leftover_temp_files

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


# --- leftovers of a crash, removed at start-up ---------------------------------------------------------------


def leftover(folder, name: str = ".0123456789abcdef.tmp", age: float = 3600.0):
    """A temp file as a crash between write and rename leaves it, last written `age` seconds ago."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as file:
        file.write(b"half a file")
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_our_temp_names_are_recognised_and_nothing_else():
    assert is_temp_name(".0123456789abcdef.tmp")
    for name in ("0123456789abcdef.tmp", ".0123456789abcdef.tmp.png", ".0123456789ABCDEF.tmp", ".0123.tmp",
                 ".0123456789abcdef0.tmp", "styles.csv.tmp", ".x123456789abcdef.tmp"):
        assert not is_temp_name(name), name


def test_real_temp_names_match_the_cleanup_pattern(tmp_path, monkeypatch):
    names = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (names.append(os.path.basename(src)), real_replace(src, dst)))
    atomic_write_text(tmp_path / "config.json", "{}")
    assert len(names) == 1 and is_temp_name(names[0])


def test_leftovers_go_and_everything_else_stays(tmp_path):
    data = tmp_path / "data"
    gone = [leftover(data), leftover(data / "outputs" / "txt2img-images" / "2024-01-01", ".00000000000000ff.tmp")]
    kept = [
        leftover(data, ".fedcba9876543210.tmp", age=1),  # being written right now by another process
        leftover(data, "notes.tmp"), leftover(data, "config.json"), leftover(data, ".0123456789abcdef.tmp.png"),
        leftover(data / "outputs" / "a" / "b" / "c" / "d"),  # deeper than asked
        leftover(data / ".git"),  # hidden folders are not searched
        leftover(data / "models"),  # depth 0 for the data dir itself
    ]
    removed = remove_leftover_temp_files([(str(data), 0), (str(data / "outputs"), 3)], before=time.time() - 60)
    assert sorted(removed) == sorted(gone)
    assert not any(os.path.exists(path) for path in gone)
    assert all(os.path.exists(path) for path in kept)


@posix_only
def test_symlinks_are_neither_followed_nor_removed(tmp_path):
    outside = tmp_path / "outside"
    target = leftover(outside)
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(outside, data / "linked-folder")
    os.symlink(target, data / ".aaaaaaaaaaaaaaaa.tmp")
    assert remove_leftover_temp_files([(str(data), 3)], before=time.time()) == []
    assert os.path.exists(target) and os.path.islink(data / ".aaaaaaaaaaaaaaaa.tmp")


def test_missing_folders_are_skipped(tmp_path):
    assert remove_leftover_temp_files([(str(tmp_path / "nothing"), 2)], before=time.time()) == []


def test_start_up_searches_the_data_dir_outputs_and_output_settings(tmp_path, monkeypatch):
    import webui
    from modules import paths, shared

    data, elsewhere, styles_dir = tmp_path / "data", tmp_path / "my-outputs", tmp_path / "styles"
    gone = [leftover(data), leftover(data / "outputs" / "img2img-images" / "2024-01-01"),
            leftover(elsewhere / "2024-01-01"), leftover(styles_dir)]
    kept = [leftover(tmp_path)]  # the data dir's parent is not ours
    monkeypatch.setattr(paths, "data_path", str(data))
    monkeypatch.setattr(shared.opts, "data", {"outdir_img2img_samples": str(elsewhere), "outdir_grids": ""})
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--styles-file", str(styles_dir / "s*.csv")]))
    webui.remove_leftover_temp_files()
    assert not any(os.path.exists(path) for path in gone)
    assert all(os.path.exists(path) for path in kept)
