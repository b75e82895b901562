"""A1111's `modules.extensions`: the folders under `extensions-builtin/` and `<data dir>/extensions/`.

Each subfolder is one extension; its `scripts/*.py` are loaded by `modules.scripts`, its `javascript/*.js` and
`style.css` are added to the page (modules/ui/assets.py). The setting `disabled_extensions` turns single
extensions off; `disable_all_extensions` ("none", "extra": built-ins only, "all") and the flags
`--disable-all-extensions` / `--disable-extra-extensions` turn many off, as in A1111. The list is ordered by
folder (built-ins first) and then by each extension's metadata.ini (modules/extension_metadata.py).

Problems (a bad metadata.ini, a missing requirement, a cycle, a failing preload.py or install.py) are reported
by extension name on the console and kept in `errors` for the page; nothing here raises for them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from modules import extension_git, extension_metadata, paths, script_args, shared

log = logging.getLogger(__name__)

# Lines the page shows (the Extensions tab): each problem once, oldest first.
errors: list[str] = []


def report(message: str, exc_info: bool = False, detail: str | None = None) -> None:
    """Log an extension problem (with the current traceback, or `detail`) and keep it for the page, once."""
    log.error("%s%s", message, f"\n{detail.rstrip()}" if detail else "", exc_info=exc_info)
    if message not in errors:
        errors.append(message)


class Extension:
    """One extension folder. Git facts (remote, branch, commit, date) are read on first use, with timeouts."""

    def __init__(self, name: str, path: str, enabled: bool = True, is_builtin: bool = False,
                 metadata: extension_metadata.ExtensionMetadata | None = None) -> None:
        self.name = name
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin
        self.metadata = metadata or extension_metadata.ExtensionMetadata(path, name.lower())
        self.canonical_name = self.metadata.canonical_name
        self.status = ""  # the result of check_updates(): "latest", "3 new commits", "unknown (...)"
        self.can_update = False
        self.have_info_from_repo = False
        self._remote: str | None = None
        self._branch: str | None = None
        self._commit_hash: str | None = None
        self._commit_date: int | None = None

    def __repr__(self) -> str:
        return f"Extension({self.name!r}, enabled={self.enabled}, builtin={self.is_builtin})"

    # --- git facts, lazily ---------------------------------------------------------------------------------------
    def read_info_from_repo(self) -> None:
        if self.have_info_from_repo:
            return
        self.have_info_from_repo = True
        if not extension_git.is_repository(self.path):
            return
        try:
            info = extension_git.read_info(self.path)
        except extension_git.GitError as e:
            log.warning("Cannot read the git state of extension %s: %s", self.name, e)
            return
        self._remote, self._branch = info.remote, info.branch
        self._commit_hash, self._commit_date = info.commit_hash, info.commit_date

    @property
    def remote(self) -> str | None:
        self.read_info_from_repo()
        return self._remote

    @property
    def branch(self) -> str | None:
        self.read_info_from_repo()
        return self._branch

    @property
    def commit_hash(self) -> str | None:
        self.read_info_from_repo()
        return self._commit_hash

    @property
    def commit_date(self) -> int | None:
        self.read_info_from_repo()
        return self._commit_date

    @property
    def version(self) -> str:
        return (self.commit_hash or "")[:8]

    def commit_date_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.commit_date)) if self.commit_date else ""

    def check_updates(self) -> None:
        """git fetch, then compare HEAD with its upstream: sets `can_update` and `status`."""
        self.can_update = False
        if not extension_git.is_repository(self.path):
            self.status = "unknown (not a git repository)"
            return
        try:
            extension_git.fetch(self.path)
            behind = extension_git.commits_behind(self.path)
        except extension_git.GitError as e:
            self.status = f"unknown ({e})"
            return
        self.can_update = behind > 0
        self.status = f"{behind} new commit{'s' if behind != 1 else ''}" if behind else "latest"

    def list_files(self, subdir: str, extension: str) -> list[Any]:
        """`scripts.ScriptFile`s of `<extension>/<subdir>` whose suffix is `extension`, by name (A1111's name)."""
        folder = os.path.join(self.path, subdir)
        if not os.path.isdir(folder):
            return []
        return [script_args.ScriptFile(self.path, name, os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                if os.path.splitext(name)[1].lower() == extension and os.path.isfile(os.path.join(folder, name))]


extensions: list[Extension] = []
# What turned extensions off when the list was made: "none", "extra" (built-ins only) or "all".
disabled_mode: str = "none"


def _settings() -> Mapping[str, Any]:
    return getattr(shared.opts, "data", {}) or {}


def mode(settings: Mapping[str, Any], cmd_opts: Any) -> str:
    """"all", "extra" or "none": the flags win over the setting."""
    if getattr(cmd_opts, "disable_all_extensions", False) or settings.get("disable_all_extensions") == "all":
        return "all"
    if getattr(cmd_opts, "disable_extra_extensions", False) or settings.get("disable_all_extensions") == "extra":
        return "extra"
    return "none"


def scan() -> list[Extension]:
    """Every extension folder, built-ins first, each by name (no settings applied, no metadata order)."""
    found = []
    for folder, builtin in ((paths.extensions_builtin_dir, True), (paths.extensions_dir, False)):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
                continue
            found.append(Extension(name, path, is_builtin=builtin))
    return found


def scan_with_settings(settings: Mapping[str, Any] | None = None) -> list[Extension]:
    """Both folders, each extension enabled unless the settings' `disabled_extensions` lists it."""
    settings = _settings() if settings is None else settings
    listed = settings.get("disabled_extensions")
    disabled = set(listed) if isinstance(listed, list) else set()  # config.json may be hand-edited
    found = scan()
    for ext in found:
        ext.enabled = ext.name not in disabled
    return found


def list_extensions(settings: Mapping[str, Any] | None = None, cmd_opts: Any = None) -> list[Extension]:
    """Scan both folders, mark what the settings disable, order by metadata.ini and check requirements.

    settings: the saved settings (default: `shared.opts`; the launcher passes config.json before opts exist);
    cmd_opts: the flags (default: `shared.cmd_opts`).
    """
    global disabled_mode
    settings = _settings() if settings is None else settings
    cmd_opts = shared.cmd_opts if cmd_opts is None else cmd_opts
    found = scan_with_settings(settings)
    for ext in found:
        if ext.metadata.error:
            report(f'Extension "{ext.name}": cannot read metadata.ini ({ext.metadata.error}); it is ignored')
    nodes = [extension_metadata.Node(
        names={ext.canonical_name, ext.name.lower()}, label=ext.name, requires=ext.metadata.requires,
        before=ext.metadata.get_script_requirements("Before", "Extension"),
        after=ext.metadata.get_script_requirements("After", "Extension"),
    ) for ext in found]
    order, problems = extension_metadata.load_order(nodes)
    for problem in problems:
        report(problem)
    extensions[:] = [found[i] for i in order]
    disabled_mode = mode(settings, cmd_opts)
    _check_requirements()
    return extensions


def _check_requirements() -> None:
    installed: dict[str, bool] = {}
    running = {id(ext) for ext in active()}
    for ext in extensions:
        for name in (ext.canonical_name, ext.name.lower()):
            installed[name] = installed.get(name, False) or id(ext) in running
    for ext in active():
        for requirement, why in extension_metadata.missing_requirements(ext.metadata.requires, installed):
            report(f'Extension "{ext.name}" requires "{requirement}", which is {why}')


def active() -> list[Extension]:
    """The extensions that run, in load order (A1111's name)."""
    if disabled_mode == "all":
        return []
    return [ext for ext in extensions if ext.enabled and (ext.is_builtin or disabled_mode != "extra")]


def __getattr__(name: str) -> str:
    """`extensions.extensions_dir` / `extensions_builtin_dir`, as A1111 extensions read them (they follow
    --data-dir, so they are looked up in `paths` each time)."""
    if name in ("extensions_dir", "extensions_builtin_dir"):
        return getattr(paths, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
