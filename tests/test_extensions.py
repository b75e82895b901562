"""The extension loader: folders, metadata.ini order, disabling, preload.py flags, install.py once per version,
and the browser side (the `file=` route, the injected tags, the settings for `opts`)."""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from modules import cmd_args, extension_install, extension_preload, extensions, paths, shared

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf8")
    return path


def flags(*argv: str) -> argparse.Namespace:
    return argparse.Namespace(disable_all_extensions="--disable-all-extensions" in argv,
                              disable_extra_extensions="--disable-extra-extensions" in argv,
                              skip_install="--skip-install" in argv)


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A data dir with empty extensions/ and extensions-builtin/ folders; the module-wide lists restored after."""
    (tmp_path / "extensions").mkdir()
    (tmp_path / "builtin").mkdir()
    monkeypatch.setattr(paths, "data_path", str(tmp_path))
    monkeypatch.setattr(paths, "extensions_dir", str(tmp_path / "extensions"))
    monkeypatch.setattr(paths, "extensions_builtin_dir", str(tmp_path / "builtin"))
    monkeypatch.setattr(extensions, "extensions", [])
    monkeypatch.setattr(extensions, "errors", [])
    monkeypatch.setattr(extensions, "disabled_mode", "none")
    monkeypatch.setattr(extension_preload, "_done", {})
    monkeypatch.setattr(cmd_args, "parser", copy.deepcopy(cmd_args.parser))  # preloads add flags to it
    return tmp_path


def ext(root: Path, name: str, metadata: str | None = None, builtin: bool = False) -> Path:
    folder = root / ("builtin" if builtin else "extensions") / name
    folder.mkdir(parents=True)
    if metadata is not None:
        write(folder / "metadata.ini", metadata)
    return folder


def names(found: list[extensions.Extension]) -> list[str]:
    return [e.name for e in found]


# --- listing and metadata.ini ------------------------------------------------------------------------------------


def test_builtins_first_then_by_name_and_hidden_or_linked_folders_skipped(data_dir):
    ext(data_dir, "b")
    ext(data_dir, "a")
    ext(data_dir, "z", builtin=True)
    (data_dir / "extensions" / ".installing-x").mkdir()
    (data_dir / "extensions" / "file.txt").write_text("")
    os.symlink(data_dir / "extensions" / "a", data_dir / "extensions" / "link")
    found = extensions.list_extensions({}, flags())
    assert names(found) == ["z", "a", "b"]
    assert [e.is_builtin for e in found] == [True, False, False]
    assert extensions.errors == []
    assert extensions.extensions_dir == str(data_dir / "extensions")  # A1111's module attribute, live


def test_metadata_before_after_requires_and_name(data_dir):
    ext(data_dir, "a", "[Extension]\nAfter = c\n")
    ext(data_dir, "b")
    ext(data_dir, "c", "[Extension]\nName = Cee\nRequires = d\n")
    ext(data_dir, "d", "[Extension]\nBefore = b\n")
    found = extensions.list_extensions({}, flags())
    # d before c (c requires it) and before b; a after c (by its Name, compared lower-case)
    order = names(found)
    assert order.index("d") < order.index("c") < order.index("a")
    assert order.index("d") < order.index("b")
    assert found[names(found).index("c")].canonical_name == "cee"
    assert extensions.errors == []


def test_without_metadata_the_order_is_the_folder_order(data_dir):
    for name in ("c", "a", "b"):
        ext(data_dir, name)
    assert names(extensions.list_extensions({}, flags())) == ["a", "b", "c"]


def test_a_cycle_is_reported_by_name_and_everything_still_loads(data_dir):
    ext(data_dir, "a", "[Extension]\nAfter = b\n")
    ext(data_dir, "b", "[Extension]\nAfter = c\n")
    ext(data_dir, "c", "[Extension]\nAfter = a\n")
    ext(data_dir, "d")
    found = extensions.list_extensions({}, flags())
    assert sorted(names(found)) == ["a", "b", "c", "d"]
    assert len(extensions.errors) == 1
    assert "cycle" in extensions.errors[0]
    for name in ('"a"', '"b"', '"c"'):
        assert name in extensions.errors[0]
    assert '"d"' not in extensions.errors[0]


def test_missing_or_disabled_requirement_is_reported_and_the_extension_still_loads(data_dir):
    ext(data_dir, "a", "[Extension]\nRequires = nowhere\n")
    ext(data_dir, "b", "[Extension]\nRequires = c\n")
    ext(data_dir, "c")
    ext(data_dir, "e", "[Extension]\nRequires = nowhere|c\n")  # alternatives: c is installed (though disabled)
    found = extensions.list_extensions({"disabled_extensions": ["c"]}, flags())
    assert names(extensions.active()) == ["a", "b", "e"]
    assert 'Extension "a" requires "nowhere", which is not installed' in extensions.errors
    assert 'Extension "b" requires "c", which is disabled' in extensions.errors
    assert 'Extension "e" requires "c", which is disabled' in extensions.errors
    assert len(found) == 4


def test_a_bad_metadata_ini_is_reported_by_name_and_ignored(data_dir):
    ext(data_dir, "bad", "this is not an ini file\n[Extension\n")
    ext(data_dir, "good")
    found = extensions.list_extensions({}, flags())
    assert names(found) == ["bad", "good"]
    assert len(extensions.errors) == 1 and 'Extension "bad": cannot read metadata.ini' in extensions.errors[0]
    # listed again (the launcher and then the web UI list them): reported once
    extensions.list_extensions({}, flags())
    assert len(extensions.errors) == 1


# --- disabling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "argv", "expected"), [
    ({}, (), ["core", "a", "b"]),
    ({"disabled_extensions": ["b"]}, (), ["core", "a"]),
    ({"disabled_extensions": ["core"]}, (), ["a", "b"]),
    ({"disable_all_extensions": "extra"}, (), ["core"]),
    ({"disable_all_extensions": "all"}, (), []),
    ({}, ("--disable-extra-extensions",), ["core"]),
    ({}, ("--disable-all-extensions",), []),
    ({"disable_all_extensions": "extra"}, ("--disable-all-extensions",), []),
])
def test_disabled_settings_and_flags(data_dir, settings, argv, expected):
    ext(data_dir, "core", builtin=True)
    ext(data_dir, "a")
    ext(data_dir, "b")
    found = extensions.list_extensions(settings, flags(*argv))
    assert names(extensions.active()) == expected
    assert names(found) == ["core", "a", "b"]  # still listed (the Extensions tab shows them)
    # `enabled` is the per-extension setting only, as in A1111
    assert [e.enabled for e in found] == [e.name not in settings.get("disabled_extensions", []) for e in found]


def test_settings_are_registered_with_a1111_keys_defaults_and_choices():
    info = shared.opts.data_labels
    assert info["disabled_extensions"].default == []
    assert info["disable_all_extensions"].default == "none"
    assert info["disable_all_extensions"].allowed_choices() == ["none", "extra", "all"]
    assert info["disabled_extensions"].section[0] is None  # hidden from the Settings page, as in A1111
    with pytest.raises(ValueError, match="disable_all_extensions"):
        shared.opts.validate("disable_all_extensions", "some")


def test_list_defaults_to_the_loaded_settings_and_flags(data_dir, monkeypatch):
    ext(data_dir, "a")
    ext(data_dir, "b")
    monkeypatch.setitem(shared.opts.data, "disabled_extensions", ["a"])
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args([]))
    extensions.list_extensions()
    assert names(extensions.active()) == ["b"]


# --- preload.py --------------------------------------------------------------------------------------------------

FLAG_PRELOAD = """
    def preload(parser):
        parser.add_argument("--{flag}", type=int, default=0, help="an extension's flag")
"""


def test_preload_adds_a_flag_that_the_strict_parse_accepts(data_dir):
    write(ext(data_dir, "flagged") / "preload.py", FLAG_PRELOAD.format(flag="flagged-steps"))
    ns = extension_preload.parse_args(["--data-dir", str(data_dir), "--flagged-steps", "7"], {})
    assert ns.flagged_steps == 7
    assert extensions.errors == []
    assert cmd_args.not_yet_effective(ns) == []  # an extension's flag is not ours to call "not yet effective"


def test_a_broken_preload_is_reported_by_name_and_the_others_still_load(data_dir):
    write(ext(data_dir, "a-broken") / "preload.py", "raise RuntimeError('preload exploded')\n")
    write(ext(data_dir, "b-exits") / "preload.py", "def preload(parser):\n    parser.parse_args(['--nonsense'])\n")
    write(ext(data_dir, "c-fine") / "preload.py", FLAG_PRELOAD.format(flag="fine-flag"))
    ns = extension_preload.parse_args(["--data-dir", str(data_dir), "--fine-flag", "3"], {})
    assert ns.fine_flag == 3
    assert 'Error running preload.py of extension "a-broken": RuntimeError: preload exploded' in extensions.errors
    assert any(e.startswith('Error running preload.py of extension "b-exits": SystemExit') for e in extensions.errors)


def test_preload_runs_once_per_process_and_a_quiet_pass_reports_nothing(data_dir):
    folder = ext(data_dir, "counted")
    write(folder / "preload.py", f"""
        import pathlib
        def preload(parser):
            with open({str(data_dir / 'count')!r}, 'a') as f:
                f.write('x')
        raise_now = pathlib.Path({str(data_dir / 'fail')!r}).exists()
        if raise_now:
            raise ValueError('asked to fail')
    """)
    (data_dir / "fail").write_text("")
    extension_preload.parse_args(["--data-dir", str(data_dir)], {}, quiet=True)
    assert extensions.errors == []  # the launcher's first pass, before it re-runs itself in its venv
    extension_preload.parse_args(["--data-dir", str(data_dir)], {})
    assert extensions.errors == ['Error running preload.py of extension "counted": ValueError: asked to fail']
    assert not (data_dir / "count").exists()  # it raised at import, before preload(): and ran once, not twice


def test_a_disabled_extension_preload_does_not_run(data_dir):
    write(ext(data_dir, "off") / "preload.py", FLAG_PRELOAD.format(flag="off-flag"))
    write(data_dir / "config.json", '{"disabled_extensions": ["off"]}')
    with pytest.raises(SystemExit) as exit_info:
        extension_preload.parse_args(["--data-dir", str(data_dir), "--off-flag", "1"], {})
    assert exit_info.value.code == 2


def _launch(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", "TORCH_COMMAND")}
    env["VENV_DIR"] = "-"  # this Python as it is: a test must never make a venv in the checkout
    return subprocess.run([sys.executable, "launch.py", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_launch_accepts_a_preload_flag_and_names_a_broken_preload(tmp_path):
    write(tmp_path / "extensions" / "good" / "preload.py", FLAG_PRELOAD.format(flag="good-flag"))
    write(tmp_path / "extensions" / "bad" / "preload.py", "import no_such_module_here\n")
    result = _launch("--exit", "--skip-install", "--data-dir", str(tmp_path), "--good-flag", "2")
    assert result.returncode == 0, result.stderr
    assert 'Error running preload.py of extension "bad": ModuleNotFoundError' in result.stderr
    assert result.stderr.count('preload.py of extension "bad"') == 1
    result = _launch("--exit", "--skip-install", "--data-dir", str(tmp_path), "--no-such-flag")
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr


# --- install.py --------------------------------------------------------------------------------------------------

COUNTING_INSTALL = """
    import launch  # as A1111's install.py scripts do: the web UI is on PYTHONPATH
    print("install.py output line")
    with open({marker!r}, "a") as f:
        f.write("ran\\n")
"""


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_install_runs_once_per_version(data_dir, capsys):
    folder = ext(data_dir, "inst")
    marker = data_dir / "marker"
    script = write(folder / "install.py", COUNTING_INSTALL.format(marker=str(marker)))
    extensions.list_extensions({}, flags())
    extension_install.run_installers(flags())
    assert runs(marker) == 1
    out = capsys.readouterr().out
    assert 'Running install.py of extension "inst"' in out and "install.py output line" in out
    extension_install.run_installers(flags())  # the next start: same version, skipped
    assert runs(marker) == 1
    assert (data_dir / extension_install.STATE_FILE).exists()
    script.write_text(script.read_text() + "# changed\n")  # a new version of the extension
    extension_install.run_installers(flags())
    assert runs(marker) == 2
    assert extensions.errors == []


def test_install_skipped_with_skip_install_and_for_disabled_extensions(data_dir):
    marker = data_dir / "marker"
    write(ext(data_dir, "a") / "install.py", COUNTING_INSTALL.format(marker=str(marker)))
    write(ext(data_dir, "b") / "install.py", COUNTING_INSTALL.format(marker=str(marker)))
    extensions.list_extensions({"disabled_extensions": ["b"]}, flags())
    extension_install.run_installers(flags("--skip-install"))
    assert runs(marker) == 0
    extension_install.run_installers(flags())
    assert runs(marker) == 1  # a only


def test_a_failing_install_is_reported_by_name_and_retried_next_start(data_dir, capsys):
    marker = data_dir / "marker"
    write(ext(data_dir, "bad") / "install.py", f"""
        with open({str(marker)!r}, "a") as f:
            f.write("ran\\n")
        raise SystemExit("pip could not install something")
    """)
    write(ext(data_dir, "good") / "install.py", COUNTING_INSTALL.format(marker=str(data_dir / "good-marker")))
    extensions.list_extensions({}, flags())
    extension_install.run_installers(flags())
    assert extensions.errors == ['install.py of extension "bad" failed (exit code 1): pip could not install something']
    assert runs(data_dir / "good-marker") == 1  # the others still install
    extension_install.run_installers(flags())
    assert runs(marker) == 2 and runs(data_dir / "good-marker") == 1


def test_install_version_is_the_git_commit(data_dir):
    folder = ext(data_dir, "repo")
    marker = data_dir / "marker"
    write(folder / "install.py", COUNTING_INSTALL.format(marker=str(marker)))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(folder)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    extensions.list_extensions({}, flags())
    extension_install.run_installers(flags())
    extension_install.run_installers(flags())
    assert runs(marker) == 1
    version = extension_install.version_of(extensions.extensions[0])
    assert version.startswith("git:") and len(version) == 44
    (folder / "README").write_text("new")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "two"], check=True)
    extension_install.run_installers(flags())
    assert runs(marker) == 2


def test_launch_main_runs_installers_after_preparing(data_dir, monkeypatch):
    import launch

    marker = data_dir / "marker"
    write(ext(data_dir, "inst") / "install.py", COUNTING_INSTALL.format(marker=str(marker)))
    monkeypatch.setattr(launch, "prepare_environment", lambda args: None)  # no pip in a test
    monkeypatch.setattr(launch, "args", launch.args)  # main() replaces it: put back afterwards
    monkeypatch.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: None))
    try:
        assert launch.main(["--exit", "--data-dir", str(data_dir)]) == 0
        assert runs(marker) == 1
        assert launch.main(["--exit", "--data-dir", str(data_dir)]) == 0
        assert runs(marker) == 1
        assert launch.main(["--exit", "--skip-install", "--data-dir", str(data_dir)]) == 0
        assert runs(marker) == 1
    finally:
        shared.set_cmd_opts(shared.parser.parse_args([]))


# --- the browser side ------------------------------------------------------------------------------------------


@pytest.fixture
def web_ext(data_dir) -> Path:
    folder = ext(data_dir, "web")
    write(folder / "javascript" / "b.js", "window.b = 1;\n")
    write(folder / "javascript" / "a.js", "window.a = 1;\n")
    write(folder / "javascript" / "m.mjs", "export const m = 1;\n")
    write(folder / "javascript" / "notes.py", "secret = 1\n")
    write(folder / "style.css", "body { --web: 1; }\n")
    write(folder / "images" / "icon.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>\n")
    write(folder / ".git" / "config", "[remote]\nurl = https://token@example.invalid\n")
    write(folder / "metadata.ini", "[Extension]\n")
    write(ext(data_dir, "off") / "javascript" / "off.js", "window.off = 1;\n")
    write(data_dir / "config.json", '{"secret": 1}')
    write(data_dir / "user.css", "body { --user: 1; }\n")
    write(data_dir / "user.js", "window.user = 1;\n")
    (data_dir / "outside.js").write_text("window.outside = 1;\n")
    os.symlink(data_dir / "outside.js", folder / "javascript" / "z-link.js")
    extensions.list_extensions({"disabled_extensions": ["off"]}, flags())
    return folder


def test_file_route_serves_only_assets_of_enabled_extensions(web_ext, data_dir):
    from modules.ui.extension_routes import Refused, resolve

    assert resolve("extensions/web/javascript/a.js") == os.path.realpath(web_ext / "javascript" / "a.js")
    assert resolve("extensions/web/images/icon.svg").endswith("icon.svg")
    assert resolve("user.css") == str(data_dir / "user.css")
    refused = {
        "extensions/web/../../config.json": 403,
        "extensions/web/javascript/../../../config.json": 403,
        "extensions/../config.json": 403,
        "/etc/passwd": 403,
        str(data_dir / "config.json"): 403,
        "extensions/web/javascript/notes.py": 403,  # not a web asset
        "extensions/web/metadata.ini": 403,
        "extensions/web/.git/config": 403,  # hidden
        "extensions/web/javascript/z-link.js": 403,  # a symlink out of the extension
        "extensions\\web\\style.css": 403,
        "config.json": 403,
        "extensions/off/javascript/off.js": 404,  # disabled
        "extensions-builtin/web/style.css": 404,  # not a built-in
        "extensions/web/javascript/missing.js": 404,
        "extensions/web": 403,
    }
    for path, status in refused.items():
        with pytest.raises(Refused) as info:
            resolve(path)
        assert info.value.status == status, path


def test_file_and_opts_routes_over_http(web_ext):
    import fastapi
    from fastapi.testclient import TestClient

    from modules.ui import extension_routes

    app = fastapi.FastAPI(routes=extension_routes.routes(lambda request: True))
    client = TestClient(app)
    response = client.get("/file=extensions/web/javascript/a.js?123")
    assert response.status_code == 200 and response.text == "window.a = 1;\n"
    assert response.headers["content-type"].startswith("text/javascript")
    assert client.get("/file=extensions/web/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/file=extensions/web/%2e%2e/%2e%2e/config.json").status_code == 403
    assert client.get("/file=extensions/web/javascript/notes.py").status_code == 403
    opts = client.get("/internal/opts").json()
    assert opts["disable_all_extensions"] == shared.opts.data.get("disable_all_extensions", "none")
    locked = TestClient(fastapi.FastAPI(routes=extension_routes.routes(lambda request: False)))
    assert locked.get("/file=extensions/web/javascript/a.js").status_code == 401
    assert locked.get("/internal/opts").status_code == 401


def test_head_links_extension_and_user_files_after_our_scripts(web_ext):
    from modules.ui import assets

    head = assets.head()
    api = head.index("function gradioApp()")
    a, b = head.index('src="file=extensions/web/javascript/a.js?'), head.index('src="file=extensions/web/javascript/b.js?')
    assert api < a < b
    assert '<script type="module" src="file=extensions/web/javascript/m.mjs?' in head
    assert head.index('src="file=user.js?') > b
    style = head.index('href="file=extensions/web/style.css?')
    assert head.index('href="file=user.css?') > style
    assert "off.js" not in head and "notes.py" not in head
    assert "z-link.js" not in head  # would be refused: it leads out of the extension
