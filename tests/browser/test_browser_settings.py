"""Settings checked in the real page: a value out of a setting's range is refused on Apply with a line naming
the setting, and config.json stays as it was; the corrected value then saves, and a tab opened afterwards shows
it (the page's config was built with the old one)."""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import new_page, open_page, set_number, wait_for_saved

ENSD_BOX = "setting_eta_noise_seed_delta"  # a Number box: the browser lets any number through, unlike a slider


def _config_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _apply_and_wait(pg, text: str) -> str:
    """Press Apply settings and wait for a result line containing `text`; the whole result area's text."""
    pg.click("#settings_submit")
    pg.wait_for_selector(f"#settings_result :text('{text}')")
    return pg.inner_text("#settings_result")


def test_out_of_range_setting_is_refused_and_config_json_untouched(page, server):
    config = server.data_dir / "config.json"
    before = _config_bytes(config)
    page.click("#tab_settings-button")
    page.click("#settings_sampler-params-button")

    set_number(page, ENSD_BOX, 2**32)  # one past what the noise generator's seed arithmetic allows
    result = _apply_and_wait(page, "is out of range")
    assert "eta_noise_seed_delta" in result and "4294967296 is out of range (0 to 4294967295)" in result
    assert "Nothing was saved" in result
    assert page.locator("#settings_result .error").count() == 1
    assert _config_bytes(config) == before

    # corrected in the same page, it saves; then put back, as the server is shared with other tests
    set_number(page, ENSD_BOX, 31337)
    assert "1 setting changed: Eta noise seed delta" in _apply_and_wait(page, "1 setting changed")
    wait_for_saved(config, "eta_noise_seed_delta", 31337)
    other = page.context.new_page()
    try:
        open_page(other, server.url)
        other.click("#tab_settings-button")
        other.click("#settings_sampler-params-button")
        other.wait_for_function(f"() => document.querySelector('#{ENSD_BOX} input').value == '31337'")
    finally:
        other.close()
    set_number(page, ENSD_BOX, 0)
    page.click("#settings_submit")
    wait_for_saved(config, "eta_noise_seed_delta", 0)


def test_apply_waits_until_the_page_has_the_current_values(page, server, playwright_browser):
    """A tab opened after a setting changed gets the page built at start (the old value) and the current values
    in its load event. Apply stays off until they arrive: pressed before, it sent the old value back and undid
    the other tab's change. The load event is held here, as a slow server or network would hold it."""
    config = server.data_dir / "config.json"
    page.click("#tab_settings-button")
    page.click("#settings_sampler-params-button")
    set_number(page, ENSD_BOX, 4242)  # changed in this tab, after the page was built
    page.click("#settings_submit")
    wait_for_saved(config, "eta_noise_seed_delta", 4242)

    context, other = new_page(playwright_browser)
    held = []

    def hold_the_load_event(route):
        if '"data":[]' in (route.request.post_data or ""):  # the page's one load event sends no inputs
            held.append(route)
        else:
            route.continue_()

    try:
        other.route("**/gradio_api/run/predict", hold_the_load_event)
        other.goto(server.url)
        other.wait_for_selector("#txt2img_generate")
        for _ in range(100):
            if held:
                break
            other.wait_for_timeout(100)
        assert held, "the page sent no load event"
        other.click("#tab_settings-button")
        assert other.locator("#settings_submit").is_disabled()
        held[0].continue_()
        other.wait_for_function("() => !document.querySelector('#settings_submit').disabled")
        other.click("#settings_submit")
        other.wait_for_selector("#settings_result :text('No settings changed')")
        assert json.loads(config.read_text())["eta_noise_seed_delta"] == 4242
    finally:
        context.close()
        set_number(page, ENSD_BOX, 0)  # put back: the server is shared with other tests
        page.click("#settings_submit")
        wait_for_saved(config, "eta_noise_seed_delta", 0)
