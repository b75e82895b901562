"""Extensions' `install.py`: run in a subprocess with this interpreter and the web UI on PYTHONPATH (so it can
`import launch`), as in A1111, but only once per extension version: the version (the git commit, or without
git a hash of install.py and its modification time) and the interpreter are recorded in
`<data dir>/extensions-installed.json`, and a start with the same ones skips it. `--skip-install` skips all.

The output is shown as it comes; a failing install.py is reported by extension name (with its last lines)
and is tried again at the next start.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
from typing import Any

from modules import atomic_files, extension_git, extensions, paths

FILENAME = "install.py"
STATE_FILE = "extensions-installed.json"
TAIL_LINES = 5  # of a failing install.py's output, kept in the report


def state_path() -> str:
    return paths.data_file(STATE_FILE)


def _load_state() -> dict[str, Any]:
    try:
        with open(state_path(), encoding="utf8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(state: dict[str, Any]) -> None:
    try:
        atomic_files.atomic_write_text(state_path(), json.dumps(state, indent=2, sort_keys=True))
    except OSError as e:  # a read-only data dir: install.py simply runs again next time
        extensions.report(f"Cannot record which extensions are installed in {state_path()}: {e.strerror or e}")


def _key(ext: extensions.Extension) -> str:
    return ("builtin/" if ext.is_builtin else "") + ext.name


def version_of(ext: extensions.Extension) -> str:
    """The git commit of the extension, or a hash of its install.py and that file's modification time."""
    if extension_git.is_repository(ext.path):
        try:
            commit = extension_git.run(["rev-parse", "HEAD"], ext.path)
            if commit:
                return f"git:{commit}"
        except extension_git.GitError:
            pass  # a repository without commits, or git missing: fall back to the file
    script = os.path.join(ext.path, FILENAME)
    digest = hashlib.sha256()
    with open(script, "rb") as file:
        digest.update(file.read())
    digest.update(str(os.stat(script).st_mtime_ns).encode())
    return f"sha256:{digest.hexdigest()}"


def _run(script: str, cwd: str) -> tuple[int, list[str]]:
    """Run install.py, echoing its output; (exit code, last lines)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [paths.script_path, env.get("PYTHONPATH")]))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen([sys.executable, script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.strip():
                tail.append(line.rstrip())
    return process.returncode, list(tail)


def run_installer(ext: extensions.Extension, force: bool = False) -> bool | None:
    """Run the extension's install.py unless this version ran it already. None: nothing to run; True: ran or
    had run; False: failed (reported)."""
    script = os.path.join(ext.path, FILENAME)
    if not os.path.isfile(script):
        return None
    try:
        version = version_of(ext)
    except OSError as e:
        extensions.report(f'Cannot read install.py of extension "{ext.name}": {e.strerror or e}')
        return False
    record = {"version": version, "python": sys.executable}
    state = _load_state()
    if not force and state.get(_key(ext)) == record:
        return True
    print(f'Running install.py of extension "{ext.name}"', flush=True)
    try:
        code, tail = _run(script, paths.script_path)
    except OSError as e:
        extensions.report(f'Cannot run install.py of extension "{ext.name}": {e.strerror or e}')
        return False
    if code != 0:
        last = f": {tail[-1]}" if tail else ""
        extensions.report(f'install.py of extension "{ext.name}" failed (exit code {code}){last}')
        return False
    state = _load_state()  # re-read: another extension's record may have been written meanwhile
    state[_key(ext)] = record
    _save_state(state)
    return True


def run_installers(cmd_opts: Any) -> None:
    """install.py of every enabled extension, in load order; nothing with --skip-install."""
    if getattr(cmd_opts, "skip_install", False):
        return
    for ext in extensions.active():
        run_installer(ext)
