"""The "Download model" box in a real page: a URL on a loopback model server (the app started with
--allow-private-downloads) is fetched with a progress line, lands in models/Stable-diffusion, and shows in the
checkpoint dropdown at once (no 🔄 pressed); a file: URL is refused by name."""

from __future__ import annotations

import pytest
from download_server import Entry, ModelServer, tiny_safetensors

from modules.downloads import format_size

from .helpers import Server, make_data_dir, opened_page


@pytest.fixture(scope="module")
def model_server():
    with ModelServer() as s:
        yield s


@pytest.fixture(scope="module")
def download_server(tmp_path_factory, playwright_browser):
    srv = Server(make_data_dir(tmp_path_factory.mktemp("downloads")), "--allow-private-downloads", warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def dl_page(playwright_browser, download_server):
    yield from opened_page(playwright_browser, download_server.url)


def open_box(pg) -> None:
    pg.click("#tab_settings-button")
    pg.click("#download_model")  # the accordion starts closed
    pg.locator("#download_url textarea, #download_url input").first.wait_for(state="visible")


def test_download_box_fetches_a_checkpoint_into_the_dropdown(dl_page, download_server, model_server):
    pg = dl_page
    data = tiny_safetensors(30, floats=200_000)
    model_server.files["/files/browser-fetched.safetensors"] = Entry(data)
    open_box(pg)
    pg.locator("#download_url textarea, #download_url input").first.fill(
        model_server.url("/files/browser-fetched.safetensors"))
    pg.click("#download_button")
    pg.wait_for_selector("#download_result :text('Downloaded browser-fetched.safetensors')", timeout=60_000)
    assert format_size(len(data)) in pg.inner_text("#download_result")  # the size is shown
    assert (download_server.data_dir / "models" / "Stable-diffusion" / "browser-fetched.safetensors").is_file()

    pg.locator("#setting_sd_model_checkpoint input").click()  # the list was refreshed by the download itself
    pg.wait_for_selector("[role=option]:has-text('browser-fetched')")


def test_download_box_refuses_a_file_url(dl_page):
    pg = dl_page
    open_box(pg)
    pg.locator("#download_url textarea, #download_url input").first.fill("file:///etc/passwd")
    pg.click("#download_button")
    pg.wait_for_selector("#download_result .error:has-text('file: is not allowed')", timeout=30_000)
