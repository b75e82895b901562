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
"""

from __future__ import annotations

import importlib.util
import os
import sys

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
