"""What the Extensions tab does, without the UI: install from a git URL, save which extensions are disabled,
check for updates and update, and refuse all of that on a server other machines can reach (A1111's check_access:
--listen, --share, --ngrok, a --server-name that is not loopback; --enable-insecure-extension-access allows it).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from modules import extension_git, extension_install, extensions, paths, shared

DISABLE_ALL_CHOICES = ("none", "extra", "all")


class ExtensionError(RuntimeError):
    """A refused or failed action, with a message for the person."""


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_refusal(cmd_opts: Any) -> str | None:
    """Why extension management is off on this server, or None when it is allowed."""
    if getattr(cmd_opts, "enable_insecure_extension_access", False):
        return None
    public = [flag for flag, on in (("--listen", getattr(cmd_opts, "listen", False)),
                                    ("--share", getattr(cmd_opts, "share", False)),
                                    ("--ngrok", bool(getattr(cmd_opts, "ngrok", None)))) if on]
    server_name = getattr(cmd_opts, "server_name", None)
    if server_name and not _is_loopback(server_name):
        public.append("--server-name")
    if not public:
        return None
    return (f"Managing extensions is turned off: other machines can reach this server ({', '.join(public)}) and "
            "an extension runs any code it likes. Start the server with --enable-insecure-extension-access to "
            "allow it.")


def check_access() -> None:
    refusal = access_refusal(shared.cmd_opts)
    if refusal:
        raise ExtensionError(refusal)


def dirname_from_url(url: str) -> str:
    """The folder name A1111 picks: the URL's last part without `.git`."""
    last = re.split(r"[/\\:]", url.strip().rstrip("/\\"))[-1]
    return last.removesuffix(".git")


def dirname_refusal(name: str) -> str | None:
    """Why `name` cannot be a folder directly under extensions/ (separators, `.`/`..`, hidden), or None."""
    if not name:
        return "No folder name: give one, or a URL that ends in a name"
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or name.startswith("."):
        return f"Folder name {name!r} is not allowed: use a plain name without '/', '\\' or a leading '.'"
    return None


def check_dirname(name: str) -> None:
    """A folder name directly under extensions/: no separators, no `.`/`..`, not hidden, not taken."""
    refusal = dirname_refusal(name)
    if refusal:
        raise ExtensionError(refusal)
    if os.path.lexists(os.path.join(paths.extensions_dir, name)):
        raise ExtensionError(f"extensions/{name} already exists: remove it first, or choose another folder name")


def normalize_git_url(url: str | None) -> str:
    return (url or "").strip().rstrip("/").removesuffix(".git").lower()


def install_from_url(url: str, branch: str = "", dirname: str = "") -> Iterator[str]:
    """Clone `url` into extensions/<dirname> and run its install.py; yields progress lines, raises ExtensionError."""
    check_access()
    url, branch, dirname = (url or "").strip(), (branch or "").strip(), (dirname or "").strip()
    if not url:
        raise ExtensionError("No URL given")
    if url.startswith("-") or branch.startswith("-"):
        raise ExtensionError("A URL or branch may not start with '-'")
    dirname = dirname or dirname_from_url(url)
    check_dirname(dirname)
    same = [e.name for e in extensions.scan() if e.remote and normalize_git_url(e.remote) == normalize_git_url(url)]
    if same:
        raise ExtensionError(f"This URL is already installed, as extensions/{same[0]}")
    target = os.path.join(paths.extensions_dir, dirname)
    os.makedirs(paths.extensions_dir, exist_ok=True)
    # Cloned beside its final place (same disk), under a hidden name the extension list skips; moved when whole.
    staging = tempfile.mkdtemp(prefix=".installing-", dir=paths.extensions_dir)
    try:
        yield f"Cloning {url}" + (f" (branch {branch})" if branch else "") + f" into extensions/{dirname}…"
        try:
            extension_git.clone(url, os.path.join(staging, "repo"), branch or None)
        except extension_git.GitError as e:
            raise ExtensionError(f"Could not clone {url}: {e}") from None
        if os.path.lexists(target):
            raise ExtensionError(f"extensions/{dirname} appeared while cloning: nothing was installed")
        os.rename(os.path.join(staging, "repo"), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ext = extensions.Extension(dirname, target)
    if os.path.isfile(os.path.join(target, extension_install.FILENAME)):
        if getattr(shared.cmd_opts, "skip_install", False):
            yield "Not running its install.py (--skip-install)."
        else:
            yield "Running its install.py (its output is on the server's console)…"
            if extension_install.run_installer(ext) is False:
                yield (f"Installed into extensions/{dirname}, but its install.py failed (see the server's console); "
                       "the extension may not work. Restart the server to load it.")
                return
    yield f"Installed into extensions/{dirname}. Restart the server to load it."


CHANGED_MESSAGE = "Saved. Restart the server (stop it and run launch.py again) for the change to take effect."


def save_disabled(enabled: Iterable[str], disable_all: str) -> str:
    """Save `disabled_extensions` (every installed extension not in `enabled`, plus names already disabled that
    are not installed now) and `disable_all_extensions`; returns what changed, for the person."""
    check_access()
    if disable_all not in DISABLE_ALL_CHOICES:
        raise ExtensionError(f"'Disable all extensions' must be one of {', '.join(DISABLE_ALL_CHOICES)}")
    installed = [e.name for e in extensions.scan()]
    wanted = set(enabled)
    kept = [n for n in (shared.opts.data.get("disabled_extensions") or []) if n not in installed]
    disabled = sorted({n for n in installed if n not in wanted} | set(kept))
    changed = [key for key, value in (("disabled_extensions", disabled), ("disable_all_extensions", disable_all))
               if shared.opts.set(key, value)]
    if not changed:
        return "Nothing changed."
    shared.opts.save(shared.config_filename)
    return CHANGED_MESSAGE


def check_updates(exts: Iterable[extensions.Extension]) -> Iterator[extensions.Extension]:
    """git fetch and compare, one extension after the other; yields each once its `status` is set."""
    check_access()
    for ext in exts:
        ext.check_updates()
        yield ext


@dataclass(frozen=True)
class UpdateResult:
    name: str
    status: str  # "updated" (a restart loads the new version), "latest" or "failed"
    message: str  # for the person: "<name>: updated to 1a2b3c4d", "<name>: not updated: <why>"


def update(ext: extensions.Extension) -> tuple[str, str]:
    """A1111's fetch_and_reset_hard (git fetch, then `reset --hard` to the upstream of the current branch), except
    that a person's own work is kept: a detached HEAD, changed tracked files or local commits leave the extension as
    it is (ExtensionError says which). Permission-only changes do not count (core.fileMode off): they are the WSL2
    case A1111 resets for. Returns the short commit before and after."""
    path = ext.path
    if not extension_git.is_repository(path):
        raise ExtensionError("not a git repository")
    try:
        before = extension_git.run(["rev-parse", "HEAD"], path)
        if extension_git.run(["rev-parse", "--abbrev-ref", "HEAD"], path) == "HEAD":
            raise ExtensionError("not on a branch (detached HEAD); left as it is")
        changed = extension_git.run(["-c", "core.fileMode=false", "status", "--porcelain", "--untracked-files=no"],
                                    path).splitlines()
        if changed:
            raise ExtensionError(f"{len(changed)} tracked file(s) changed here; left as it is (commit, stash or undo "
                                 "the changes, then update)")
        extension_git.fetch(path)
        ahead = int(extension_git.run(["rev-list", "--count", "@{upstream}..HEAD"], path) or 0)
        if ahead:
            raise ExtensionError(f"{ahead} local commit(s) not on its remote branch; left as it is")
        extension_git.run(["reset", "--hard", "--quiet", "@{upstream}"], path, timeout=extension_git.NETWORK_TIMEOUT)
        after = extension_git.run(["rev-parse", "HEAD"], path)
    except extension_git.GitError as e:
        raise ExtensionError(str(e)) from None
    ext.have_info_from_repo = False  # branch, commit and date are read again
    return before[:8], after[:8]


def update_result(ext: extensions.Extension) -> UpdateResult:
    try:
        before, after = update(ext)
    except ExtensionError as e:
        return UpdateResult(ext.name, "failed", f"{ext.name}: not updated: {e}")
    if before == after:
        return UpdateResult(ext.name, "latest", f"{ext.name}: already up to date ({after})")
    return UpdateResult(ext.name, "updated", f"{ext.name}: updated to {after}")


def update_extensions(names: Iterable[str]) -> list[UpdateResult]:
    """Update the installed (not built-in) extensions named, one after the other; a failure does not stop the rest."""
    check_access()
    wanted = set(names)
    return [update_result(ext) for ext in extensions.scan() if ext.name in wanted and not ext.is_builtin]


def update_all_at_start(exts: Iterable[extensions.Extension]) -> list[UpdateResult]:
    """--update-all-extensions: every given (enabled) extension that is a git clone, before the installers run, so
    an updated extension's install.py runs at this start (its version changed). Failures are reported by name and
    start-up goes on."""
    results = []
    for ext in exts:
        if ext.is_builtin or not extension_git.is_repository(ext.path):
            continue
        result = update_result(ext)
        if result.status == "failed":
            extensions.report(f"Could not update extension {result.message}")
        else:
            print(f"Extension {result.message}", flush=True)
        results.append(result)
    return results
