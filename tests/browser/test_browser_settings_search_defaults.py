"""Settings' search box and Defaults sub-tab in the real page: typing shows the matching settings of every section
(one in the overflow menu too) and hides the rest, clearing shows the sections again; a value changed on txt2img
is listed by "View changes" and written into the server's ui-config.json by "Apply"."""

from __future__ import annotations

import json

from .helpers import open_settings_section, set_number, wait_for_saved

SEARCH = "#settings_search input"
SHOWN = ("() => [...document.querySelectorAll('#settings .settings-item')]"
         ".filter(e => e.offsetParent !== null).map(e => e.id)")  # the settings' widgets on screen


def _shown_settled(page) -> list[str]:
    """The settings on screen once they stop changing (sections render a moment after the first search)."""
    shown = page.evaluate(SHOWN)
    for _ in range(20):
        page.wait_for_timeout(300)
        again = page.evaluate(SHOWN)
        if again == shown:
            return shown
        shown = again
    return shown


def test_search_shows_the_matching_settings_of_every_section(page):
    page.click("#tab_settings-button")
    page.locator(SEARCH).wait_for()
    # the overflow part of this test means something only while Upscaling is in the menu and not yet rendered
    assert page.locator("#settings .overflow-dropdown button:text-is('Upscaling')").count() == 1
    assert page.locator("#setting_ESRGAN_tile_overlap").count() == 0
    before = _shown_settled(page)
    assert "setting_sd_checkpoint_cache" in before and "setting_eta_noise_seed_delta" not in before

    page.fill(SEARCH, "seed delta")
    page.locator("#setting_eta_noise_seed_delta").wait_for(state="visible")
    assert _shown_settled(page) == ["setting_eta_noise_seed_delta"]
    assert page.locator("#setting_sd_checkpoint_cache").is_hidden()
    assert page.locator("#settings > .tab-wrapper").is_hidden() and page.locator("#settings_search_none").is_hidden()

    page.fill(SEARCH, "Tile overlap for ESRGAN")  # a section in the overflow menu, found by its label
    assert _shown_settled(page) == ["setting_ESRGAN_tile_overlap"]
    page.fill(SEARCH, "upscaler_models_in_memory")  # and by its key
    assert _shown_settled(page) == ["setting_upscaler_models_in_memory"]

    page.fill(SEARCH, "no such setting anywhere")
    page.locator("#settings_search_none").wait_for(state="visible")
    assert "No setting matches" in page.inner_text("#settings_search_none")
    assert _shown_settled(page) == []

    page.fill(SEARCH, "")
    page.locator("#settings_search_none").wait_for(state="hidden")
    assert page.locator("#settings > .tab-wrapper").is_visible()
    assert _shown_settled(page) == before  # the open section again, whole, and only it


def _review_rows(page) -> list[list[str]]:
    return page.locator("#ui_defaults_review tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def _apply_defaults(page, steps: int) -> str:
    page.click("#tab_txt2img-button")
    set_number(page, "txt2img_steps", steps)
    open_settings_section(page, "Defaults")
    page.click("#ui_defaults_apply")
    page.wait_for_selector("#ui_defaults_review .notice, #ui_defaults_review .error")
    return page.inner_text("#ui_defaults_review")


def test_defaults_view_changes_and_apply_write_ui_config(page, server):
    config = server.data_dir / "ui-config.json"
    assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Sampling steps/value"] == 20
    try:
        set_number(page, "txt2img_steps", 33)
        open_settings_section(page, "Defaults")
        page.click("#ui_defaults_view")
        page.wait_for_selector("#ui_defaults_review table")
        assert _review_rows(page) == [["txt2img/Sampling steps/value", "20", "33"]]  # only what was changed
        assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Sampling steps/value"] == 20

        page.click("#ui_defaults_apply")
        page.wait_for_selector("#ui_defaults_review :text('Saved 1 default')")
        assert "after the server restarts" in page.inner_text("#ui_defaults_review")
        saved = json.loads(config.read_text(encoding="utf-8"))
        assert saved["txt2img/Sampling steps/value"] == 33 and saved["txt2img/Width/value"] == 512
    finally:  # put back: the server is shared with other tests (and a restart would apply the file)
        page.goto(server.url)
        page.wait_for_selector("#txt2img_generate")
        _apply_defaults(page, 20)
        wait_for_saved(config, "txt2img/Sampling steps/value", 20)
