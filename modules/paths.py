"""Where things live. A1111 extensions read these module attributes, so they stay plain attributes.

`configure()` is called once by the launcher after the command line is parsed (`--data-dir`, `--models-dir`);
before that, everything points inside the repository. A serving process holds the data dir's lock
(`lock_data_dir`), so two servers never write one config.json, styles.csv and cache.json over each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

script_path: str = str(Path(__file__).resolve().parent.parent)
configs_path: str = os.path.join(script_path, "configs")
data_path: str = script_path
models_path: str = os.path.join(data_path, "models")
extensions_dir: str = os.path.join(data_path, "extensions")
extensions_builtin_dir: str = os.path.join(script_path, "extensions-builtin")
sd_model_dir: str = os.path.join(models_path, "Stable-diffusion")
# The model this project trains and ships (issue 6): used when no other checkpoint is found, whatever --data-dir is.
BUNDLED_CHECKPOINT: str = os.path.join(script_path, "models", "Stable-diffusion", "default-shapes-v1.safetensors")
bundled_checkpoint: str = BUNDLED_CHECKPOINT  # "" turns the fallback off (the test suite does, outside its own tests)
vae_dir: str = os.path.join(models_path, "VAE")


def configure(data_dir: str | None = None, models_dir: str | None = None) -> None:
    """Point every derived path at `data_dir` / `models_dir` (A1111's --data-dir / --models-dir)."""
    global data_path, models_path, extensions_dir, sd_model_dir, vae_dir
    data_path = os.path.abspath(data_dir) if data_dir else script_path
    models_path = os.path.abspath(models_dir) if models_dir else os.path.join(data_path, "models")
    extensions_dir = os.path.join(data_path, "extensions")
    sd_model_dir = os.path.join(models_path, "Stable-diffusion")
    vae_dir = os.path.join(models_path, "VAE")


def data_file(name: str) -> str:
    """A file in the data dir: config.json, cache.json, styles.csv, params.txt ..."""
    return os.path.join(data_path, name)


# --- one server per data dir ---------------------------------------------------------------------------------

LOCK_NAME = ".webui.lock"
# Windows locks byte ranges, and a locked byte cannot be read by others: lock one far past the pid's bytes.
_WINDOWS_LOCK_OFFSET = 1 << 30
_held_locks: dict[str, int] = {}  # data dir -> descriptor of its lock file, open for the life of the process


class DataDirInUseError(RuntimeError):
    """Another running process holds the lock of the data dir."""


def lock_data_dir(folder: str | None = None) -> str | None:
    """Lock `<data dir>/.webui.lock` for the rest of this process's life, and write our pid into it.

    The operating system drops the lock when the process ends however it ends (kill -9 too), so a lock is
    never stale; the file itself stays. Raises DataDirInUseError, naming the folder and the other process,
    when a live process holds it. A data dir where the file cannot be made (read-only) only gets a warning.
    Returns the lock file's path, or None when it could not be made.
    """
    folder = os.path.abspath(folder or data_path)
    lock_path = os.path.join(folder, LOCK_NAME)
    if folder in _held_locks:
        return lock_path
    try:
        os.makedirs(folder, exist_ok=True)
        # O_NOFOLLOW: a symlink planted under that name must not make us create or truncate another file
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(lock_path, flags, 0o644)
    except OSError as e:
        log.warning("Cannot lock the data dir %s (%s): another server started on it would overwrite its "
                    "settings", folder, e.strerror or e)
        return None
    try:
        _lock(fd)
    except OSError:
        other = _read_pid(fd)
        os.close(fd)
        holder = f"process {other}" if other else "another process"
        raise DataDirInUseError(f"The data dir {folder} is already in use by another web UI server ({holder}): "
                                "stop that one first, or give this one its own --data-dir.") from None
    _write_pid(fd)
    _held_locks[folder] = fd
    return lock_path


def unlock_data_dir(folder: str | None = None) -> None:
    """Give the lock back (tests; a server keeps it until it exits)."""
    fd = _held_locks.pop(os.path.abspath(folder or data_path), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases flock and msvcrt locks alike


def _lock(fd: int) -> None:
    """Take an exclusive lock without waiting; OSError when another process holds it."""
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _write_pid(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid only makes the other server's message nicer; the lock is what counts


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # empty while the holder is still writing it


# --- leftover temp files -------------------------------------------------------------------------------------


def temp_file_folders(settings: Mapping[str, Any], files: Iterable[str] = ()) -> list[tuple[str, int]]:
    """Where atomic writes (modules/atomic_files.py) put their temp files, as (folder, sub-folder levels).

    The data dir itself (config.json, styles.csv, cache.json, params.txt), its outputs tree (outputs/<kind>/
    <date>/...), every output folder set in `settings` (the opts' `outdir_*` values), and the folders of
    `files` kept elsewhere (--styles-file).
    """
    folders = [(data_path, 0), (os.path.join(data_path, "outputs"), 3)]
    folders += [(os.path.dirname(os.path.abspath(name)), 0) for name in files if name]
    for key, value in settings.items():
        if key.startswith("outdir_") and isinstance(value, str) and value.strip():
            folders.append((os.path.abspath(value.strip()), 2))
    return folders
