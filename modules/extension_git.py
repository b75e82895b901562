"""The `git` calls extensions need: read a repository's state, fetch, clone. Each call has a timeout, never asks
for credentials, and never looks above the folder it is given (an extension folder without its own `.git`
inside the web UI's checkout must not report the web UI's commit)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

GIT = os.environ.get("GIT", "git")
INFO_TIMEOUT = 10.0  # reading local state: should take milliseconds
NETWORK_TIMEOUT = 120.0  # fetch and clone


class GitError(RuntimeError):
    """A git command failed or timed out; the message says which and why."""


def _env(folder: str) -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # a private URL fails instead of waiting for a password on the console
    env["GIT_ASKPASS"] = "true"
    env["GIT_CEILING_DIRECTORIES"] = os.path.dirname(os.path.abspath(folder))
    return env


def run(args: list[str], cwd: str, timeout: float = INFO_TIMEOUT) -> str:
    """`git <args>` in cwd; its stdout stripped. GitError with git's own message on failure."""
    command = [GIT, "-c", "protocol.ext.allow=never", *args]
    verb = args[2] if args[:1] == ["-c"] else args[0]  # the command's name in messages, after a `-c key=value`
    try:
        result = subprocess.run(command, cwd=cwd, env=_env(cwd), capture_output=True, text=True, errors="replace",
                                timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {verb} took longer than {timeout:.0f}s") from None
    except OSError as e:
        raise GitError(f"cannot run git: {e.strerror or e}") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise GitError(f"git {verb} failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    return result.stdout.strip()


def is_repository(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, ".git"))


@dataclass
class RepoInfo:
    remote: str | None = None
    branch: str | None = None
    commit_hash: str | None = None
    commit_date: int | None = None  # seconds since the epoch


def read_info(folder: str) -> RepoInfo:
    """Remote URL (the first remote's), branch, HEAD commit and its date. GitError when git cannot tell."""
    info = RepoInfo()
    head = run(["log", "-1", "--format=%H %ct"], folder).split()
    if len(head) == 2:
        info.commit_hash, info.commit_date = head[0], int(head[1])
    branch = run(["rev-parse", "--abbrev-ref", "HEAD"], folder)
    info.branch = None if branch == "HEAD" else branch  # "HEAD": detached
    remotes = run(["remote"], folder).split()
    if remotes:
        name = "origin" if "origin" in remotes else remotes[0]
        info.remote = without_credentials(run(["remote", "get-url", name], folder)) or None
    return info


def without_credentials(url: str) -> str:
    """The URL without a user name or token (`https://user:ghp_...@github.com/a/b` -> `https://github.com/a/b`):
    a private extension's clone URL may carry one, and the Extensions tab and the API show remotes."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if not parts.scheme or "@" not in parts.netloc:
        return url  # a path, or scp-like `git@host:repo` (a user name, no secret)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def fetch(folder: str) -> None:
    run(["fetch", "--quiet"], folder, timeout=NETWORK_TIMEOUT)


def commits_behind(folder: str) -> int:
    """How many commits the branch's upstream has that HEAD has not (after a fetch)."""
    return int(run(["rev-list", "--count", "HEAD..@{upstream}"], folder) or 0)


def clone(url: str, destination: str, branch: str | None = None, timeout: float = NETWORK_TIMEOUT) -> None:
    """`git clone [--branch B] -- url destination` (destination must not exist)."""
    args = ["clone", "--quiet"]
    if branch:
        args += ["--branch", branch]
    parent = os.path.dirname(os.path.abspath(destination))
    run([*args, "--", url, destination], parent, timeout=timeout)
