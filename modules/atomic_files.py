"""Atomic file writes: readers (and a crash or a full disk) see either the old file or the whole new one.

The data goes to a uniquely named temp file in the target's folder (same file system, so the final
os.replace is a rename), is fsynced, and replaces the target; the folder is fsynced too so the rename itself
survives a power cut. On any failure the temp file is removed and the old file is left as it was.
Used for images, config.json, cache.json and styles.csv.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(
    filename: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, keep_mode: bool = True
) -> None:
    """Run `write(fileobj)` on a temp file next to `filename`, then move it into place.

    The folder must exist. With `keep_mode`, an existing file's permission bits carry over to the new one
    (a user who made config.json private keeps it private); otherwise the new file gets the umask's, as open() does.
    """
    filename = os.fspath(filename)
    folder = os.path.dirname(os.path.abspath(filename))
    fd, tmp = _open_temp(folder)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if keep_mode:
            _copy_mode(filename, tmp)
        os.replace(tmp, filename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def atomic_write_text(
    filename: str | os.PathLike[str], text: str, encoding: str = "utf-8", *, keep_mode: bool = True
) -> None:
    """`atomic_write` for text; written as given, without newline translation."""
    data = text.encode(encoding)
    atomic_write(filename, lambda file: file.write(data), keep_mode=keep_mode)


def _open_temp(folder: str) -> tuple[int, str]:
    # O_EXCL with a random name: never clobbers another writer's temp file. 0o666 lets the umask decide,
    # like open() (mkstemp would make the final file private, 0600). The leading dot hides it from watchers;
    # the target's name is left out because a name near the 255-byte limit would not fit.
    while True:
        tmp = os.path.join(folder, f".{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def _copy_mode(existing: str, tmp: str) -> None:
    try:
        os.chmod(tmp, os.stat(existing).st_mode & 0o777)
    except OSError:  # no existing file (or a file system without modes): the umask's bits stay
        pass


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
