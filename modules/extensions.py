"""A1111's `modules.extensions`: the folders under `extensions-builtin/` and `<data dir>/extensions/`.

Each subfolder is one extension; its `scripts/*.py` are loaded by `modules.scripts`, its `javascript/*.js` and
`style.css` are added to the page. The settings `disabled_extensions` and `disable_all_extensions` and the flags
`--disable-all-extensions` / `--disable-extra-extensions` turn them off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modules import paths, shared


@dataclass
class Extension:
    name: str
    path: str
    is_builtin: bool = False
    enabled: bool = True

    @property
    def canonical_name(self) -> str:
        return self.name.lower()


extensions: list[Extension] = []


def _disabled_by_settings(ext: Extension) -> bool:
    opts_data = getattr(shared.opts, "data", {}) or {}
    cmd_opts = shared.cmd_opts
    everything = getattr(cmd_opts, "disable_all_extensions", False) or opts_data.get("disable_all_extensions") == "all"
    extra = getattr(cmd_opts, "disable_extra_extensions", False) or opts_data.get("disable_all_extensions") == "extra"
    if everything or (extra and not ext.is_builtin):
        return True
    return ext.name in (opts_data.get("disabled_extensions") or [])


def list_extensions() -> list[Extension]:
    """Scan both folders (built-in first, then the user's, each by name)."""
    found: list[Extension] = []
    for folder, builtin in ((paths.extensions_builtin_dir, True), (paths.extensions_dir, False)):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
                continue
            ext = Extension(name, path, is_builtin=builtin)
            ext.enabled = not _disabled_by_settings(ext)
            found.append(ext)
    extensions[:] = found
    return found


def active() -> list[Extension]:
    return [ext for ext in extensions if ext.enabled]
