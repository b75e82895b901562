"""launch.py's virtual environment: made on first run and re-entered, so set-up works on a Python that refuses
system-wide installs (PEP 668); skipped inside a venv, with VENV_DIR=-, and with --skip-install before one exists.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import launch

REPO = Path(__file__).resolve().parents[1]


class Exec(Exception):
    """Raised by the stand-in for launch._exec, which would replace the test process."""


@pytest.fixture
def venv_env(monkeypatch, tmp_path):
    """Outside any virtual environment as far as launch.py can tell, with VENV_DIR in tmp_path; records the
    venvs created and the re-run launch.py would exec."""
    monkeypatch.setenv("VENV_DIR", str(tmp_path / "venv"))
    monkeypatch.setattr(launch, "in_virtualenv", lambda: False)
    created: list[str] = []

    def fake_create(venv: str) -> None:
        created.append(venv)
        python_exe = Path(launch.venv_python(venv))
        python_exe.parent.mkdir(parents=True)
        python_exe.write_text("")

    def fake_exec(python_exe: str, venv: str, argv) -> None:
        raise Exec(python_exe, venv, list(argv))

    monkeypatch.setattr(launch, "create_venv", fake_create)
    monkeypatch.setattr(launch, "_exec", fake_exec)
    return tmp_path / "venv", created


def test_venv_path_default_relative_absolute_and_opt_out(tmp_path):
    assert launch.venv_path({}) == os.path.join(launch.script_path, "venv")
    assert launch.venv_path({"VENV_DIR": "env2"}) == os.path.join(launch.script_path, "env2")
    assert launch.venv_path({"VENV_DIR": str(tmp_path)}) == str(tmp_path)
    assert launch.venv_path({"VENV_DIR": "-"}) is None


def test_venv_python_on_posix_and_windows():
    assert launch.venv_python("v", windows=False) == os.path.join("v", "bin", "python")
    assert launch.venv_python("v", windows=True) == os.path.join("v", "Scripts", "python.exe")


def test_first_run_creates_the_venv_and_reruns_in_it(venv_env):
    venv, created = venv_env
    with pytest.raises(Exec) as exc:
        launch.enter_venv(["--port", "7000"], skip_install=False)
    assert created == [str(venv)]
    assert exc.value.args == (launch.venv_python(str(venv)), str(venv), ["--port", "7000"])


def test_existing_venv_is_reused_even_with_skip_install(venv_env):
    venv, created = venv_env
    launch.create_venv(str(venv))
    created.clear()
    with pytest.raises(Exec):
        launch.enter_venv(["--skip-install"], skip_install=True)
    assert created == []


def test_skip_install_without_a_venv_stays_in_this_python(venv_env):
    venv, created = venv_env
    launch.enter_venv(["--skip-install"], skip_install=True)
    assert created == [] and not venv.exists()


def test_inside_a_virtualenv_nothing_happens(venv_env, monkeypatch):
    _, created = venv_env
    monkeypatch.setattr(launch, "in_virtualenv", lambda: True)
    launch.enter_venv([], skip_install=False)
    assert created == []


def test_venv_dir_dash_opts_out(venv_env, monkeypatch):
    _, created = venv_env
    monkeypatch.setenv("VENV_DIR", "-")
    launch.enter_venv([], skip_install=False)
    assert created == []


def test_a_venv_python_outside_its_venv_is_reported_not_looped(venv_env, monkeypatch):
    venv, _ = venv_env
    monkeypatch.setattr(sys, "executable", launch.venv_python(str(venv)))  # as when pyvenv.cfg is gone
    with pytest.raises(RuntimeError, match="not a working virtual environment"):
        launch.enter_venv([], skip_install=False)


def test_the_rerun_is_launch_py_with_the_venv_activated(monkeypatch, tmp_path):
    def fake_execve(path, command, env):
        raise Exec(path, command, env)

    monkeypatch.setattr(launch.os, "execve", fake_execve)
    python_exe = launch.venv_python(str(tmp_path), windows=False)
    with pytest.raises(Exec) as exc:
        launch._exec(python_exe, str(tmp_path), ["--exit"])
    path, command, env = exc.value.args
    assert path == python_exe and command == [python_exe, str(REPO / "launch.py"), "--exit"]
    assert env["VIRTUAL_ENV"] == str(tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(python_exe)


def test_on_windows_the_parent_waits_through_ctrl_c_and_exits_with_the_child_code():
    class Child:
        calls = 0

        def wait(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt
            return 3

    with pytest.raises(SystemExit) as exc:
        launch._wait_for(Child())
    assert exc.value.code == 3


def test_the_venv_is_git_ignored():
    assert "/venv/" in (REPO / ".gitignore").read_text().splitlines()


def test_ci_runs_the_readme_test_command_with_the_venv_python():
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python3 launch.py --exit && "))
    assert (REPO / ".ci" / "run").read_text().splitlines()[-1] == command
    assert f"{launch.venv_python('venv', windows=False)} -m pytest" in command


def test_without_ensurepip_the_venv_uses_the_system_pip(monkeypatch, tmp_path):
    calls = []

    def fake_run(command, desc=None, errdesc=None, custom_env=None, live=False):
        calls.append(command)
        if "--without-pip" not in command:
            raise RuntimeError("ensurepip is not available")  # Debian/Ubuntu without python3-venv
        Path(command[-1]).mkdir()
        return ""

    monkeypatch.setattr(launch, "run", fake_run)
    monkeypatch.setattr(launch, "_has_pip", lambda python_exe: True)
    venv = tmp_path / "venv"
    launch.create_venv(str(venv))
    assert [c[-2:] for c in calls] == [["--system-site-packages", str(venv)], ["--without-pip", str(venv)]]
    assert (venv / ".gitignore").read_text() == "*\n"


def test_without_any_pip_the_error_says_what_to_install_and_cleans_up(monkeypatch, tmp_path):
    def fake_run(command, desc=None, errdesc=None, custom_env=None, live=False):
        Path(command[-1]).mkdir(exist_ok=True)
        return ""

    monkeypatch.setattr(launch, "run", fake_run)
    monkeypatch.setattr(launch, "_has_pip", lambda python_exe: False)
    with pytest.raises(RuntimeError, match="python3-venv"):
        launch.create_venv(str(tmp_path / "venv"))
    assert not (tmp_path / "venv").exists()  # the next run tries again


# --- the real thing: a base Python runs launch.py, which makes the venv, re-runs in it and pip-installs there ---

PROBE = "launch_venv_probe"
PEP668_CHECK = (
    "import os, sys, sysconfig; print(sys.version_info >= (3, 11) and sys.prefix == sys.base_prefix and "
    "os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
)


@functools.cache
def _externally_managed_python() -> str | None:
    """A python3 on PATH that refuses system-wide installs (PEP 668), like Debian's and Ubuntu's; or None."""
    seen = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        exe = shutil.which("python3", path=folder) if folder else None
        if exe is None or os.path.realpath(exe) in seen:
            continue
        seen.add(os.path.realpath(exe))
        result = subprocess.run([exe, "-c", PEP668_CHECK], capture_output=True, text=True, timeout=30)
        if result.stdout.strip() == "True":
            return exe
    return None


def _base_python() -> str:
    """The Python that a newcomer's `python3` would be: an externally managed one if this machine has it, else
    the interpreter below the current venv (pip would install system-wide there)."""
    return _externally_managed_python() or getattr(sys, "_base_executable", sys.executable)


def _write_probe_wheel(folder: Path) -> None:
    """A one-module wheel, so pip can install from a local folder with no index and no network."""
    dist = f"{PROBE}-1.0.dist-info"
    files = {
        f"{PROBE}.py": b"",
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: launch-venv-probe\nVersion: 1.0\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for name, data in files.items()
    ]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    folder.mkdir()
    with zipfile.ZipFile(folder / f"{PROBE}-1.0-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)


def _offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("COMMANDLINE_ARGS", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    # pip sees only the probe wheel: no config files (their indexes), no index, no network
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "wheels"),
               VENV_DIR=str(tmp_path / "venv"), TORCH_COMMAND="", **extra)
    return env


def test_set_up_on_a_base_python_installs_into_the_new_venv(tmp_path):
    base = _base_python()
    _write_probe_wheel(tmp_path / "wheels")
    (tmp_path / "requirements.txt").write_text("launch-venv-probe==1.0\n")
    env = _offline_env(tmp_path, REQS_FILE=str(tmp_path / "requirements.txt"))
    result = subprocess.run([base, "launch.py", "--exit", "--data-dir", str(tmp_path / "data")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Creating the virtual environment" in result.stdout
    assert "include-system-site-packages = true" in (tmp_path / "venv" / "pyvenv.cfg").read_text()

    where = f"import {PROBE}; print({PROBE}.__file__)"
    venv_python = launch.venv_python(str(tmp_path / "venv"))
    installed = subprocess.run([venv_python, "-c", where], capture_output=True, text=True, env=env, timeout=30)
    assert Path(installed.stdout.strip()).is_relative_to(tmp_path / "venv"), installed.stderr
    outside = subprocess.run([base, "-c", where], capture_output=True, text=True, env=env, timeout=30)
    assert outside.returncode != 0  # nothing was installed system-wide


def test_a_bad_flag_fails_before_any_venv_is_made(tmp_path):
    result = subprocess.run([_base_python(), "launch.py", "--no-such-flag"], cwd=REPO, env=_offline_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr
    assert not (tmp_path / "venv").exists()
