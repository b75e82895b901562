"""launch.py: offline environment, requirement check without pip, install helpers, and the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

import launch
from modules import cmd_args, paths, shared

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_env(monkeypatch):
    """Let prepare_environment/main change os.environ and shared state; undo it afterwards."""
    for key in [*launch.OFFLINE_ENV, "COMMANDLINE_ARGS", "TORCH_COMMAND"]:
        monkeypatch.delenv(key, raising=False)
    old_cmd_opts, old_args = shared.cmd_opts, launch.args
    yield monkeypatch
    shared.set_cmd_opts(old_cmd_opts)
    launch.args = old_args


@pytest.fixture
def no_commands(monkeypatch):
    calls = []

    def fake_run(command, desc=None, errdesc=None, custom_env=None, live=False):
        calls.append(list(command) if not isinstance(command, str) else command)
        return ""

    monkeypatch.setattr(launch, "run", fake_run)
    return calls


def test_helpers_for_install_scripts_exist():
    assert launch.python == sys.executable
    assert isinstance(launch.index_url, str)
    assert isinstance(launch.args.skip_install, bool)
    for name in ("is_installed", "run_pip", "run", "prepare_environment", "main"):
        assert callable(getattr(launch, name))


def test_is_installed():
    assert launch.is_installed("pytest")
    assert launch.is_installed("PyYAML")  # distribution name differs from the module name
    assert not launch.is_installed("definitely-not-installed-pkg-xyz")


def test_requirements_of_this_repo_are_met():
    assert launch.missing_requirements(os.path.join(REPO, "requirements.txt")) == []


def test_missing_and_mismatched_pins_are_reported(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "# a comment\n"
        "\n"
        "diffusers==0.0.1\n"
        "definitely-not-installed-pkg-xyz==1.0\n"
        "numpy\n"
        "pillow>=1.0  # only presence is checked\n"
        "transformers[torch]==5.23.0\n"
        "-r other.txt\n"
        "nonexistent-for-other-os==1.0; sys_platform == 'no-such-platform'\n"
    )
    problems = launch.missing_requirements(str(reqs))
    assert len(problems) == 2
    assert problems[0].startswith("diffusers==0.0.1 (installed: ")
    assert problems[1] == "definitely-not-installed-pkg-xyz==1.0 (not installed)"


def test_prepare_environment_goes_offline_and_skip_install_runs_nothing(clean_env, no_commands):
    launch.prepare_environment(cmd_args.parse_args(["--skip-install"], {}))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        assert os.environ[key] == "1"
    assert no_commands == []


def test_prepare_environment_runs_no_pip_when_all_satisfied(clean_env, no_commands):
    clean_env.setattr(launch, "requirements_file", os.path.join(REPO, "requirements.txt"))
    launch.prepare_environment(cmd_args.parse_args([], {}))
    assert no_commands == []


def test_prepare_environment_installs_when_a_pin_is_missing(clean_env, no_commands, tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("definitely-not-installed-pkg-xyz==1.0\n")
    clean_env.setattr(launch, "requirements_file", str(reqs))
    launch.prepare_environment(cmd_args.parse_args([], {}))
    assert len(no_commands) == 1
    command = no_commands[0]
    # only the missing line is installed (not the whole file), with what is installed held by a constraint
    assert command[:5] == [sys.executable, "-m", "pip", "install", "definitely-not-installed-pkg-xyz==1.0"]
    assert "-c" in command  # the installed torch is pinned, so pip cannot replace it


def test_torch_is_installed_only_when_absent(clean_env, no_commands, tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("")
    clean_env.setattr(launch, "requirements_file", str(reqs))
    clean_env.setattr(launch, "is_installed", lambda package: package != "torch")
    launch.prepare_environment(cmd_args.parse_args([], {}))
    assert no_commands == [[sys.executable, "-m", "pip", "install", "torch==2.14.1", "torchvision==0.29.1"]]

    no_commands.clear()
    clean_env.setenv("TORCH_COMMAND", "pip install torch==2.13.0 --index-url https://download.example/cpu")
    launch.prepare_environment(cmd_args.parse_args([], {}))
    assert no_commands == [[sys.executable, "-m", "pip", "install", "torch==2.13.0", "--index-url",
                            "https://download.example/cpu"]]

    no_commands.clear()
    clean_env.setattr(launch, "is_installed", lambda package: True)
    launch.prepare_environment(cmd_args.parse_args([], {}))
    assert no_commands == []


def test_run_returns_output_and_raises_with_description():
    assert launch.run([sys.executable, "-c", "print('hello')"]).strip() == "hello"
    with pytest.raises(RuntimeError, match="Couldn't do it") as exc:
        launch.run([sys.executable, "-c", "import sys; print('oops', file=sys.stderr); sys.exit(3)"],
                   errdesc="Couldn't do it")
    assert "Error code: 3" in str(exc.value) and "oops" in str(exc.value)


def test_run_accepts_a_shell_string_like_a1111():
    assert launch.run(f'"{sys.executable}" -c "print(40 + 2)"').strip() == "42"


def test_run_pip_builds_a_pip_command(monkeypatch, no_commands):
    monkeypatch.setattr(launch, "args", cmd_args.parse_args([], {}))
    monkeypatch.setattr(launch, "index_url", "https://mirror.example/simple")
    launch.run_pip('install "some-pkg>=1.0"', "some-pkg")
    assert no_commands == [[sys.executable, "-m", "pip", "install", "some-pkg>=1.0", "--prefer-binary",
                            "--index-url", "https://mirror.example/simple"]]

    no_commands.clear()
    monkeypatch.setattr(launch, "args", cmd_args.parse_args(["--skip-install"], {}))
    assert launch.run_pip("install some-pkg", "some-pkg") == ""
    assert no_commands == []


def test_main_parses_configures_and_starts_webui(clean_env, no_commands, tmp_path, capsys):
    started = []
    clean_env.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: started.append(True)))
    clean_env.setenv("COMMANDLINE_ARGS", "--opt-channelslast")
    assert launch.main(["--skip-install", "--data-dir", str(tmp_path)]) == 0
    assert started == [True]
    assert launch.args.opt_channelslast and launch.args.data_dir == str(tmp_path)
    assert shared.cmd_opts is launch.args
    assert paths.data_path == str(tmp_path)
    assert shared.config_filename == os.path.join(str(tmp_path), "config.json")
    assert "note: --opt-channelslast is accepted but not yet effective" in capsys.readouterr().out


def test_ui_settings_file_is_where_settings_are_read(clean_env, no_commands, tmp_path):
    """--ui-settings-file (config.json kept elsewhere, a notebook's drive say): the launcher's extension list and
    the settings come from that file, and saving goes to it."""
    from modules import extensions

    elsewhere = tmp_path / "drive" / "my-settings.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({"samples_format": "jpg", "disabled_extensions": ["off-ext"]}))
    (tmp_path / "data" / "extensions" / "off-ext").mkdir(parents=True)
    (tmp_path / "data" / "config.json").write_text(json.dumps({"samples_format": "webp"}))
    clean_env.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: None))
    clean_env.setattr(extensions, "extensions", [])
    assert launch.main(["--skip-install", "--data-dir", str(tmp_path / "data"), "--ui-settings-file",
                        str(elsewhere)]) == 0
    assert shared.config_filename == str(elsewhere)
    assert [e.enabled for e in extensions.extensions if e.name == "off-ext"] == [False]
    saved = dict(shared.opts.data)
    try:
        shared.opts.load(shared.config_filename)  # what start-up's initialize() does
        assert shared.opts.samples_format == "jpg"
    finally:
        shared.opts.data.clear()
        shared.opts.data.update(saved)


def test_main_exit_stops_before_webui(clean_env, no_commands, tmp_path):
    clean_env.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: pytest.fail("webui started")))
    assert launch.main(["--exit", "--skip-install", "--data-dir", str(tmp_path)]) == 0


def _launch(*argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", "TORCH_COMMAND")}
    command = [sys.executable, "-c", code] if code else [sys.executable, "launch.py", *argv]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_launch_exit_subprocess(tmp_path):
    result = _launch("--exit", "--skip-install", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "not yet effective" not in result.stdout


def test_launch_notes_not_yet_effective_flags(tmp_path):
    result = _launch("--exit", "--skip-install", "--opt-channelslast", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "note: --opt-channelslast is accepted but not yet effective" in result.stdout


def test_launch_unknown_flag_subprocess():
    result = _launch("--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_launch_does_not_import_torch_before_needed(tmp_path):
    code = (
        "import sys, launch\n"
        f"launch.main(['--exit', '--skip-install', '--data-dir', {str(tmp_path)!r}])\n"
        "print('heavy:', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    result = _launch(code=code)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


@pytest.mark.parametrize("flags", [[], ["--no-bytecode-cache"]])
def test_main_keeps_bytecode_caches_in_the_data_folder_unless_told_not_to(clean_env, no_commands, tmp_path, capsys,
                                                                        flags):
    asked = []
    clean_env.setattr(launch.bytecode_cache, "use_own_cache",
                      lambda data_dir: asked.append(data_dir) or os.path.join(data_dir, "cache", "bytecode"))
    pruned = []
    clean_env.setattr(launch.bytecode_cache, "prune_in_background", pruned.append)
    assert launch.main(["--exit", "--skip-install", "--data-dir", str(tmp_path), *flags]) == 0
    assert asked == ([] if flags else [str(tmp_path)])
    assert pruned == ([] if flags else [os.path.join(str(tmp_path), "cache", "bytecode")])
    message = "keeping them in " + os.path.join(str(tmp_path), "cache", "bytecode")
    assert (message in capsys.readouterr().out) == (not flags)
