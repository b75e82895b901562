"""An extension's tab, its always-on script in an accordion and a selectable script, in a real browser: the
extension in tests/extensions_for_tests is installed into the server's data dir as a person would copy it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import Server, gallery_png, make_data_dir, opened_page, press_generate, set_number, small_run

EXTENSIONS = Path(__file__).resolve().parents[1] / "extensions_for_tests"


@pytest.fixture(scope="module")
def ext_server(tmp_path_factory, playwright_browser):
    data_dir = make_data_dir(tmp_path_factory.mktemp("ext-webui"))
    shutil.copytree(EXTENSIONS, data_dir / "extensions")
    srv = Server(data_dir, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def ext_page(playwright_browser, ext_server):
    yield from opened_page(playwright_browser, ext_server.url)


def test_an_extension_tab_appears_before_settings_and_its_button_works(ext_page):
    tabs = ext_page.locator("#tabs [role=tab]").all_inner_texts()
    assert tabs.index("PNG Info") < tabs.index("Test extension") < tabs.index("Settings")
    ext_page.click("#tab_test_extension-button")
    ext_page.fill("#test_extension_input textarea", "hello")
    ext_page.click("#test_extension_button")
    ext_page.wait_for_function("() => document.querySelector('#test_extension_output textarea').value == 'echo: hello'")


def test_a_broken_extension_is_named_on_the_page(ext_page):
    ext_page.wait_for_selector("#quicksettings_result :text('broken-ext')")
    text = ext_page.inner_text("#quicksettings_result")
    assert "SyntaxError" in text and "Traceback" not in text


def test_always_on_script_accordion_changes_the_picture(ext_page):
    ext_page.fill("#txt2img_prompt textarea", "a red circle")
    small_run(ext_page, "txt2img", steps=2)
    ext_page.click("#script_txt2img_test_always_on_accordion .label-wrap")
    ext_page.check("#script_txt2img_test_always_on_enabled input")
    ext_page.fill("#script_txt2img_test_always_on_suffix textarea", ", rewritten by a script")
    assert "Time taken" in press_generate(ext_page, "txt2img")
    assert gallery_png(ext_page, "txt2img").info["parameters"].startswith("a red circle, rewritten by a script\n")


def test_selectable_script_from_the_script_dropdown(ext_page):
    ext_page.fill("#txt2img_prompt textarea", "a blue square")
    small_run(ext_page, "txt2img", steps=6)
    ext_page.locator("#tab_txt2img #script_list input").click()
    ext_page.locator("[role=option]:has-text('Test selectable')").click()
    set_number(ext_page, "script_txt2img_test_selectable_steps", 3)
    assert "Time taken" in press_generate(ext_page, "txt2img")
    assert "Steps: 3," in gallery_png(ext_page, "txt2img").info["parameters"]
