"""Extensions > Backup/Restore (config states) against local git repositories (no network): saving, the automatic
save before Apply, the list, restoring commits and enabled state, and refusing hostile state files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import test_extensions_tab
from test_extensions_tab import clone_into, commit_file, git, head

from modules import config_states, extension_manager, restart, shared
from modules.ui import extensions_tab

# the extension repository and data dir fixtures of the Extensions tab's tests
source = test_extensions_tab.source
data_dir = test_extensions_tab.data_dir


@pytest.fixture
def restarts(monkeypatch) -> list[bool]:
    calls: list[bool] = []
    monkeypatch.setattr(restart, "request_restart", lambda: calls.append(True))
    return calls


def states(data_dir: Path) -> list[Path]:
    folder = data_dir / "config_states"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_save_writes_a1111_shape_without_credentials(source, data_dir):
    target = clone_into(data_dir, source, "tiny-ext")
    git(target, "remote", "set-url", "origin", "https://user:ghp_secret123@example.invalid/a/tiny-ext.git")
    (data_dir / "extensions" / "plain").mkdir()
    shared.opts.data["disabled_extensions"] = ["plain"]
    filename = config_states.save("my state/../x")
    assert "/" not in filename and filename.endswith("_my_state_x.json")
    assert (data_dir / "config_states" / filename).is_file()
    text = (data_dir / "config_states" / filename).read_text()
    assert "ghp_secret123" not in text and "user:" not in text
    state = json.loads(text)
    assert state["name"] == "my state/../x" and isinstance(state["created_at"], float)
    assert set(state["webui"]) == {"remote", "commit_hash", "commit_date", "branch"}
    ext = state["extensions"]["tiny-ext"]
    assert ext == {"name": "tiny-ext", "path": str(target), "enabled": True, "is_builtin": False,
                   "remote": "https://example.invalid/a/tiny-ext.git", "commit_hash": head(target),
                   "commit_date": ext["commit_date"], "branch": "main", "have_info_from_repo": True}
    assert isinstance(ext["commit_date"], int)
    assert state["extensions"]["plain"]["enabled"] is False and state["extensions"]["plain"]["commit_hash"] is None


def test_apply_saves_a_state_first_and_drops_it_when_nothing_changed(source, data_dir, restarts):
    clone_into(data_dir, source, "tiny-ext")
    result, _ = extensions_tab.apply(json.dumps([]), "none")
    assert "Restarting the server" in result
    [backup] = states(data_dir)
    state = json.loads(backup.read_text())
    assert state["name"] == "Backup (pre-apply)"
    assert state["extensions"]["tiny-ext"]["enabled"] is True  # the state before the change
    assert "Nothing changed." in extensions_tab.apply(json.dumps([]), "none")[0]
    assert states(data_dir) == [backup]  # no backup kept for an Apply that changed nothing


def test_states_are_listed_newest_first(data_dir):
    first = config_states.save("one")
    second = config_states.save("two")
    os.utime(data_dir / "config_states" / first)
    (data_dir / "config_states" / "garbage.json").write_text("{not json")
    listed = config_states.list_states()
    assert [f for _, f in listed] == [second, first, "garbage.json"]
    assert listed[0][0].startswith("two (") and listed[2][0] == "garbage.json (unreadable)"
    state = json.loads((data_dir / "config_states" / first).read_text())
    state["created_at"] = time.time() + 100  # order by the time saved in the state
    (data_dir / "config_states" / first).write_text(json.dumps(state))
    assert [f for _, f in config_states.list_states()][:2] == [first, second]


def test_restore_moves_back_and_restores_enabled(source, data_dir, restarts):
    target = clone_into(data_dir, source, "tiny-ext")
    old = head(target)
    saved = config_states.save("before")
    preview = config_states.preview_html(saved)
    assert "<td>tiny-ext</td><td>yes</td>" in preview and f"<code>{old[:8]}</code>" in preview
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    assert extension_manager.update_extensions(["tiny-ext"])[0].status == "updated"
    extensions_tab.apply(json.dumps([]), "none")  # disable it
    assert head(target) != old and shared.opts.data["disabled_extensions"] == ["tiny-ext"]
    restarts.clear()

    result, table, _ = extensions_tab.restore_state(saved, "extensions")
    assert head(target) == old and git(target, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert (target / "javascript" / "tiny.js").read_text() == "window.tiny = 1;\n"
    assert f"tiny-ext: restored to {old[:8]}" in result and "tiny-ext: enabled" in result
    assert "Restarting the server" in result and restarts == [True]
    assert shared.opts.data["disabled_extensions"] == []
    assert json.loads((data_dir / "config.json").read_text())["disabled_extensions"] == []
    assert f"<code>{old[:8]}</code>" in table
    assert any(json.loads(p.read_text())["name"] == "Backup (pre-restore)" for p in states(data_dir))
    # the branch still follows its remote: the updater sees the newer commit again
    ext = [e for e in extensions_tab.extensions.scan() if e.name == "tiny-ext"][0]
    ext.check_updates()
    assert ext.status == "1 new commit"
    restarts.clear()
    result, _, _ = extensions_tab.restore_state(saved, "extensions")
    assert f"tiny-ext: already at {old[:8]}" in result and "Nothing changed." in result and restarts == []


def test_restore_fetches_a_commit_it_does_not_have(source, data_dir, restarts):
    target = clone_into(data_dir, source, "tiny-ext")
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    new = head(source)
    path = data_dir / "config_states" / "x_fetch.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"name": "n", "created_at": 1.0, "extensions": {
        "tiny-ext": {"enabled": True, "commit_hash": new, "branch": "main"}}}))
    report = config_states.restore("x_fetch.json")
    assert report.problems == [] and head(target) == new


def test_not_installed_extensions_are_reported_never_installed(source, data_dir, restarts):
    clone_into(data_dir, source, "tiny-ext")
    saved = config_states.save("with both")
    state = json.loads((data_dir / "config_states" / saved).read_text())
    state["extensions"]["gone-ext"] = dict(state["extensions"]["tiny-ext"], name="gone-ext")
    (data_dir / "config_states" / saved).write_text(json.dumps(state))
    assert "<td>gone-ext</td><td>yes</td>" in config_states.preview_html(saved)
    assert "<td>no</td><td></td></tr>" in config_states.preview_html(saved)  # installed now: no
    report = config_states.restore(saved)
    assert report.problems == ["gone-ext: not installed; not restored (install it yourself if you want it)"]
    assert not (data_dir / "extensions" / "gone-ext").exists()


def hostile(data_dir: Path, name: str, content: str | bytes) -> str:
    folder = data_dir / "config_states"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return name


def test_hostile_states_are_refused_by_name(source, data_dir, restarts):
    target = clone_into(data_dir, source, "tiny-ext")
    before = head(target)
    good = {"enabled": False, "commit_hash": before}
    entries = {"../tiny-ext": good, "/tmp/tiny-ext": good, "a\\b": good, "tiny-ext": {"commit_hash": "HEAD~1"},
               "x": "not an object"}
    name = hostile(data_dir, "bad.json", json.dumps({"name": "bad", "created_at": 1, "extensions": entries}))
    report = config_states.restore(name)
    assert report.problems == ["../tiny-ext: skipped: not a plain extension folder name",
                               "/tmp/tiny-ext: skipped: not a plain extension folder name",
                               "a\\b: skipped: not a plain extension folder name",
                               "tiny-ext: skipped: its commit is not 7-40 hex digits",
                               "x: skipped: not an object"]
    assert head(target) == before and shared.opts.data["disabled_extensions"] == [] and not report.changed
    for branch in ("--upload-pack=x", "a..b"):
        entries = {"tiny-ext": {"commit_hash": before, "branch": branch}}
        hostile(data_dir, "branch.json", json.dumps({"extensions": entries}))
        assert config_states.restore("branch.json").problems == ["tiny-ext: skipped: its branch is not a plain "
                                                                 "branch name"]

    hostile(data_dir, "text.json", "not json at all")
    hostile(data_dir, "list.json", "[1, 2]")
    hostile(data_dir, "huge.json", b" " * (config_states.MAX_BYTES + 1) + b"{}")
    for filename, why in (("text.json", "text.json is not JSON"), ("list.json", "list.json is not a config state"),
                          ("huge.json", "huge.json is larger than 1024 kB"),
                          ("../config.json", "'../config.json' is not a config state file name"),
                          ("missing.json", "cannot read missing.json")):
        with pytest.raises(config_states.StateError, match=why.replace("(", r"\(")):
            config_states.restore(filename)
        result, _, _ = extensions_tab.restore_state(filename, "extensions")
        assert "Not restored" in result and "class='error'" in result
    assert restarts == [] and head(target) == before
    assert "Only extensions can be restored here." in extensions_tab.restore_state("bad.json", "webui")[0]
    # a name with markup is escaped in the page
    hostile(data_dir, "xss.json", json.dumps({"extensions": {"<img src=x onerror=alert(1)>": {}}}))
    assert "<img" not in config_states.preview_html("xss.json")
    assert "<img" not in extensions_tab.restore_state("xss.json", "extensions")[0]


def test_an_extension_with_local_edits_is_left_and_reported(source, data_dir, restarts):
    edited = clone_into(data_dir, source, "edited")
    ahead = clone_into(data_dir, source, "ahead")
    old = head(edited)
    saved = config_states.save("old")
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    extension_manager.update_extensions(["edited", "ahead"])
    (edited / "javascript" / "tiny.js").write_text("my own change\n")
    commit_file(ahead, "mine.txt", "x", "a local commit")
    mine = head(ahead)
    report = config_states.restore(saved)
    assert report.problems == [
        "ahead: not restored: 1 local commit(s) not on its remote; left as it is",
        "edited: not restored: tracked files changed here; left as it is (commit, stash or undo the changes, "
        "then restore)"]
    assert (edited / "javascript" / "tiny.js").read_text() == "my own change\n" and head(edited) != old
    assert head(ahead) == mine


def test_saving_and_restoring_are_refused_when_listening(source, data_dir, monkeypatch, restarts):
    target = clone_into(data_dir, source, "tiny-ext")
    saved = config_states.save("before")
    commit_file(source, "javascript/tiny.js", "window.tiny = 2;\n", "second")
    extension_manager.update_extensions(["tiny-ext"])
    new = head(target)
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--listen"]))
    with pytest.raises(extension_manager.ExtensionError, match="--listen"):
        config_states.save("x")
    with pytest.raises(extension_manager.ExtensionError, match="--listen"):
        config_states.restore(saved)
    assert "--listen" in extensions_tab.save_state("x")[0]
    assert "--listen" in extensions_tab.restore_state(saved, "extensions")[0]
    assert "--listen" in extensions_tab.apply("[]", "none")[0]
    assert head(target) == new and [p.name for p in states(data_dir)] == [saved] and restarts == []


def test_the_tab_has_backup_restore(data_dir):
    import gradio as gr

    from modules.ui.page_load import PageLoad

    with gr.Blocks() as demo, gr.Tabs():
        extensions_tab.build(PageLoad())
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"extensions_backup_tab", "extensions_config_state", "extensions_config_restore",
            "extensions_config_restore_type", "extensions_config_name", "extensions_config_save",
            "extensions_config_note"} <= ids
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "extensions_config_restore_type")
    assert radio.choices == [("extensions", "extensions")]
