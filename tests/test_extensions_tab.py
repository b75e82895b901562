"""The Extensions tab against local git repositories (no network): install from a path or file:// URL, the
refusals (bad names, existing folders, a server others can reach), Apply, and Check for updates."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from modules import extension_manager, extensions, paths, shared
from modules.ui import extensions_tab

GIT_ID = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_ID, "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit_file(repo: Path, name: str, text: str, message: str) -> None:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


@pytest.fixture
def source(tmp_path) -> Path:
    """A tiny extension in its own git repository, with a second branch."""
    repo = tmp_path / "src" / "tiny-ext.git"
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    commit_file(repo, "javascript/tiny.js", "window.tiny = 1;\n", "first")
    commit_file(repo, "install.py", f"open({str(tmp_path / 'installed')!r}, 'a').write('x')\n", "installer")
    git(repo, "branch", "dev")
    return repo


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    (root / "extensions").mkdir(parents=True)
    monkeypatch.setattr(paths, "data_path", str(root))
    monkeypatch.setattr(paths, "extensions_dir", str(root / "extensions"))
    monkeypatch.setattr(paths, "extensions_builtin_dir", str(tmp_path / "no-builtin"))
    monkeypatch.setattr(extensions, "extensions", [])
    monkeypatch.setattr(extensions, "errors", [])
    monkeypatch.setattr(extensions_tab, "update_status", {})
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args([]))
    monkeypatch.setattr(shared, "config_filename", str(root / "config.json"))
    for key in ("disabled_extensions", "disable_all_extensions"):
        monkeypatch.setitem(shared.opts.data, key, shared.opts.data_labels[key].default)
    return root


def install(url: str, branch: str = "", dirname: str = "") -> list[str]:
    return list(extension_manager.install_from_url(url, branch, dirname))


def test_install_from_a_local_path_runs_install_py_and_shows_in_the_table(source, data_dir, tmp_path):
    steps = install(str(source))
    target = data_dir / "extensions" / "tiny-ext"  # the name from the URL, without .git
    assert (target / "javascript" / "tiny.js").read_text() == "window.tiny = 1;\n"
    assert steps[0].startswith(f"Cloning {source} into extensions/tiny-ext")
    assert steps[-1] == "Installed into extensions/tiny-ext. Restart the server to load it."
    assert (tmp_path / "installed").read_text() == "x"
    assert [p.name for p in (data_dir / "extensions").iterdir()] == ["tiny-ext"]  # no staging folder left
    table = extensions_tab.table_html()
    assert "tiny-ext" in table and str(source) in table and ">main<" in table
    assert git(source, "rev-parse", "HEAD")[:8] in table
    assert "name='enable_tiny-ext'" in table and " checked" in table


def test_install_from_a_file_url_with_branch_and_folder_name(source, data_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--skip-install"]))
    steps = install(f"file://{source}", "dev", "my-tiny")
    target = data_dir / "extensions" / "my-tiny"
    assert git(target, "rev-parse", "--abbrev-ref", "HEAD") == "dev"
    assert "Not running its install.py (--skip-install)." in steps
    assert not (tmp_path / "installed").exists()
    ext = extensions.Extension("my-tiny", str(target))
    assert ext.remote == f"file://{source}" and ext.branch == "dev" and len(ext.commit_hash or "") == 40
    assert ext.version == (ext.commit_hash or "")[:8] and ext.commit_date


@pytest.mark.parametrize(("dirname", "message"), [
    ("a/b", "is not allowed"),
    ("..", "is not allowed"),
    (".hidden", "is not allowed"),
    ("a\\b", "is not allowed"),
])
def test_bad_folder_names_are_refused(source, data_dir, dirname, message):
    with pytest.raises(extension_manager.ExtensionError, match=message):
        install(str(source), "", dirname)
    assert list((data_dir / "extensions").iterdir()) == []


def test_an_existing_folder_or_the_same_url_is_refused(source, data_dir):
    (data_dir / "extensions" / "taken").mkdir()
    with pytest.raises(extension_manager.ExtensionError, match="extensions/taken already exists"):
        install(str(source), "", "taken")
    install(str(source))
    with pytest.raises(extension_manager.ExtensionError, match="already installed, as extensions/tiny-ext"):
        install(str(source) + "/", "", "again")


def test_clear_errors_for_no_url_a_missing_repository_and_a_missing_branch(source, data_dir, tmp_path):
    with pytest.raises(extension_manager.ExtensionError, match="No URL given"):
        install("  ")
    with pytest.raises(extension_manager.ExtensionError, match="may not start with '-'"):
        install("--upload-pack=touch x")
    with pytest.raises(extension_manager.ExtensionError, match=f"Could not clone {tmp_path}/nowhere: git clone failed"):
        install(str(tmp_path / "nowhere"))
    with pytest.raises(extension_manager.ExtensionError, match="Could not clone"):
        install(str(source), "no-such-branch")
    assert list((data_dir / "extensions").iterdir()) == []  # nothing half-installed


@pytest.mark.parametrize(("argv", "refused"), [
    ([], None),
    (["--server-name", "127.0.0.1"], None),
    (["--server-name", "localhost"], None),
    (["--server-name", "::1"], None),
    (["--listen"], "--listen"),
    (["--share"], "--share"),
    (["--ngrok", "token"], "--ngrok"),
    (["--server-name", "0.0.0.0"], "--server-name"),
    (["--server-name", "example.com"], "--server-name"),
    (["--listen", "--enable-insecure-extension-access"], None),
])
def test_access_refused_when_others_can_reach_the_server(argv, refused):
    message = extension_manager.access_refusal(shared.parser.parse_args(argv))
    if refused is None:
        assert message is None
    else:
        assert refused in message and "--enable-insecure-extension-access" in message
        assert "token" not in message


def test_install_apply_and_check_are_refused_when_listening(source, data_dir, monkeypatch):
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--listen"]))
    with pytest.raises(extension_manager.ExtensionError, match="--listen"):
        install(str(source))
    assert list((data_dir / "extensions").iterdir()) == []
    result, _ = extensions_tab.apply("[]", "none")
    assert "--listen" in result and not (data_dir / "config.json").exists()
    outputs = list(extensions_tab.install(str(source), "", ""))
    assert "--listen" in outputs[-1][0] and "class='error'" in outputs[-1][0]
    assert " disabled" in extensions_tab.table_html() or "No extensions" in extensions_tab.table_html()
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--listen", "--enable-insecure-extension-access"]))
    assert install(str(source))[-1].startswith("Installed into extensions/tiny-ext")


def test_check_for_updates_after_a_new_commit_in_the_source(source, data_dir):
    install(str(source))
    *_, (summary, table) = extensions_tab.check_for_updates()
    assert "All extensions are up to date." in summary and ">latest<" in table
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    steps = list(extensions_tab.check_for_updates())
    assert "Checked 1 of 1: tiny-ext: 1 new commit" in steps[0][0]
    assert "Updates available for: tiny-ext." in steps[-1][0] and "> 1 new commit</label>" in steps[-1][1]
    ext = extensions.Extension("tiny-ext", str(data_dir / "extensions" / "tiny-ext"))
    ext.check_updates()
    assert ext.can_update and ext.status == "1 new commit"


def test_check_for_updates_says_why_when_it_cannot(source, data_dir):
    install(str(source))
    git(data_dir / "extensions" / "tiny-ext", "remote", "set-url", "origin", str(data_dir / "gone"))
    ext = extensions.scan()[0]
    ext.check_updates()
    assert not ext.can_update and ext.status.startswith("unknown (git fetch failed")
    plain = data_dir / "extensions" / "plain"
    plain.mkdir()
    ext = extensions.Extension("plain", str(plain))
    ext.check_updates()
    assert ext.status == "unknown (not a git repository)" and ext.remote is None and ext.version == ""


def test_a_folder_without_its_own_git_does_not_report_the_enclosing_repository(data_dir, tmp_path):
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    commit_file(outer, "f", "x", "outer commit")
    inner = outer / "extensions" / "inner"
    inner.mkdir(parents=True)
    ext = extensions.Extension("inner", str(inner))
    assert ext.commit_hash is None and ext.remote is None and ext.branch is None


def test_apply_saves_the_disabled_list_and_keeps_names_not_installed(source, data_dir, monkeypatch):
    from modules import restart

    restarts = []
    monkeypatch.setattr(restart, "request_restart", lambda: restarts.append(True))
    install(str(source))
    (data_dir / "extensions" / "other").mkdir()
    shared.opts.data["disabled_extensions"] = ["gone-for-now"]
    result, table = extensions_tab.apply(json.dumps(["other"]), "extra")
    assert "Restarting the server" in result and restarts == [True]  # the change loads on the restart
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["disabled_extensions"] == ["gone-for-now", "tiny-ext"]
    assert saved["disable_all_extensions"] == "extra"
    assert "name='enable_tiny-ext' data-extension='tiny-ext' aria-label" in table  # unchecked now
    assert "name='enable_other' data-extension='other' checked" in table
    assert "Nothing changed." in extensions_tab.apply(json.dumps(["other"]), "extra")[0]
    assert restarts == [True]  # nothing changed: no restart
    assert "class='error'" in extensions_tab.apply("not json", "none")[0]
    assert "class='error'" in extensions_tab.apply("[]", "sometimes")[0]


def test_errors_are_listed_for_the_page(data_dir):
    assert extensions_tab.errors_html() == ""
    extensions.report('Error running preload.py of extension "x<y>": boom')
    assert "x&lt;y&gt;" in extensions_tab.errors_html()


def test_the_tab_builds(data_dir):
    import gradio as gr

    from modules.ui.page_load import PageLoad

    with gr.Blocks() as demo, gr.Tabs():
        extensions_tab.build(PageLoad())
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"tab_extensions", "extensions_apply", "extensions_check", "extensions_install_url",
            "extensions_install_button", "extensions_installed_html", "extensions_available_load",
            "extensions_available_index_url", "extensions_available_html", "extensions_available_install_url",
            "extensions_available_install_button"} <= ids


# --- updating ----------------------------------------------------------------------------------------------------


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


def test_check_ticks_update_and_apply_resets_to_the_new_upstream_commit(source, data_dir, monkeypatch):
    from modules import restart

    restarts = []
    monkeypatch.setattr(restart, "request_restart", lambda: restarts.append(True))
    install(str(source))
    target = data_dir / "extensions" / "tiny-ext"
    *_, (_, table) = extensions_tab.check_for_updates()
    assert "data-update=" not in table  # up to date: no update box
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    *_, (summary, table) = extensions_tab.check_for_updates()
    assert "Updates available for: tiny-ext." in summary
    assert "<input type='checkbox' name='update_tiny-ext' data-update='tiny-ext' checked" in table
    result, table = extensions_tab.apply(json.dumps(["tiny-ext"]), "none", json.dumps(["tiny-ext"]))
    new = head(source)
    assert head(target) == new and (target / "javascript" / "tiny.js").read_text() == "window.tiny = 2;\n"
    assert f"tiny-ext: updated to {new[:8]}" in result and "Restarting the server" in result and restarts == [True]
    assert "data-update=" not in table and f"updated to {new[:8]}" in table and f"<code>{new[:8]}</code>" in table
    result, _ = extensions_tab.apply(json.dumps(["tiny-ext"]), "none", json.dumps(["tiny-ext"]))
    assert f"tiny-ext: already up to date ({new[:8]})" in result and "Nothing changed." in result
    assert restarts == [True]  # nothing new: no restart


def test_an_unticked_extension_is_not_updated(source, data_dir, monkeypatch):
    from modules import restart

    monkeypatch.setattr(restart, "request_restart", lambda: None)
    install(str(source))
    before = head(data_dir / "extensions" / "tiny-ext")
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    list(extensions_tab.check_for_updates())
    extensions_tab.apply(json.dumps(["tiny-ext"]), "none", "[]")
    assert head(data_dir / "extensions" / "tiny-ext") == before


def clone_into(data_dir: Path, source: Path, name: str) -> Path:
    target = data_dir / "extensions" / name
    git(data_dir, "clone", "-q", str(source), str(target))
    return target


def test_a_failed_update_is_reported_and_the_others_still_update(source, data_dir, tmp_path):
    gone = clone_into(data_dir, source, "a-gone")
    git(gone, "remote", "set-url", "origin", str(tmp_path / "nowhere"))
    edited = clone_into(data_dir, source, "b-edited")
    (edited / "javascript" / "tiny.js").write_text("my own change\n")
    detached = clone_into(data_dir, source, "c-detached")
    git(detached, "checkout", "-q", "--detach", "HEAD")
    ahead = clone_into(data_dir, source, "d-ahead")
    commit_file(ahead, "mine.txt", "x", "a local commit")
    mode_only = clone_into(data_dir, source, "e-mode-only")
    (mode_only / "install.py").chmod(0o755)  # the WSL2 case A1111 resets for: not a change of the person's
    clone_into(data_dir, source, "f-good")
    (data_dir / "extensions" / "g-plain").mkdir()
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    new = head(source)
    results = {r.name: r for r in extension_manager.update_extensions(
        ["a-gone", "b-edited", "c-detached", "d-ahead", "e-mode-only", "f-good", "g-plain", "not-installed"])}
    assert set(results) == {"a-gone", "b-edited", "c-detached", "d-ahead", "e-mode-only", "f-good", "g-plain"}
    assert results["a-gone"].message.startswith("a-gone: not updated: git fetch failed")
    assert results["b-edited"].message == ("b-edited: not updated: 1 tracked file(s) changed here; left as it is "
                                           "(commit, stash or undo the changes, then update)")
    assert results["c-detached"].message == "c-detached: not updated: not on a branch (detached HEAD); left as it is"
    assert results["d-ahead"].message == "d-ahead: not updated: 1 local commit(s) not on its remote branch; left as it is"
    assert results["g-plain"].message == "g-plain: not updated: not a git repository"
    assert all(results[n].status == "failed" for n in ("a-gone", "b-edited", "c-detached", "d-ahead", "g-plain"))
    for name in ("e-mode-only", "f-good"):
        assert results[name].status == "updated" and results[name].message == f"{name}: updated to {new[:8]}"
        assert head(data_dir / "extensions" / name) == new
    assert (edited / "javascript" / "tiny.js").read_text() == "my own change\n"  # the person's work is kept
    assert head(detached) != new and head(ahead) != new


def test_apply_shows_each_failure_and_does_not_restart_for_failures_alone(source, data_dir, monkeypatch, tmp_path):
    from modules import restart

    restarts = []
    monkeypatch.setattr(restart, "request_restart", lambda: restarts.append(True))
    gone = clone_into(data_dir, source, "gone")
    git(gone, "remote", "set-url", "origin", str(tmp_path / "nowhere"))
    result, table = extensions_tab.apply(json.dumps(["gone"]), "none", json.dumps(["gone"]))
    assert "<div class='error'>gone: not updated: git fetch failed" in result and "Nothing changed." in result
    assert restarts == [] and "not updated: git fetch failed" in table


def test_updating_is_refused_when_listening(source, data_dir, monkeypatch):
    install(str(source))
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    before = head(data_dir / "extensions" / "tiny-ext")
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--listen"]))
    with pytest.raises(extension_manager.ExtensionError, match="--listen"):
        extension_manager.update_extensions(["tiny-ext"])
    result, _ = extensions_tab.apply(json.dumps(["tiny-ext"]), "none", json.dumps(["tiny-ext"]))
    assert "--listen" in result and head(data_dir / "extensions" / "tiny-ext") == before


def test_update_all_extensions_at_launch_updates_before_the_installers(source, data_dir, monkeypatch, tmp_path,
                                                                       capsys):
    import sys
    import types

    import launch
    from modules import cmd_args

    assert "--update-all-extensions" in cmd_args.EFFECTIVE_FLAGS
    good = clone_into(data_dir, source, "good")
    gone = clone_into(data_dir, source, "gone")
    git(gone, "remote", "set-url", "origin", str(tmp_path / "nowhere"))
    off = clone_into(data_dir, source, "off")
    (data_dir / "config.json").write_text(json.dumps({"disabled_extensions": ["off"]}))
    # upstream: a new install.py, which must run at this very start (its version is the new commit)
    commit_file(source, "install.py", f"open({str(tmp_path / 'installed')!r}, 'a').write('new')\n", "new installer")
    new = head(source)
    monkeypatch.setattr(launch, "prepare_environment", lambda args: None)  # no pip in a test
    monkeypatch.setattr(launch, "args", launch.args)  # main() replaces it: put back afterwards
    monkeypatch.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: None))
    for name in ("models_path", "sd_model_dir", "vae_dir"):  # launch.main re-points them at --data-dir
        monkeypatch.setattr(paths, name, getattr(paths, name))
    try:
        assert launch.main(["--exit", "--update-all-extensions", "--data-dir", str(data_dir)]) == 0
    finally:
        shared.set_cmd_opts(shared.parser.parse_args([]))
    assert head(good) == new
    # updated before the installers ran: good's new install.py ran, its old one did not (gone's old one did)
    assert sorted((tmp_path / "installed").read_text().replace("new", "N")) == ["N", "x"]
    assert head(off) != new  # disabled: left alone
    assert f"Extension good: updated to {new[:8]}" in capsys.readouterr().out
    assert any(e.startswith("Could not update extension gone: not updated: git fetch failed")
               for e in extensions.errors)
