"""An interpreter told to write no bytecode caches (PYTHONDONTWRITEBYTECODE, as container images often set), whose
installed packages came without caches, keeps its caches under the data folder, so that a restart does not
compile every imported module's source again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modules import bytecode_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = """
import subprocess, sys
from modules import bytecode_cache
print('folder', bytecode_cache.use_own_cache(sys.argv[1], probes=('json', 'slowpkg')))
import slowpkg.part
print('child', subprocess.run([sys.executable, '-c', 'import sys; print(sys.pycache_prefix)'],
                              capture_output=True, text=True).stdout.strip())
"""


def _installed_package(root) -> str:
    """A package as an installer that compiles no bytecode leaves it."""
    package = root / "site" / "slowpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "part.py").write_text("def twice(x):\n    return 2 * x\n")
    return str(root / "site")


def _start(site: str, data_dir: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=os.pathsep.join([site, REPO]))
    env.pop("PYTHONPYCACHEPREFIX", None)
    done = subprocess.run([sys.executable, "-c", CODE, data_dir], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_a_start_without_caches_keeps_them_in_the_data_folder(tmp_path):
    site = _installed_package(tmp_path)
    data_dir = tmp_path / "data"
    folder = str(data_dir / "cache" / "bytecode")
    shown = _start(site, str(data_dir))
    assert shown == {"folder": folder, "child": folder}  # processes it starts use the same folder
    cached = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    tag = sys.implementation.cache_tag
    assert any(path.endswith(os.path.join("slowpkg", f"part.{tag}.pyc")) for path in cached), cached
    assert not (tmp_path / "site" / "slowpkg" / "__pycache__").exists()  # the installed packages are left alone
    assert _start(site, str(data_dir))["folder"] == folder  # the next start reads the same folder


@pytest.mark.parametrize("case", ["writes caches", "folder chosen", "packages have caches"])
def test_python_s_own_caches_are_left_as_they_are(tmp_path, monkeypatch, case):
    monkeypatch.setattr(sys, "dont_write_bytecode", case != "writes caches")
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "mine") if case == "folder chosen" else None)
    probes = ("json",) if case == "packages have caches" else ("json", "slowpkg")
    monkeypatch.syspath_prepend(_installed_package(tmp_path))
    before = dict(os.environ)
    assert bytecode_cache.use_own_cache(str(tmp_path / "data"), probes=probes) is None
    assert not (tmp_path / "data").exists() and dict(os.environ) == before


def test_a_data_folder_that_cannot_be_written_leaves_python_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.syspath_prepend(_installed_package(tmp_path))
    (tmp_path / "data").write_text("a file where the data folder should be")
    assert bytecode_cache.use_own_cache(str(tmp_path / "data"), probes=("slowpkg",)) is None
    assert sys.dont_write_bytecode and sys.pycache_prefix is None


def test_caches_no_start_will_read_again_are_removed_after_a_start(tmp_path):
    """An upgraded package or a rebuilt environment leaves caches whose source is gone; a new Python version leaves
    caches of another tag. They go after the next start; the caches of what is installed now stay."""
    site = _installed_package(tmp_path)
    data_dir = tmp_path / "data"
    folder = data_dir / "cache" / "bytecode"
    _start(site, str(data_dir))
    tag = sys.implementation.cache_tag
    package_cache = folder / os.path.relpath(os.path.join(site, "slowpkg"), os.sep)
    kept = package_cache / f"part.{tag}.pyc"
    assert kept.exists()
    old_env = folder / "old-venv" / "lib" / "gone"
    old_env.mkdir(parents=True)
    (old_env / f"removed.{tag}.pyc").write_bytes(b"stale")
    (package_cache / "part.cpython-30.pyc").write_bytes(b"another python")
    (package_cache / f"renamed.{tag}.opt-1.pyc").write_bytes(b"source renamed")
    (package_cache / "notes.txt").write_text("not a cache: left alone")

    assert bytecode_cache.prune_in_background(str(folder)).join(timeout=30) is None
    left = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)
    assert left == sorted(os.path.relpath(p, folder) for p in (kept, package_cache / f"__init__.{tag}.pyc",
                                                                 package_cache / "notes.txt"))
    assert not (folder / "old-venv").exists()  # the folders left empty go too
    assert _start(site, str(data_dir))["folder"] == str(folder)  # and the next start still reads the folder
