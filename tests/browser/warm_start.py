"""A warm start for the browser tests' servers: one process per test worker imports the heavy libraries a server
imports (torch, diffusers, transformers, gradio, ...: about 8 s of CPU on a 2-core machine, most of a start), then
forks a fresh `launch.py` for each server a test starts. The child runs launch.py's own `__main__` with the test's
command line and environment, so everything of ours (flags, data dir, settings, extensions, the page) is done
anew, as in a cold start; only the third-party imports were done before. The launcher's own tests (start-up,
console output, the data-dir lock) keep starting `python launch.py` cold.

Protocol, one JSON object per line: the test process writes {"argv", "env", "log"}; this process answers
{"pid"} for each, and {"exited", "code"} when a child ends (it reaps them, so they leave no zombie).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _preload() -> None:
    # Third-party only: our modules read the command line and data dir when imported, so they load in the child.
    import cv2  # noqa: F401
    import diffusers  # noqa: F401
    import diffusers.loaders.single_file_utils  # noqa: F401
    import diffusers.models  # noqa: F401
    import fastapi  # noqa: F401
    import gradio  # noqa: F401
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import safetensors.torch  # noqa: F401
    import scipy.stats  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import uvicorn  # noqa: F401


def _child(request: dict) -> None:
    """In the forked child: become `python launch.py ARGS` with the test's environment and log; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(REPO)
        sys.argv = list(request["argv"])
        import runpy

        runpy.run_path(str(REPO / "launch.py"), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        atexit._run_exitfuncs()  # what the interpreter's exit would run (os._exit below skips it)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The starter process: preload, then fork one child per request line on stdin until stdin closes."""
    sys.path[0] = str(REPO)  # as for `python launch.py`: the repository first, not this script's folder
    _preload()
    out = sys.stdout
    lock = threading.RLock()  # the SIGCHLD handler may interrupt a `say` of the main thread

    def say(message: dict) -> None:
        with lock:
            out.write(json.dumps(message) + "\n")
            out.flush()

    def reap(*_: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            say({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    signal.signal(signal.SIGCHLD, reap)
    say({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        say({"pid": pid})


class ForkedProcess:
    """The part of `subprocess.Popen` the tests use, for a server forked by the starter."""

    def __init__(self, starter: WarmStarter, pid: int):
        self.starter = starter
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.starter.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"server {self.pid}", timeout or 0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class WarmStarter:
    """The test process's side: starts the starter once (with the environment every server gets) and asks it
    for servers."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._exits: dict[int, int] = {}
        self._pids: list[int] = []
        self._changed = threading.Condition()
        self._ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            with self._changed:
                if "exited" in message:
                    self._exits[message["exited"]] = message["code"]
                elif "pid" in message:
                    self._pids.append(message["pid"])
                elif message.get("ready"):
                    self._ready = True
                self._changed.notify_all()
        with self._changed:
            self._ready = False
            self._changed.notify_all()

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, argv: list[str], env: dict[str, str], log: Path, timeout: float) -> ForkedProcess:
        assert self.process.stdin is not None
        with self._changed:
            if not self._changed.wait_for(lambda: self._ready or not self.alive(), timeout):
                raise RuntimeError("the warm starter did not get ready")
            if not self._ready:
                raise RuntimeError(f"the warm starter exited with {self.process.poll()}")
            known = len(self._pids)
            self.process.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n")
            self.process.stdin.flush()
            if not self._changed.wait_for(lambda: len(self._pids) > known, timeout):
                raise RuntimeError("the warm starter did not fork a server")
            return ForkedProcess(self, self._pids[known])

    def exit_code(self, pid: int) -> int | None:
        with self._changed:
            if pid in self._exits:
                return self._exits[pid]
        if self.alive():
            return None
        try:  # the starter is gone: nobody reaps this child, ask the system whether it still runs
            os.kill(pid, 0)
        except ProcessLookupError:
            return -signal.SIGKILL
        return None

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    serve()
