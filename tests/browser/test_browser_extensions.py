"""An extension's javascript/*.js and style.css, and the data dir's user.js / user.css, in the real page: they
run with A1111's globals (onUiLoaded once, onUiUpdate, onAfterUiUpdate, onUiTabChange, opts, onOptionsChanged),
and the `file=` route serves the extension's files and nothing outside them."""

from __future__ import annotations

import http.client
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from .helpers import Server, make_data_dir, open_page, opened_page

EXT = "tester"
SECRET = "ext-test-secret-value"

EXTENSION_JS = """
(() => {
    const t = window.extTest = {loaded: 0, updates: 0, afterUpdates: 0, tabs: [], contents: [], optionsChanged: 0,
                                optionsAvailable: 0, optsAtLoad: null, promptAtLoad: false};
    document.documentElement.dataset.extScriptRan = "yes";
    onUiLoaded(() => {
        t.loaded += 1;
        t.optsAtLoad = opts.api_max_steps;
        t.promptAtLoad = gradioApp().querySelector("#txt2img_prompt") !== null;
        const marker = document.createElement("div");
        marker.id = "ext_test_marker";
        marker.textContent = "extension script ran";
        document.body.appendChild(marker);
    });
    onUiUpdate((mutations) => { if (mutations && mutations.length) t.updates += 1; });
    onAfterUiUpdate(() => { t.afterUpdates += 1; });
    onUiTabChange(() => {
        const tab = get_uiCurrentTab();
        const content = get_uiCurrentTabContent();
        t.tabs.push(tab ? tab.textContent.trim() : null);
        t.contents.push(content ? content.id : null);
    });
    onOptionsChanged(() => { t.optionsChanged += 1; t.clipSkip = opts.CLIP_stop_at_last_layers; });
    onOptionsAvailable(() => { t.optionsAvailable += 1; });
})();
"""


@pytest.fixture(scope="module")
def ext_server(tmp_path_factory, playwright_browser):
    data_dir = make_data_dir(tmp_path_factory.mktemp("ext-assets"))
    folder = data_dir / "extensions" / EXT
    (folder / "javascript").mkdir(parents=True)
    (folder / "javascript" / "x.js").write_text(textwrap.dedent(EXTENSION_JS))
    (folder / "style.css").write_text("body { --ext-test: 7; }\n")
    (data_dir / "user.css").write_text("body { --user-test: 8; }\n")
    (data_dir / "user.js").write_text("window.userJsRan = typeof onUiLoaded === 'function';\n")
    (data_dir / "config.json").write_text(json.dumps({"ext_test_secret": SECRET}))
    srv = Server(data_dir, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def ext_page(playwright_browser, ext_server):
    yield from opened_page(playwright_browser, ext_server.url)


def test_extension_script_runs_with_a1111_globals(ext_page):
    pg = ext_page
    pg.wait_for_selector("#ext_test_marker")
    assert pg.evaluate("document.documentElement.dataset.extScriptRan") == "yes"
    state = pg.evaluate("window.extTest")
    assert state["promptAtLoad"] is True
    assert state["optsAtLoad"] == 500  # `opts` is filled before onUiLoaded
    assert state["optionsAvailable"] == 1
    pg.wait_for_function("() => window.extTest.afterUpdates > 0 && window.extTest.updates > 0")
    assert pg.evaluate("window.userJsRan") is True  # user.js runs after the API exists

    pg.click("#tab_pnginfo-button")
    pg.wait_for_function("() => window.extTest.tabs.includes('PNG Info')")
    state = pg.evaluate("window.extTest")
    assert state["contents"][state["tabs"].index("PNG Info")] == "tab_pnginfo"
    pg.click("#tab_txt2img-button")
    pg.wait_for_function("() => window.extTest.tabs[window.extTest.tabs.length - 1] === 'txt2img'")
    pg.wait_for_timeout(500)
    assert pg.evaluate("window.extTest.loaded") == 1  # once, whatever happened after


def test_extension_and_user_styles_apply(ext_page):
    style = "(name) => getComputedStyle(document.body).getPropertyValue(name).trim()"
    ext_page.wait_for_function(f"() => ({style})('--ext-test') === '7' && ({style})('--user-test') === '8'")


def test_options_changed_fires_when_a_setting_changes(ext_page):
    pg = ext_page
    pg.wait_for_selector("#ext_test_marker")
    assert pg.evaluate("opts.CLIP_stop_at_last_layers") == 1
    box = pg.locator("#setting_CLIP_stop_at_last_layers input[type=number]")  # the quicksettings bar
    box.fill("3")
    box.press("Tab")  # leaving the box saves the setting, as letting go of the slider does
    pg.wait_for_function("() => window.extTest.optionsChanged === 1 && window.extTest.clipSkip === 3")
    assert pg.evaluate("opts.CLIP_stop_at_last_layers") == 3
    pg.wait_for_timeout(1500)
    assert pg.evaluate("window.extTest.optionsChanged") == 1  # once per change


def _raw_get(server: Server, path: str) -> tuple[int, bytes]:
    """A request sent as written: HTTP clients and browsers remove `..` before sending."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_file_route_serves_the_extension_and_nothing_outside(ext_page, ext_server):
    response = ext_page.request.get(f"{ext_server.url}file=extensions/{EXT}/javascript/x.js")
    assert response.ok and "window.extTest" in response.text()
    assert response.headers["content-type"].startswith("text/javascript")
    for path in (f"/file=extensions/{EXT}/../../config.json", f"/file=extensions/{EXT}/%2e%2e/%2e%2e/config.json",
                 "/file=config.json", f"/file={Path(ext_server.data_dir, 'config.json')}",
                 f"/file=extensions/{EXT}/javascript/../../../config.json"):
        status, body = _raw_get(ext_server, path)
        assert status in (403, 404), (path, status)
        assert SECRET.encode() not in body, path
    status, _ = _raw_get(ext_server, f"/file=extensions/{EXT}/../../config.json")
    assert status == 403


def _source_repo(folder: Path) -> Path:
    """A tiny extension in a local git repository (no network here)."""
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-C", str(folder)]
    folder.mkdir(parents=True)
    subprocess.run([*git, "init", "-q"], check=True)
    (folder / "style.css").write_text("body { --installed: 1; }\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    return folder


def test_extensions_tab_apply_install_and_check(ext_page, ext_server, tmp_path):
    pg = ext_page
    pg.click("#tab_extensions-button")
    pg.wait_for_selector("#extensions_table input[data-extension='tester']")
    pg.uncheck("#extensions_table input[data-extension='tester']")
    # Apply and restart UI: the server restarts in place and the page reloads when it is back.
    with pg.expect_navigation(timeout=180_000):
        pg.click("#extensions_apply")
        pg.wait_for_selector("#extensions_installed_result :text('Restarting the server')")
    config = json.loads((ext_server.data_dir / "config.json").read_text())
    assert config["disabled_extensions"] == ["tester"]
    open_page(pg, ext_server.url)
    assert pg.locator("#ext_test_marker").count() == 0  # the disabled extension's script no longer runs
    pg.click("#tab_extensions-button")
    row = pg.locator("#extensions_table tr:has(input[data-extension='tester'])")
    assert "no" in row.inner_text().split()  # "Loaded: no"

    source = _source_repo(tmp_path / "src" / "browser-installed")
    pg.click("#extensions_install_tab-button")
    pg.locator("#extensions_install_url textarea, #extensions_install_url input").fill(str(source))
    pg.click("#extensions_install_button")
    # `:text()` ignores case, and the first line ("Cloning …/browser-installed into extensions/browser-installed")
    # already holds "installed into extensions/browser-installed": wait for the last line's own words
    pg.wait_for_selector("#extension_install_result :text('Restart the server to load it')")
    assert "Installed into extensions/browser-installed." in pg.inner_text("#extension_install_result")
    assert (ext_server.data_dir / "extensions" / "browser-installed" / "style.css").exists()

    pg.click("#extensions_installed_tab-button")
    pg.wait_for_selector("#extensions_table :text('browser-installed')")
    pg.click("#extensions_check")
    pg.wait_for_selector("#extensions_installed_result :text('All extensions are up to date.')")
