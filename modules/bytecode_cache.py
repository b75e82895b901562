"""Bytecode caches for an interpreter told to write none (PYTHONDONTWRITEBYTECODE, common in container images).

Without caches every start compiles the source of each module it imports again; torch, diffusers and transformers
are about 2,000 of them. On a GPU host whose image sets that variable and whose packages came without caches, the
engine's imports took 17-19 s, against 9-10 s with caches, and a restart's first picture came after 23 s instead of
10-13 s (bench/README, "Speed, sixth run"). There the interpreter gets a cache folder of its own under the data
folder (`sys.pycache_prefix`): the installed packages stay as the image left them. Where the packages have caches
(pip writes them as it installs; uv by default and `pip --no-compile` do not), nothing changes: the web UI's own
few hundred modules are not worth a second folder. Processes started from here (compile workers, extensions'
install scripts) find the folder through PYTHONPYCACHEPREFIX. `--no-bytecode-cache` keeps Python's own setting.
The folder holds code that this interpreter runs: it has the trust of the data folder's `extensions` folder.
Caches that no start will read again (their source is gone: an upgraded package, a rebuilt environment; or another
Python version wrote them) are removed in the background after each start, so the folder does not grow with every
upgrade.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

FOLDER = os.path.join("cache", "bytecode")


def installed_without_caches(package: str) -> bool:
    """Whether an installed package has no bytecode cache beside its source (found without importing it)."""
    spec = importlib.util.find_spec(package)
    origin = spec.origin if spec else None
    if not origin or not origin.endswith(".py"):
        return False
    return not os.path.exists(importlib.util.cache_from_source(origin))


# the heavy imports; one installed without caches is enough to be worth the folder (e.g. an image whose torch came
# with caches and whose diffusers was added later with `--no-compile`)
PROBES = ("torch", "diffusers", "transformers")


def use_own_cache(data_dir: str, probes: tuple[str, ...] = PROBES) -> str | None:
    """Point Python's bytecode caches at `<data_dir>/cache/bytecode` when it would write none and one of the
    installed packages in `probes` has none. Returns the folder, or None where caches are written as usual, a cache
    folder was chosen already, the packages have caches, or the folder cannot be made."""
    if not sys.dont_write_bytecode or sys.pycache_prefix:
        return None
    if not any(installed_without_caches(package) for package in probes):
        return None
    folder = os.path.abspath(os.path.join(data_dir, FOLDER))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only data folder: run as Python was told
        return None
    sys.pycache_prefix = folder
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = folder  # children read and write here; their own setting stays as it is
    return folder


def _source_of(cache_file: str, folder: str) -> tuple[str, str] | None:
    """(source path, interpreter tag) of a cache file under `folder`, which mirrors the sources' absolute paths
    (`sys.pycache_prefix`: `<folder>/<source dir>/<name>.<tag>[.opt-N].pyc`); None for anything else."""
    directory, name = os.path.split(os.path.relpath(cache_file, folder))
    parts = name.split(".")
    if len(parts) not in (3, 4) or parts[-1] != "pyc":
        return None
    return os.path.join(os.sep, directory, parts[0] + ".py"), parts[1]


def prune_stale(folder: str, tag: str | None = None) -> None:
    """Remove the cache files in `folder` that no start will read again: their source is gone, or another
    interpreter version wrote them; then the folders left empty."""
    tag = tag or sys.implementation.cache_tag
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            found = _source_of(path, folder)
            if found is None or (found[1] == tag and os.path.exists(found[0])):
                continue
            try:
                os.remove(path)
            except OSError:  # read-only, or removed by another process meanwhile
                pass
        if root != folder and not os.listdir(root):
            try:
                os.rmdir(root)
            except OSError:  # a cache written into it meanwhile
                pass


def prune_in_background(folder: str) -> threading.Thread:
    """prune_stale on a daemon thread: it must not delay the start, whose imports write into the same folder (what
    they write has its source and this interpreter's tag, so it stays)."""
    thread = threading.Thread(target=prune_stale, args=(folder,), name="bytecode-cache-prune", daemon=True)
    thread.start()
    return thread
