"""Set-up on a machine that already has its own packages (Colab, RunPod) keeps them: only what is missing or
outside its compatible range is installed, and the console says what was kept and what changed.

The end-to-end test makes a venv WITHOUT system site packages, seeds it with numpy 2.3.5 and pillow 11.3.0
(other versions than requirements.txt pins, inside its compatible ranges) and a torch 2.13.0 that is only a
dist-info folder (set-up reads torch's version and nothing else; a real torch wheel is ~200 MB to 2 GB, too
slow for CI), then runs `launch.py --exit` against a small requirements file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from modules import install_plan

REPO = Path(__file__).resolve().parents[1]

SMALL_REQUIREMENTS = """\
numpy==2.4.6  # compatible: >=2.0,<2.7
pillow==12.3.0  # compatible: >=10.1,<13
piexif==1.1.3
trampoline==0.1.2
"""


def _versions(table: dict[str, str]):
    return lambda name: table.get(name.lower())


def test_a_compatible_installed_version_is_kept_and_named():
    decisions = install_plan.plan(SMALL_REQUIREMENTS.splitlines(), _versions({"numpy": "2.1.0", "pillow": "11.3.0"}))
    assert [d.message() for d in decisions] == [
        "kept numpy 2.1.0 (requirements pin 2.4.6)",
        "kept pillow 11.3.0 (requirements pin 12.3.0)",
        "installing piexif==1.1.3 (piexif is not installed)",
        "installing trampoline==0.1.2 (trampoline is not installed)",
    ]
    assert install_plan.to_install(decisions) == ["piexif==1.1.3", "trampoline==0.1.2"]
    # what is kept is held at its version while pip installs the rest
    assert install_plan.constraints(decisions, {"torch": "2.13.0"}) == [
        "numpy==2.1.0", "pillow==11.3.0", "torch==2.13.0"]


def test_outside_the_range_or_without_one_the_pin_wins():
    decisions = install_plan.plan(SMALL_REQUIREMENTS.splitlines(),
                                  _versions({"numpy": "1.26.4", "pillow": "12.3.0", "piexif": "1.1.2"}))
    assert decisions[0].message() == (
        "replacing numpy 1.26.4 with numpy==2.4.6 (outside the compatible range >=2.0,<2.7)")
    assert decisions[1].action == "ok" and decisions[1].message() == ""
    assert decisions[2].message() == "replacing piexif 1.1.2 with piexif==1.1.3 (the requirements pin it)"
    assert install_plan.to_install(decisions) == ["numpy==2.4.6", "piexif==1.1.3", "trampoline==0.1.2"]


def test_a_fresh_machine_gets_exactly_the_pins_of_requirements_txt():
    decisions = install_plan.plan_file(str(REPO / "requirements.txt"), lambda name: None)
    pinned = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert install_plan.to_install(decisions) == [line for line in pinned if line and not line.startswith("-")]


def test_every_pin_in_requirements_txt_lies_in_its_own_compatible_range():
    """A range that excluded its pin would replace what a fresh install just put there."""
    decisions = install_plan.plan_file(str(REPO / "requirements.txt"), lambda name: None)
    ranged = [d for d in decisions if d.compatible]
    assert {d.name for d in ranged} >= {"numpy", "pillow"}
    for d in ranged:
        kept = install_plan.decide(f"{d.line}  # compatible: {d.compatible}", lambda name, v=d.pin: v)
        assert kept is not None and kept.action == "ok", d


def _seed_fake_torch(venv: Path, version: str) -> None:
    site = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    info = site / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "INSTALLER").write_text("tests\n")
    (info / "RECORD").write_text("")


def _pip_env() -> dict[str, str]:
    # pip as configured for this machine (CI: PyPI); nothing of ours (COMMANDLINE_ARGS, a parent venv)
    return {k: v for k, v in os.environ.items()
            if k not in ("COMMANDLINE_ARGS", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "REQS_FILE", "VENV_DIR")}


def _versions_in(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(os.name == "nt" or not sysconfig.get_config_var("EXT_SUFFIX"), reason="POSIX venv layout")
def test_set_up_in_a_seeded_venv_keeps_torch_numpy_pillow_and_installs_the_rest(tmp_path):
    base = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)  # no system site packages
    env = _pip_env()
    seeded = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--prefer-binary",
                             "numpy==2.3.5", "pillow==11.3.0"], env=env, capture_output=True, text=True, timeout=300)
    if seeded.returncode != 0:
        pytest.skip(f"pip could not fetch the seed packages here: {seeded.stderr.strip()[-300:]}")
    _seed_fake_torch(venv, "2.13.0")
    before = _versions_in(venv)

    (tmp_path / "requirements.txt").write_text(SMALL_REQUIREMENTS)
    env.update(REQS_FILE=str(tmp_path / "requirements.txt"), TORCH_COMMAND="false-torch-command-must-not-run")
    result = subprocess.run([str(venv / "bin" / "python"), "launch.py", "--exit", "--data-dir", str(tmp_path / "d")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    after = _versions_in(venv)

    for name in ("torch", "numpy", "pillow"):  # nothing pre-installed was replaced
        assert after[name] == before[name]
    assert after["piexif"] == "1.1.3" and after["trampoline"] == "0.1.2"
    assert "kept torch 2.13.0" in out
    assert "kept numpy 2.3.5 (requirements pin 2.4.6)" in out
    assert "kept pillow 11.3.0 (requirements pin 12.3.0)" in out
    assert "installed piexif 1.1.3" in out and "installed trampoline 0.1.2" in out
    assert "numpy" not in "".join(line for line in out.splitlines() if line.startswith(("installed", "changed")))

    # the second start has nothing to do and says nothing about packages
    again = subprocess.run([str(venv / "bin" / "python"), "launch.py", "--exit", "--data-dir", str(tmp_path / "d")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "Installing" not in again.stdout and "kept" not in again.stdout
    print(f"seeded venv set-up test: {time.monotonic() - started:.1f}s")
