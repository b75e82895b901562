"""Extensions > Backup/Restore in the real page: save a config state, update and disable an extension through the
Installed tab (Apply restarts the server), restore the saved state, and see the old commit and enabled state after
the restart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .helpers import Server, make_data_dir, open_page, opened_page

EXT = "restorable"
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]


def git(folder: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, text: str, message: str) -> str:
    (repo / "style.css").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def states_server(tmp_path_factory, playwright_browser):
    root = tmp_path_factory.mktemp("config-states")
    source = root / "src" / EXT
    source.mkdir(parents=True)
    git(source, "init", "-q")
    commit(source, "body { --restorable: 1; }\n", "first")
    data_dir = make_data_dir(root / "data")
    (data_dir / "extensions").mkdir()
    git(data_dir, "clone", "-q", str(source), str(data_dir / "extensions" / EXT))
    srv = Server(data_dir, warm=True).start()
    srv.source = source  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.fixture
def states_page(playwright_browser, states_server):
    yield from opened_page(playwright_browser, states_server.url)


def row(pg) -> str:
    return pg.locator(f"#extensions_table tr:has(input[data-extension='{EXT}'])").inner_text()


def test_save_update_disable_then_restore(states_page, states_server):
    srv, pg = states_server, states_page
    folder = srv.data_dir / "extensions" / EXT
    old = git(folder, "rev-parse", "HEAD")
    pg.click("#tab_extensions-button")
    pg.click("#extensions_backup_tab-button")
    pg.locator("#extensions_config_name input, #extensions_config_name textarea").fill("before")
    pg.click("#extensions_config_save")
    pg.wait_for_selector("#extensions_config_result :text('Saved config state')")
    pg.wait_for_selector(f"#extensions_config_preview :text('{old[:8]}')")

    new = commit(srv.source, "body { --restorable: 2; }\n", "second")
    pg.click("#extensions_installed_tab-button")
    pg.click("#extensions_check")
    pg.wait_for_selector(f"#extensions_table input[data-update='{EXT}']:checked")
    pg.uncheck(f"#extensions_table input[data-extension='{EXT}']")
    with pg.expect_navigation(timeout=180_000):
        pg.click("#extensions_apply")
        pg.wait_for_selector("#extensions_installed_result :text('Restarting the server')")
    open_page(pg, srv.url)
    assert git(folder, "rev-parse", "HEAD") == new
    assert json.loads((srv.data_dir / "config.json").read_text())["disabled_extensions"] == [EXT]
    pg.click("#tab_extensions-button")
    assert new[:8] in row(pg) and not pg.is_checked(f"#extensions_table input[data-extension='{EXT}']")

    pg.click("#extensions_backup_tab-button")
    pg.click("#extensions_config_state input")
    # newest first: the automatic backup before Apply is listed above the state saved as "before"
    options = pg.locator("[role=option]")
    options.first.wait_for()
    labels = [t.replace("✓", "").strip() for t in options.all_inner_texts()]  # the chosen one is ticked
    assert labels[0].startswith("Backup (pre-apply)") and any(t.startswith("before (") for t in labels)
    pg.locator("[role=option]:has-text('before (')").first.click()
    pg.wait_for_selector(f"#extensions_config_preview :text('{old[:8]}')")
    assert "Restores extensions only" in pg.inner_text("#extensions_config_note")
    with pg.expect_navigation(timeout=180_000):
        pg.click("#extensions_config_restore")
        pg.wait_for_selector("#extensions_config_result :text('Restarting the server')")
        result = pg.inner_text("#extensions_config_result")
        assert f"{EXT}: restored to {old[:8]}" in result and f"{EXT}: enabled" in result
    open_page(pg, srv.url)
    assert git(folder, "rev-parse", "HEAD") == old
    pg.click("#tab_extensions-button")
    pg.wait_for_selector(f"#extensions_table input[data-extension='{EXT}']")
    assert old[:8] in row(pg) and "yes" in row(pg).split()  # "Loaded: yes" again
    assert pg.is_checked(f"#extensions_table input[data-extension='{EXT}']")
