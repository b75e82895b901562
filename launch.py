"""Start the web UI the A1111 way: parse flags, enter the virtual environment, prepare it, then webui.start().

Extension install.py scripts `import launch` and call `is_installed`, `run_pip`, `run`, `python`,
`index_url` and `args`, so those names are public. Start-up stays fast: nothing here imports torch, and the
requirement check reads installed-package metadata instead of asking pip.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import NoReturn

from modules import (
    bytecode_cache,
    cmd_args,
    extension_install,
    extension_manager,
    extension_preload,
    extensions,
    install_plan,
    shared,
)

script_path = os.path.dirname(os.path.abspath(__file__))
python: str = sys.executable
git: str = os.environ.get("GIT", "git")
index_url: str = os.environ.get("INDEX_URL", "")
requirements_file: str = os.environ.get("REQS_FILE", os.path.join(script_path, "requirements.txt"))
ray_requirements_file: str = os.path.join(script_path, "requirements-ray.txt")  # only with --ray
default_command_live: bool = os.environ.get("WEBUI_LAUNCH_LIVE_OUTPUT") == "1"

# What `import launch` sees, e.g. in an install.py run in its own process: lenient, so a flag only an
# extension knows cannot kill the import. main() replaces it with the strict parse.
args: argparse.Namespace = cmd_args.parse_args([], os.environ, strict=False)

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def run(
    command: str | Sequence[str],
    desc: str | None = None,
    errdesc: str | None = None,
    custom_env: Mapping[str, str] | None = None,
    live: bool = default_command_live,
) -> str:
    """Run a command; return its output ("" when live). A string runs through the shell, as in A1111."""
    if desc:
        print(desc, flush=True)
    shell = isinstance(command, str)
    env = dict(custom_env) if custom_env is not None else None
    result = subprocess.run(command, shell=shell, env=env, capture_output=not live, text=True, errors="replace")
    if result.returncode != 0:
        shown = command if shell else shlex.join(command)
        message = [f"{errdesc or 'Error running command'}.", f"Command: {shown}", f"Error code: {result.returncode}"]
        if not live:
            message += [f"stdout: {result.stdout or '<empty>'}", f"stderr: {result.stderr or '<empty>'}"]
        raise RuntimeError("\n".join(message))
    return "" if live else (result.stdout or "")


def run_pip(command: str, desc: str | None = None, live: bool = default_command_live) -> str:
    """`python -m pip <command>`, as install.py scripts call it; does nothing with --skip-install."""
    if args.skip_install:
        return ""
    extra = ["--index-url", index_url] if index_url else []
    argv = [python, "-m", "pip", *shlex.split(command), "--prefer-binary", *extra]
    return run(argv, desc=f"Installing {desc}", errdesc=f"Couldn't install {desc}", live=live)


def is_installed(package: str) -> bool:
    """Whether a distribution (or, failing that, an importable module) of this name is present."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements(path: str) -> list[str]:
    """Lines of a requirements file that set-up would install, each with what is installed.

    An installed version inside a line's `# compatible: RANGE` is kept, so it is not missing (see
    modules/install_plan.py). Options (-r, --index-url ...) and lines excluded by a marker are skipped.
    """
    problems = []
    for decision in install_plan.plan_file(path):
        if decision.action == "unreadable":
            problems.append(f"{decision.line} (cannot be read)")
        elif decision.action == "install":
            problems.append(f"{decision.line} (not installed)")
        elif decision.action == "upgrade":
            problems.append(f"{decision.line} (installed: {decision.installed})")
    return problems


# torchvision comes with torch because spandrel (the upscaler library) needs it, and a torchvision must be built
# for the very torch it runs beside.
DEFAULT_TORCH_COMMAND = "pip install torch==2.14.1 torchvision==0.29.1"


def _install_torch() -> None:
    torch_command = os.environ.get("TORCH_COMMAND", DEFAULT_TORCH_COMMAND)
    argv = shlex.split(torch_command)
    if not argv:
        print("TORCH_COMMAND is empty; not installing torch", file=sys.stderr)
        return
    if argv and os.path.basename(argv[0]) in ("python", "python3"):
        argv = argv[1:]  # "python -m pip ..." is accepted too
    if argv[:1] == ["-m"]:
        argv = argv[1:]
    run([python, "-m", *argv], "Installing torch", "Couldn't install torch", live=True)


def _install_requirements(path: str) -> None:
    """Install only what is missing or outside its compatible range; everything else installed is held at its
    version (torch included), so pip cannot replace the machine's packages while resolving. Says what changed."""
    decisions = install_plan.plan_file(path)
    for decision in decisions:
        if decision.message():
            print(decision.message(), flush=True)
    wanted = install_plan.to_install(decisions)
    if not wanted:
        return
    torch = install_plan.installed_version("torch")
    held = install_plan.constraints(decisions, {"torch": torch} if torch else {})
    before = install_plan.snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        constraints = []
        if held:
            constraints = ["-c", os.path.join(tmp, "constraints.txt")]
            with open(constraints[1], "w", encoding="utf8") as file:
                file.write("\n".join(held) + "\n")
        extra = ["--index-url", index_url] if index_url else []
        argv = [python, "-m", "pip", "install", *wanted, *constraints, "--prefer-binary", *extra]
        try:
            run(argv, "Installing requirements", "Couldn't install requirements", live=True)
        finally:
            for line in install_plan.changes(before, install_plan.snapshot()):
                print(line, flush=True)


# The virtual environment. Run as a script, launch.py makes one (venv/ beside it, or $VENV_DIR as in A1111's
# webui-user.bat; VENV_DIR=- turns it off) and re-runs itself with that Python, so pip installs there: a
# Python that refuses system-wide installs (PEP 668, e.g. Debian/Ubuntu's python3) works as well as any.
# --system-site-packages keeps packages that are already installed (Colab's CUDA torch) visible and in use.


def in_virtualenv() -> bool:
    """Whether this Python runs in a virtual environment already (ours after the re-run, or the user's own)."""
    return sys.prefix != sys.base_prefix or hasattr(sys, "real_prefix")  # real_prefix: old-style virtualenv


def venv_path(environ: Mapping[str, str] = os.environ) -> str | None:
    """$VENV_DIR (relative to this folder), else venv/ here; None when VENV_DIR is "-"."""
    value = environ.get("VENV_DIR", "")
    if value == "-":
        return None
    return os.path.join(script_path, value or "venv")


def venv_python(venv: str, windows: bool = os.name == "nt") -> str:
    return os.path.join(venv, "Scripts", "python.exe") if windows else os.path.join(venv, "bin", "python")


def _has_pip(python_exe: str) -> bool:
    return subprocess.run([python_exe, "-m", "pip", "--version"], capture_output=True).returncode == 0


def create_venv(venv: str) -> None:
    """Make the virtual environment, with its own pip where the Python can provide one.

    Debian/Ubuntu without python3-venv have no ensurepip: then the venv gets no pip of its own and uses the
    system's (python3-pip), seen through the system site-packages; pip installs into the venv all the same.
    """
    existed = os.path.exists(venv)
    command = [sys.executable, "-m", "venv", "--system-site-packages"]
    print(f"Creating the virtual environment {venv} (VENV_DIR=- runs without one)", flush=True)
    try:
        run([*command, venv], errdesc="Couldn't create the virtual environment")
    except RuntimeError:
        run([*command, "--without-pip", venv], errdesc="Couldn't create the virtual environment")
    if not _has_pip(venv_python(venv)):
        if not existed:
            shutil.rmtree(venv, ignore_errors=True)  # so the next run tries again
        raise RuntimeError(
            "The virtual environment has no pip: install python3-venv (Debian/Ubuntu: apt-get install "
            "python3-venv) or python3-pip and run launch.py again, or set VENV_DIR=- to use this Python as it is."
        )
    with open(os.path.join(venv, ".gitignore"), "w", encoding="utf8") as file:
        file.write("*\n")  # git ignores it wherever it lies (Python 3.13's venv writes the same file)


def _exec(python_exe: str, venv: str, argv: Sequence[str]) -> NoReturn:
    """Replace this process with launch.py run by the venv's Python, as if the venv were activated."""
    env = dict(os.environ, VIRTUAL_ENV=venv)
    env["PATH"] = os.pathsep.join([os.path.dirname(python_exe), env.get("PATH", "")])  # pip, python: the venv's
    command = [python_exe, os.path.abspath(__file__), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # Windows has no real exec: os.execv would leave the console to a detached child
        _wait_for(subprocess.Popen(command, env=env))
    os.execve(python_exe, command, env)  # same process id, so whoever started us can still stop us


def _wait_for(child: subprocess.Popen) -> NoReturn:
    while True:
        try:
            sys.exit(child.wait())
        except KeyboardInterrupt:
            pass  # Ctrl+C reaches the child too, which shuts down in its own time; killing it would not


def enter_venv(argv: Sequence[str], skip_install: bool) -> None:
    """Re-run launch.py in its virtual environment, creating that first; returns only when staying here.

    Stays in this Python inside any virtual environment, with VENV_DIR=-, and with --skip-install while the
    venv does not exist (nothing may be installed, so this Python must already have everything).
    """
    venv = venv_path()
    if venv is None or in_virtualenv():
        return
    python_exe = venv_python(venv)
    if os.path.abspath(sys.executable) == os.path.abspath(python_exe):
        raise RuntimeError(f"{venv} is not a working virtual environment (no pyvenv.cfg?): delete it and retry")
    if not os.path.exists(python_exe):
        if skip_install:
            return
        create_venv(venv)
    _exec(python_exe, venv, argv)


# Pickled model files (.ckpt, .pt) load only on a torch whose weights_only loader has no known bypass; the web
# UI refuses them on an older one (modules/models/checkpoint_files.py, TORCH_PICKLE_FLOOR). Said at set-up too.
TORCH_PICKLE_FLOOR = (2, 6)


def _release(version: str) -> tuple[int, ...]:
    """(2, 5, 1) for "2.5.1+cu121"; () when the version cannot be read."""
    try:
        from packaging.version import Version

        return Version(version).release
    except Exception:
        match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
        return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def old_torch_warning() -> str | None:
    """A warning when the installed torch is too old to load pickled checkpoints safely (torch is not imported)."""
    try:
        installed = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if _release(installed) >= TORCH_PICKLE_FLOOR:
        return None
    return (
        f"Warning: torch {installed} is installed; .ckpt/.pt model files need torch 2.6 or newer (an older torch "
        "can be made to run code by a crafted file) and will be refused. .safetensors models work. To load "
        f"pickled files, upgrade torch: {python} -m pip install --upgrade torch"
    )


def prepare_environment(cmd_opts: argparse.Namespace) -> None:
    """Go offline-first, then (unless --skip-install) install torch if absent and fix unmet requirements."""
    os.environ.update(OFFLINE_ENV)
    if cmd_opts.skip_install:
        return
    had_torch = is_installed("torch")
    if not had_torch:
        _install_torch()
    missing = missing_requirements(requirements_file)
    if missing:
        torch = install_plan.installed_version("torch")
        if had_torch and torch:
            print(f"kept torch {torch} (installed; TORCH_COMMAND runs only without one)", flush=True)
        print("Requirements not met: " + ", ".join(missing), flush=True)
        _install_requirements(requirements_file)
    if getattr(cmd_opts, "ray", False):  # Ray Serve is optional: installed for those who start with --ray
        missing = missing_requirements(ray_requirements_file)
        if missing:
            print("Requirements of --ray not met: " + ", ".join(missing), flush=True)
            _install_requirements(ray_requirements_file)


def main(argv: list[str] | None = None) -> int:
    global args
    args = extension_preload.parse_args(argv, os.environ)  # enabled extensions' preload.py add their flags first
    shared.set_cmd_opts(args)
    if not args.no_bytecode_cache:  # before the heavy imports, which are most of a start's time without caches
        folder = bytecode_cache.use_own_cache(args.data_dir)
        if folder:
            print(f"Python writes no bytecode caches here (PYTHONDONTWRITEBYTECODE); keeping them in {folder}",
                  flush=True)
            bytecode_cache.prune_in_background(folder)
    for flag in cmd_args.not_yet_effective(args):
        print(f"note: {flag} is accepted but not yet effective")
    if args.dump_sysinfo:  # A1111's: a report for a bug, without extensions or settings, and nothing else
        from modules import sysinfo

        print(f"Sysinfo saved as {sysinfo.dump()}. Exiting...")
        return 0
    prepare_environment(args)
    if args.update_all_extensions:  # before the installers: an updated extension's install.py runs at this start
        extension_manager.update_all_at_start(extensions.active())
    extension_install.run_installers(args)  # each new extension version's install.py, unless --skip-install
    warning = old_torch_warning()
    if warning:
        print(warning, flush=True)
    if args.exit:
        print("Exiting because of --exit argument")
        return 0

    import webui  # only now: it pulls in the heavy libraries

    webui.start()
    return 0


if __name__ == "__main__":
    # `import launch` from code running in this process must find this module, not load a second copy.
    sys.modules.setdefault("launch", sys.modules[__name__])
    # Flags are checked (strictly, as main() does) before a venv is made: a typo must not cost a venv.
    try:
        enter_venv(sys.argv[1:], extension_preload.parse_args(quiet=True).skip_install)
    except RuntimeError as e:
        sys.exit(f"launch.py: {e}")
    sys.exit(main())
