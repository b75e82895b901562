"""Atomic file writes: readers (and a crash or a full disk) see either the old file or the whole new one.

The data goes to a uniquely named temp file in the target's folder (same file system, so the final
os.replace is a rename), is fsynced, and replaces the target; the folder is fsynced too so the rename itself
survives a power cut. On any failure the temp file is removed and the old file is left as it was.
Used for images, config.json, cache.json and styles.csv.

Only a crash (or kill -9, or a power cut) between creating the temp file and the rename leaves one behind;
`remove_leftover_temp_files` deletes those at start-up, recognising them by the exact name pattern used here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text", "is_temp_name", "remove_leftover_temp_files"]

log = logging.getLogger(__name__)

# A temp file nobody has written to for this long has no live writer (a save takes far less): safe to delete
# even in an output folder that another server, on another data dir, also writes to.
LEFTOVER_AFTER_S = 60.0
_TEMP_BYTES = 8  # random bytes in a temp name: 16 hex digits
_TEMP_NAME = re.compile(rf"\.[0-9a-f]{{{2 * _TEMP_BYTES}}}\.tmp")


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
        tmp = os.path.join(folder, f".{secrets.token_hex(_TEMP_BYTES)}.tmp")  # matches _TEMP_NAME
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


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of this module's temp names (".<16 hex digits>.tmp")."""
    return _TEMP_NAME.fullmatch(name) is not None


def remove_leftover_temp_files(folders: Iterable[tuple[str, int]], before: float) -> list[str]:
    """Delete temp files a crashed writer left in `folders` ((folder, how many sub-folder levels to search too)).

    Only regular files with our temp-name pattern last written before `before` (a time.time() value) go: a
    file another process is writing right now is newer. Symlinks are never followed nor removed, hidden
    sub-folders (.git, ...) are not searched, and folders that cannot be read are skipped. Returns the removed paths.
    """
    removed: list[str] = []
    for folder, depth in folders:
        _remove_in(folder, depth, before, removed)
    if removed:
        log.info("Removed %d temporary file(s) left by an earlier crash", len(removed))
    return removed


def _remove_in(folder: str, depth: int, before: float, removed: list[str]) -> None:
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0 and not entry.name.startswith(".") and not _is_junction(entry):
                    _remove_in(entry.path, depth - 1, before, removed)
            elif is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(entry.path)
                    removed.append(entry.path)
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            continue


def _is_junction(entry: os.DirEntry) -> bool:
    # A Windows junction is a link to a folder that is_dir(follow_symlinks=False) does not tell apart.
    is_junction = getattr(entry, "is_junction", None)  # Python 3.12+
    return bool(is_junction and is_junction())
