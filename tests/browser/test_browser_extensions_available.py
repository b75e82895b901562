"""The Extensions tab's "Available" sub-tab and updating, in the real page: the index comes from an HTTP server on
127.0.0.1 started here (the web UI runs with --allow-private-downloads, which lets it fetch from loopback), its
entry points at a git repository that server serves (git's "dumb" HTTP: plain files), and the row's Install
button installs it; then Check for updates ticks an extension behind its remote and Apply and restart updates it."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Server, make_data_dir, open_page, opened_page

GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]


def git(folder: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_repo(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    (folder / "style.css").write_text(text)
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    return folder


@pytest.fixture(scope="module")
def www(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on 127.0.0.1 for the index and a bare repository; (its folder, its URL)."""
    root = tmp_path_factory.mktemp("index-www")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def available_server(tmp_path_factory, playwright_browser) -> Iterator[Server]:
    data_dir = make_data_dir(tmp_path_factory.mktemp("ext-available"))
    srv = Server(data_dir, "--allow-private-downloads", warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def ext_page(playwright_browser, available_server):
    yield from opened_page(playwright_browser, available_server.url)


def test_load_the_index_and_install_from_a_row(ext_page, available_server, www, tmp_path):
    root, base = www
    source = make_repo(tmp_path / "fancy", "body { --fancy: 1; }\n")
    git(root, "clone", "-q", "--bare", str(source), str(root / "fancy-ext.git"))
    git(root / "fancy-ext.git", "update-server-info")  # what a plain HTTP server needs to serve a clone
    index = {"tags": {"script": "a script", "ads": "has ads"}, "extensions": [
        {"name": "Fancy <b>Ext</b>", "url": f"{base}/fancy-ext.git", "tags": ["script"], "added": "2024-01-02",
         "stars": 7, "description": "<img src=x onerror=\"window.__pwned = 1\">makes things fancy"},
        {"name": "Advertised", "url": f"{base}/ads-ext.git", "tags": ["ads"], "added": "2024-01-03"},
        {"name": "no url at all"},
    ]}
    (root / "index.json").write_text(json.dumps(index))

    pg = ext_page
    pg.click("#tab_extensions-button")
    pg.click("#extensions_available_tab-button")
    pg.locator("#extensions_available_index_url textarea, #extensions_available_index_url input").fill(
        f"{base}/index.json")
    assert pg.locator("#available_extensions").count() == 0  # nothing is fetched before "Load from:"
    pg.click("#extensions_available_load")
    pg.wait_for_selector("#extensions_available_result :text('1 malformed entry skipped')")
    assert pg.inner_text("#extensions_available_result") == (
        f"Loaded 2 extensions from {base}/index.json; 1 malformed entry skipped.")
    row = pg.locator("#available_extensions tbody tr")
    assert row.count() == 1  # "Advertised" is hidden by the default "ads" filter
    assert "Extensions hidden: 1" in pg.inner_text("#extensions_available_html")
    cells = row.locator("td").all_inner_texts()
    assert cells[:5] == ["Fancy <b>Ext</b>", '<img src=x onerror="window.__pwned = 1">makes things fancy',
                         "script", "2024-01-02", "7"]  # shown as text, never as markup
    assert row.locator("a").get_attribute("href") == f"{base}/fancy-ext.git"
    assert pg.evaluate("window.__pwned") is None

    row.locator("button.extension-install").click()
    pg.wait_for_selector("#extensions_available_result :text('Restart the server to load it')")
    assert pg.inner_text("#extensions_available_result") == (
        "Installed into extensions/fancy-ext. Restart the server to load it.")
    installed = available_server.data_dir / "extensions" / "fancy-ext"
    assert (installed / "style.css").read_text() == "body { --fancy: 1; }\n"
    # installed now: hidden by the default "installed" filter; shown as "Installed" without it
    pg.wait_for_function("() => document.querySelectorAll('#available_extensions tbody tr').length === 0")
    pg.locator("#extensions_available_hide_tags label:has-text('installed')").click()
    pg.wait_for_selector("#available_extensions tr:has-text('Fancy') .extension-installed")
    assert pg.locator("#available_extensions button.extension-install").count() == 0
    pg.click("#extensions_installed_tab-button")
    pg.wait_for_selector("#extensions_table input[data-extension='fancy-ext']")
    assert f"{base}/fancy-ext.git" in pg.inner_text("#extensions_table tr:has(input[data-extension='fancy-ext'])")


def test_check_for_updates_ticks_update_and_apply_updates_then_restarts(ext_page, available_server, tmp_path):
    source = make_repo(tmp_path / "upd-source", "body { --upd: 1; }\n")
    target = available_server.data_dir / "extensions" / "upd-ext"
    git(tmp_path, "clone", "-q", str(source), str(target))
    old = git(target, "rev-parse", "HEAD")
    (source / "style.css").write_text("body { --upd: 2; }\n")
    git(source, "commit", "-qam", "second")
    new = git(source, "rev-parse", "HEAD")

    pg = ext_page
    open_page(pg, available_server.url)  # the table lists what is on disk when the page opens
    pg.click("#tab_extensions-button")
    pg.wait_for_selector("#extensions_table input[data-extension='upd-ext']")
    assert pg.locator("#extensions_table input[data-update]").count() == 0
    pg.click("#extensions_check")
    pg.wait_for_selector("#extensions_installed_result :text('Updates available for: upd-ext.')")
    box = pg.locator("#extensions_table input[data-update='upd-ext']")
    assert box.is_checked()
    assert git(target, "rev-parse", "HEAD") == old  # checking changes nothing
    with pg.expect_navigation(timeout=180_000):
        pg.click("#extensions_apply")
        pg.wait_for_selector("#extensions_installed_result :text('Restarting the server')")
        assert f"upd-ext: updated to {new[:8]}" in pg.inner_text("#extensions_installed_result")
    assert git(target, "rev-parse", "HEAD") == new
    assert (target / "style.css").read_text() == "body { --upd: 2; }\n"
    open_page(pg, available_server.url)
    pg.click("#tab_extensions-button")
    row = pg.locator("#extensions_table tr:has(input[data-extension='upd-ext'])")
    row.wait_for()
    assert new[:8] in row.inner_text() and row.locator("input[data-update]").count() == 0
    style = "getComputedStyle(document.body).getPropertyValue('--upd').trim()"
    pg.wait_for_function(f"() => {style} === '2'")  # the restarted server serves the new version
