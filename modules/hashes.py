"""sha256 hashes of model files, cached in `cache.json` the way A1111 does it.

Layout (shared with A1111, so a user's existing cache.json keeps working):
`{"hashes": {"checkpoint/<name>": {"mtime": <float>, "sha256": "<hex>"}}, "hashes-addnet": {...}}`.
An entry is trusted only while the file's mtime is unchanged. Extensions call `sha256` / `sha256_from_cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

from modules import atomic_files, paths

log = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024

# Where the cache lives; None means `paths.data_file("cache.json")`, looked up at call time so that
# `paths.configure()` (run after import) and tests can move it.
cache_filename: str | None = None

_lock = threading.RLock()
_data: dict[str, dict] | None = None
_loaded_from: tuple[str, tuple[int, int] | None] | None = None  # (path, stat key) of what _data mirrors


def cache_path() -> str:
    return cache_filename or paths.data_file("cache.json")


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _read_cache_file(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        # A cache is disposable: a broken one must never stop start-up.
        log.warning("ignoring unreadable hash cache %s: %s", path, e)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring hash cache %s: top level is not an object", path)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _load_locked() -> dict[str, dict]:
    """The in-memory cache, re-read when the file moved or another process replaced it."""
    global _data, _loaded_from
    path = cache_path()
    key = (path, _stat_key(path))
    if _data is None or _loaded_from != key:
        _data = _read_cache_file(path)
        _loaded_from = key
    return _data


def cache(subsection: str) -> dict[str, dict]:
    """The live dict for one subsection ("hashes", "hashes-addnet", ...); call `dump_cache()` after changing it."""
    with _lock:
        data = _load_locked()
        section = data.get(subsection)
        if not isinstance(section, dict):
            section = data[subsection] = {}
        return section


def dump_cache() -> None:
    """Write the cache atomically (readers never see half a file)."""
    with _lock:
        data = _load_locked()
        path = cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_files.atomic_write_text(path, json.dumps(data, indent=4, ensure_ascii=False))
        global _loaded_from
        _loaded_from = (path, _stat_key(path))


def _iter_folder_files(folder: str) -> Iterator[tuple[str, str]]:
    """(relative posix path, absolute path) of every non-hidden file under a folder, in a stable order."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            yield os.path.relpath(full, folder).replace(os.sep, "/"), full


def _mtime(path: str) -> float:
    """A file's mtime; for a folder model (diffusers), the newest mtime of anything inside it."""
    if not os.path.isdir(path):
        return os.path.getmtime(path)
    newest = os.path.getmtime(path)
    for _, full in _iter_folder_files(path):
        newest = max(newest, os.path.getmtime(full))
    return newest


def _hash_stream(file: BinaryIO, h: hashlib._Hash) -> None:
    for chunk in iter(lambda: file.read(BLOCK_SIZE), b""):
        h.update(chunk)


def calculate_sha256(path: str) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks.

    A1111 has no folder models; for a diffusers folder we hash a manifest of (relative path, file sha256)
    pairs so that the folder still gets a stable id for infotext and the cache.
    """
    if os.path.isdir(path):
        h = hashlib.sha256()
        for rel, full in _iter_folder_files(path):
            h.update(rel.encode("utf8") + b"\0" + bytes.fromhex(calculate_sha256(full)))
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as file:
        _hash_stream(file, h)
    return h.hexdigest()


def addnet_hash_safetensors(source: str | os.PathLike | BinaryIO) -> str:
    """kohya's "addnet" hash: sha256 of the tensor data only (everything after the 8-byte length + header).

    Takes a path or, like A1111, an open binary file.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return addnet_hash_safetensors(file)
    h = hashlib.sha256()
    source.seek(0)
    header_len = int.from_bytes(source.read(8), "little")
    source.seek(8 + header_len)
    _hash_stream(source, h)
    return h.hexdigest()


def model_hash(path: str) -> str:
    """A1111's old 8-character hash: sha256 of 64 KiB at offset 1 MiB. Kept for `sd_models.model_hash` users."""
    try:
        with open(path, "rb") as file:
            file.seek(0x100000)
            return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


def _subsection(use_addnet_hash: bool) -> str:
    return "hashes-addnet" if use_addnet_hash else "hashes"


def sha256_from_cache(path: str, title: str, use_addnet_hash: bool = False) -> str | None:
    """The cached hash, or None when there is none or the file changed (mtime differs) since it was stored."""
    with _lock:
        entry = cache(_subsection(use_addnet_hash)).get(title)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    try:
        on_disk = _mtime(path)
    except OSError:
        return None
    if on_disk != entry.get("mtime"):
        return None
    return entry["sha256"]


def hashing_enabled() -> bool:
    """False under `--no-hashing`. Read lazily: modules.shared may not exist or be importable yet."""
    try:
        from modules import shared

        return not getattr(shared.cmd_opts, "no_hashing", False)
    except Exception:
        return True


def sha256(path: str, title: str, use_addnet_hash: bool = False) -> str | None:
    """The file's sha256 (kohya addnet hash with use_addnet_hash), from cache or computed and stored.

    None only under `--no-hashing` when nothing is cached, as in A1111.
    """
    cached = sha256_from_cache(path, title, use_addnet_hash)
    if cached is not None:
        return cached
    if not hashing_enabled():
        return None

    # The mtime is taken before hashing, so a file written to meanwhile is hashed again next time.
    mtime = _mtime(path)
    log.info("calculating sha256 for %s", path)
    value = addnet_hash_safetensors(path) if use_addnet_hash else calculate_sha256(path)

    with _lock:
        cache(_subsection(use_addnet_hash))[title] = {"mtime": mtime, "sha256": value}
        try:
            dump_cache()
        except OSError as e:
            log.warning("could not write hash cache %s: %s", cache_path(), e)
    return value
