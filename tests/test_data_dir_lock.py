"""One server per data dir: `<data dir>/.webui.lock`, held while a server runs and gone with its process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from modules import paths

REPO = Path(__file__).resolve().parents[1]
# A process that holds the lock of the folder in argv[1] until it is killed.
HOLD = ("import sys, time\nfrom modules import paths\npaths.lock_data_dir(sys.argv[1])\n"
        "print('locked', flush=True)\ntime.sleep(600)\n")
# A process that tries to take it, and prints what happened.
TRY = ("import sys\nfrom modules import paths\ntry:\n    paths.lock_data_dir(sys.argv[1])\n    print('locked')\n"
       "except paths.DataDirInUseError as e:\n    print(e)\n")


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def try_lock(folder: Path) -> str:
    return python(TRY, str(folder)).communicate(timeout=60)[0].strip()


@pytest.fixture
def holder(tmp_path):
    process = python(HOLD, str(tmp_path))
    assert process.stdout.readline().strip() == "locked"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    process.stdout.close()


def test_a_second_process_is_refused_with_the_folder_and_the_holders_pid(tmp_path, holder):
    message = try_lock(tmp_path)
    assert message == (f"The data dir {tmp_path} is already in use by another web UI server (process {holder.pid}): "
                       "stop that one first, or give this one its own --data-dir.")
    assert (tmp_path / paths.LOCK_NAME).read_text().strip() == str(holder.pid)  # the refused one changed nothing


def test_the_lock_goes_with_its_process_even_after_kill_9(tmp_path, holder):
    holder.kill()  # SIGKILL on POSIX: no clean-up code runs
    holder.wait(timeout=10)
    assert try_lock(tmp_path) == "locked"


def test_in_process_lock_is_held_until_unlocked_and_taking_it_twice_is_fine(tmp_path):
    try:
        assert paths.lock_data_dir(str(tmp_path)) == str(tmp_path / paths.LOCK_NAME)
        assert paths.lock_data_dir(str(tmp_path)) == str(tmp_path / paths.LOCK_NAME)
        assert (tmp_path / paths.LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert f"(process {os.getpid()})" in try_lock(tmp_path)
    finally:
        paths.unlock_data_dir(str(tmp_path))
    assert try_lock(tmp_path) == "locked"


def test_a_missing_data_dir_is_made(tmp_path):
    folder = tmp_path / "new" / "data"
    try:
        assert paths.lock_data_dir(str(folder)) == str(folder / paths.LOCK_NAME)
    finally:
        paths.unlock_data_dir(str(folder))


@pytest.mark.skipif(os.name != "posix", reason="O_NOFOLLOW is POSIX")
def test_a_symlink_in_place_of_the_lock_file_is_not_followed(tmp_path, caplog):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(victim, data / paths.LOCK_NAME)
    with caplog.at_level(logging.WARNING):
        assert paths.lock_data_dir(str(data)) is None
    assert victim.read_text() == "keep me"
    assert "Cannot lock the data dir" in caplog.text


def test_a_data_dir_where_the_lock_cannot_be_made_only_warns(tmp_path, caplog, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with caplog.at_level(logging.WARNING):
        monkeypatch.setattr(os, "open", read_only)  # what a read-only data dir answers (root ignores chmod)
        assert paths.lock_data_dir(str(tmp_path)) is None
        monkeypatch.undo()
    assert "Cannot lock the data dir" in caplog.text and "Permission denied" in caplog.text


# --- two real servers ----------------------------------------------------------------------------------------


def launch_output(data_dir: Path, port: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    env.pop("COMMANDLINE_ARGS", None)
    return subprocess.run([sys.executable, "launch.py", "--skip-install", "--skip-load-model-at-start",
                           "--data-dir", str(data_dir), "--port", str(port), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_second_server_on_one_data_dir_exits_and_the_first_keeps_serving(tmp_path_factory):
    from browser.helpers import Server, free_port

    data_dir = tmp_path_factory.mktemp("data")
    first = Server(data_dir, "--skip-load-model-at-start").start()
    try:
        second = launch_output(data_dir, free_port())
        assert second.returncode != 0
        assert (f"The data dir {data_dir} is already in use by another web UI server (process {first.process.pid})"
                in second.stderr), second.stderr + second.stdout
        with urllib.request.urlopen(first.url, timeout=30) as response:
            assert response.status == 200
        first.process.kill()  # kill -9: the lock must not outlive it
        first.process.wait(timeout=10)
    finally:
        first.stop()
    again = Server(data_dir, "--skip-load-model-at-start").start()
    try:
        with urllib.request.urlopen(again.url, timeout=30) as response:
            assert response.status == 200
    finally:
        again.stop()


def test_set_up_only_runs_take_no_lock(tmp_path):
    result = launch_output(tmp_path, 0, "--exit")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / paths.LOCK_NAME).exists()
