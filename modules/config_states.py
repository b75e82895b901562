"""A1111's config states (Extensions > Backup/Restore): a JSON file in `<data dir>/config_states/` named
`<timestamp>_<name>.json` that records the web UI's and every extension's git state and which extensions are
enabled. One is saved on demand and one automatically before Apply and before a restore.

Restoring puts the extensions back only: each listed extension's commit is checked out on its branch (fetched
first when it is not there), its enabled/disabled state is saved, and anything else is reported by name. The web
UI's own checkout is recorded but never restored from the page (see RESTORE_NOTE). A state file is hostile input
when restoring: its size is capped, its shape checked, its names must be installed extension folders and its
commits 7-40 hex digits; an extension it names that is not installed is reported, never installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from modules import extension_git, extension_manager, extensions, paths, shared

FOLDER = "config_states"
MAX_BYTES = 1024 * 1024  # a state of a few hundred extensions is a few hundred kB
HASH = re.compile(r"[0-9a-fA-F]{7,40}")
BRANCH = re.compile(r"[A-Za-z0-9._/-]{1,200}")
RESTORE_NOTE = ("Restores extensions only: each extension goes back to its saved commit and enabled state. The web "
                "UI's own version is shown but not restored here: checking out other web UI code from the page would "
                "run that code at the restart, and an older web UI may not start with the installed libraries; use "
                "git in the web UI's folder for that. Extensions in the state that are not installed are listed, "
                "never installed.")


class StateError(ValueError):
    """A state file that cannot be used, with the reason for the person."""


def folder() -> str:
    return os.path.join(paths.data_path, FOLDER)


def _git_info(path: str) -> dict[str, Any]:
    info = extension_git.RepoInfo()
    if extension_git.is_repository(path):
        try:
            info = extension_git.read_info(path)
        except extension_git.GitError:
            pass
    return {"remote": info.remote, "commit_hash": info.commit_hash, "commit_date": info.commit_date,
            "branch": info.branch}


def current(name: str) -> dict[str, Any]:
    """The state now, in A1111's shape (remotes without credentials: read_info strips them)."""
    exts: dict[str, Any] = {}
    listed = shared.opts.data.get("disabled_extensions")
    disabled = set(listed) if isinstance(listed, list) else set()
    for ext in extensions.scan():
        exts[ext.name] = {"name": ext.name, "path": ext.path, "enabled": ext.name not in disabled,
                          "is_builtin": ext.is_builtin, **_git_info(ext.path),
                          "have_info_from_repo": extension_git.is_repository(ext.path)}
    return {"name": name, "created_at": time.time(), "webui": _git_info(paths.script_path), "extensions": exts}


def _safe_name(name: str) -> str:
    """The name as a file-name part: letters, digits, `-` and `_` only (A1111's CVE-2024-31462 wrote it as-is)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip())[:64].strip("_") or "state"


def save(name: str) -> str:
    """Write the current state under `name`; returns the file name. ExtensionError where managing is refused."""
    extension_manager.check_access()
    name = (name or "").strip() or "Saved"
    state = current(name)
    os.makedirs(folder(), exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(state['created_at']))}_{_safe_name(name)}"
    for n in range(1, 1000):
        filename = f"{stem}.json" if n == 1 else f"{stem}-{n}.json"
        try:
            with open(os.path.join(folder(), filename), "x", encoding="utf-8") as f:
                json.dump(state, f, indent=2)
            return filename
        except FileExistsError:
            continue
    raise OSError(f"too many config states named {stem}")


def remove(filename: str | None) -> None:
    try:
        os.remove(os.path.join(folder(), _checked_filename(filename or "")))
    except (OSError, StateError):
        pass


def _checked_filename(filename: str) -> str:
    if not filename or filename != os.path.basename(filename) or "\\" in filename or not filename.endswith(".json") \
            or filename.startswith("."):
        raise StateError(f"{filename!r} is not a config state file name")
    return filename


def load(filename: str) -> dict[str, Any]:
    """The state in `filename` (a name in the folder), its shape checked. StateError says why it cannot be used."""
    path = os.path.join(folder(), _checked_filename(filename))
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise StateError(f"{filename} is larger than {MAX_BYTES // 1024} kB")
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise StateError(f"cannot read {filename}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise StateError(f"{filename} is not JSON ({e.msg})") from None
    if not isinstance(state, dict) or not isinstance(state.get("extensions"), dict):
        raise StateError(f"{filename} is not a config state (no 'extensions' object)")
    if not isinstance(state.get("name", ""), str) or not isinstance(state.get("created_at", 0), (int, float)):
        raise StateError(f"{filename} is not a config state (bad 'name' or 'created_at')")
    return state


def list_states() -> list[tuple[str, str]]:
    """(label, file name) of each state, newest first; an unreadable file is listed by its name."""
    try:
        names = [n for n in os.listdir(folder()) if n.endswith(".json") and not n.startswith(".")]
    except OSError:
        return []
    found = []
    for filename in names:
        try:
            state = load(filename)
            created = float(state.get("created_at", 0))
            label = f"{state.get('name') or filename} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))})"
        except (StateError, OverflowError, ValueError, OSError):
            created, label = 0.0, f"{filename} (unreadable)"
        found.append((created, filename, label))
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [(label, filename) for _, filename, label in found]


@dataclass
class Entry:
    """One extension of a state, checked: `problem` says why it is skipped."""
    name: str
    enabled: bool | None = None
    commit: str | None = None
    branch: str | None = None
    date: str = ""
    problem: str | None = None


def entries(state: dict[str, Any]) -> list[Entry]:
    """The state's extensions, each checked against the rules (name, enabled, commit, branch)."""
    result = []
    for key, value in state["extensions"].items():
        name = str(key)[:200]
        entry = Entry(name)
        if extension_manager.dirname_refusal(name) or not isinstance(value, dict):
            entry.problem = "not a plain extension folder name" if isinstance(value, dict) else "not an object"
            result.append(entry)
            continue
        enabled, commit, branch, date = (value.get(k) for k in ("enabled", "commit_hash", "branch", "commit_date"))
        if isinstance(enabled, bool):
            entry.enabled = enabled
        if commit is not None and not (isinstance(commit, str) and HASH.fullmatch(commit)):
            entry.problem = "its commit is not 7-40 hex digits"
        elif branch is not None and not (isinstance(branch, str) and BRANCH.fullmatch(branch)
                                         and not branch.startswith("-") and ".." not in branch):
            entry.problem = "its branch is not a plain branch name"
        entry.commit, entry.branch = commit, branch
        if isinstance(date, (int, float)) and 0 < date < 2**40:
            entry.date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(date))
        result.append(entry)
    return result


@dataclass
class Report:
    restored: list[str] = field(default_factory=list)  # lines for the person
    problems: list[str] = field(default_factory=list)
    changed: bool = False  # something a restart loads


def _checkout(path: str, commit: str, branch: str | None) -> str:
    """Put the extension at `path` on `commit` (its branch kept); returns what happened. ExtensionError when its
    own work would be lost (changed tracked files, local commits, detached HEAD) or git fails."""
    run = extension_git.run
    try:
        current_branch = run(["rev-parse", "--abbrev-ref", "HEAD"], path)
        if current_branch == "HEAD":
            raise extension_manager.ExtensionError("not on a branch (detached HEAD); left as it is")
        if run(["-c", "core.fileMode=false", "status", "--porcelain", "--untracked-files=no"], path):
            raise extension_manager.ExtensionError("tracked files changed here; left as it is (commit, stash or "
                                                   "undo the changes, then restore)")
        local = int(run(["rev-list", "--count", "HEAD", "--not", "--remotes"], path) or 0)
        if local:
            raise extension_manager.ExtensionError(f"{local} local commit(s) not on its remote; left as it is")
        if run(["rev-parse", "HEAD"], path).lower().startswith(commit.lower()) and branch in (None, current_branch):
            return "already at"
        try:
            run(["cat-file", "-e", f"{commit}^{{commit}}"], path)
        except extension_git.GitError:
            extension_git.fetch(path)
        if branch and branch != current_branch:
            run(["checkout", "-q", branch, "--"], path)
        run(["reset", "--hard", "--quiet", f"{commit}^{{commit}}"], path, timeout=extension_git.NETWORK_TIMEOUT)
    except extension_git.GitError as e:
        raise extension_manager.ExtensionError(str(e)) from None
    return "restored to"


def restore(filename: str) -> Report:
    """Restore the extensions of the state in `filename` (see the module's text). ExtensionError where managing
    is refused; StateError for a file that is not a state."""
    extension_manager.check_access()
    state = load(filename)
    report = Report()
    installed = {ext.name: ext for ext in extensions.scan()}
    listed = shared.opts.data.get("disabled_extensions")
    disabled = [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
    for entry in entries(state):
        ext = installed.get(entry.name)
        if entry.problem:
            report.problems.append(f"{entry.name}: skipped: {entry.problem}")
            continue
        if ext is None:
            report.problems.append(f"{entry.name}: not installed; not restored (install it yourself if you want it)")
            continue
        if entry.commit and not ext.is_builtin:
            if not extension_git.is_repository(ext.path):
                report.problems.append(f"{entry.name}: not restored: not a git repository")
            else:
                try:
                    what = _checkout(ext.path, entry.commit, entry.branch)
                except extension_manager.ExtensionError as e:
                    report.problems.append(f"{entry.name}: not restored: {e}")
                    continue
                report.changed |= what != "already at"
                report.restored.append(f"{entry.name}: {what} {entry.commit[:8]}")
        if entry.enabled is not None and (entry.name not in disabled) != entry.enabled:
            disabled = [n for n in disabled if n != entry.name] + ([] if entry.enabled else [entry.name])
            report.restored.append(f"{entry.name}: {'enabled' if entry.enabled else 'disabled'}")
    if set(disabled) != set(listed if isinstance(listed, list) else []):
        shared.opts.set("disabled_extensions", sorted(disabled))
        shared.opts.save(shared.config_filename)
        report.changed = True
    return report


def preview_html(filename: str | None) -> str:
    """The state's extensions as a small table: name, enabled, commit, date, installed now."""
    if not filename:
        return ""
    try:
        state = load(filename)
    except StateError as e:
        return f"<div class='error'>{html.escape(str(e))}</div>"
    installed = {ext.name for ext in extensions.scan()}
    webui = state.get("webui") if isinstance(state.get("webui"), dict) else {}
    commit = webui.get("commit_hash")
    head = (f"<p>Web UI at the time: <code>{html.escape(commit[:8])}</code> (not restored)</p>"
            if isinstance(commit, str) else "")
    rows = []
    for entry in entries(state):
        enabled = "" if entry.enabled is None else ("yes" if entry.enabled else "no")
        commit_text = entry.commit[:8] if isinstance(entry.commit, str) and not entry.problem else ""
        now = "yes" if entry.name in installed else "no"
        rows.append(f"<tr><td>{html.escape(entry.name)}</td><td>{enabled}</td><td><code>{html.escape(commit_text)}"
                    f"</code></td><td>{html.escape(entry.date)}</td><td>{now}</td>"
                    f"<td>{html.escape(entry.problem or '')}</td></tr>")
    cells = "".join(f"<th>{h}</th>" for h in ("Extension", "Enabled", "Commit", "Date", "Installed now", "Problem"))
    return (f"{head}<table id='config_state_table'><thead><tr>{cells}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")
