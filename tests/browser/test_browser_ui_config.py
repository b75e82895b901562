"""ui-config.json in a real browser: a server whose data dir has a hand-edited file (A1111's keys) shows those
defaults on the page, and Generate runs with them."""

from __future__ import annotations

import json

import pytest

from .helpers import Server, gallery_png, make_data_dir, opened_page, press_generate

EDITED = {
    "txt2img/Sampling steps/value": 3,  # a tiny value: the run is fast, and no default has it
    "txt2img/Width/value": 64,
    "txt2img/Height/value": 64,
    "txt2img/Seed/value": 1234,
    "txt2img/Seed/visible": False,
}


@pytest.fixture(scope="module")
def config_server(tmp_path_factory, playwright_browser):
    data_dir = make_data_dir(tmp_path_factory.mktemp("ui-config"))
    (data_dir / "ui-config.json").write_text(json.dumps(EDITED), encoding="utf-8")
    srv = Server(data_dir, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(playwright_browser, config_server):
    yield from opened_page(playwright_browser, config_server.url)


def test_the_page_shows_the_edited_defaults_and_generate_uses_them(page, config_server):
    assert page.input_value("#txt2img_steps input[type=number]") == "3"
    assert page.input_value("#txt2img_width input[type=number]") == "64"
    assert page.locator("#txt2img_seed").is_hidden()

    assert "Time taken" in press_generate(page, "txt2img")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img')?.innerText.includes('Steps: ')")
    info = page.inner_text("#html_info_txt2img")
    assert "Steps: 3," in info and "Size: 64x64" in info and "Seed: 1234," in info
    assert "Steps: 3," in gallery_png(page, "txt2img").info["parameters"]

    saved = json.loads((config_server.data_dir / "ui-config.json").read_text(encoding="utf-8"))
    assert saved["txt2img/Sampling steps/value"] == 3  # the person's value is kept, the missing keys added
    assert saved["txt2img/Width/maximum"] == 2048

    page.click("#tab_img2img-button")
    page.locator("#img2img_steps input[type=number]").wait_for(state="visible")
    assert page.input_value("#img2img_steps input[type=number]") == "20"  # another tab, another key
