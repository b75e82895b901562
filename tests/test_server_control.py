"""A1111's server control routes, as a notebook script calls them: `--api-server-stop` adds POST
/sdapi/v1/server-restart (the same process starts again), /server-stop (a clean exit, status 0) and /server-kill
(exit now); without the flag they do not exist. Real servers started by launch.py."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_api_support import client, serving

from modules.api.server import create_app

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launched:
    """launch.py in a child process; its output lines are read on a thread so a test can wait for one."""

    def __init__(self, tmp_path: Path, *flags: str):
        self.port = _free_port()
        argv = [sys.executable, "launch.py", "--skip-install", "--skip-load-model-at-start", "--api-server-stop",
                "--data-dir", str(tmp_path / "data"), "--port", str(self.port), *flags]
        env = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
        self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.output.append(line)
            if text in line:
                return
        raise AssertionError(f"no line with {text!r}:\n{''.join(self.output)}")

    def post(self, route: str) -> tuple[int, dict]:
        """POST with no body, as `requests.post(url)` in a notebook sends it; the port may open just after the
        server printed its address."""
        for _ in range(100):
            try:
                response = httpx.post(f"http://127.0.0.1:{self.port}{route}", timeout=30)
            except httpx.ConnectError:
                time.sleep(0.2)
                continue
            return response.status_code, (response.json() if response.content else {})
        raise AssertionError(f"the server never answered:\n{''.join(self.output)}")

    def exit_code(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def launched(tmp_path):
    started: list[Launched] = []

    def start(*flags: str) -> Launched:
        started.append(Launched(tmp_path, *flags))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_api_only_server_restarts_in_place_then_stops_cleanly(launched):
    server = launched("--nowebui")
    server.wait_for_line("API on")
    status, body = server.post("/sdapi/v1/server-restart")
    assert status == 200 and "Restarting" in body["message"], body
    server.wait_for_line("Restarting:")
    server.wait_for_line("API on")  # the same process (os.execv) serves again
    assert server.process.poll() is None
    status, body = server.post("/sdapi/v1/server-stop")
    assert status == 200 and "Stopping" in body["message"], body
    assert server.exit_code() == 0
    assert "Traceback" not in "".join(server.output), "".join(server.output)


def test_web_ui_with_api_stops_cleanly(launched):
    server = launched("--api")
    server.wait_for_line("Startup time")
    status, _ = server.post("/sdapi/v1/server-stop")
    assert status == 200
    assert server.exit_code() == 0
    assert "Traceback" not in "".join(server.output), "".join(server.output)


def test_kill_ends_the_server_at_once(launched):
    server = launched("--nowebui")
    server.wait_for_line("API on")
    status, body = server.post("/sdapi/v1/server-kill")
    assert status == 200, body
    assert server.exit_code(timeout=15) == 0


def test_without_the_flag_the_routes_do_not_exist(isolated_data_dir, tmp_path):
    with isolated_data_dir(tmp_path, {}, {}), serving(create_app(auth=None)) as running, client(running) as http:
        for route in ("server-stop", "server-restart", "server-kill"):
            assert http.post(f"/sdapi/v1/{route}").status_code == 404
        assert http.get("/internal/ping").status_code == 200  # still serving
