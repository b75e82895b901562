"""The Checkpoint Merger tab in a real page: choose A and B, M 0.5, Merge; the result line names the new file, the
merger's lists and the checkpoint bar show it without 🔄, and a picture made with it names it in its infotext."""

from __future__ import annotations

import pytest
from tiny_models import write_tiny_checkpoint

from .helpers import Server, gallery_png, make_data_dir, opened_page, press_generate, set_number, small_run

MERGED = "tiny_0.5-tiny2_0.5"


@pytest.fixture(scope="module")
def merger_server(tmp_path_factory, playwright_browser):
    root = make_data_dir(tmp_path_factory.mktemp("merger"))
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "tiny2.safetensors", "sd1", seed=4)
    srv = Server(root, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def merger_page(playwright_browser, merger_server):
    yield from opened_page(playwright_browser, merger_server.url)


def choose(pg, elem_id: str, option: str) -> None:
    pg.locator(f"#{elem_id} input").click()
    pg.locator(f"[role=option]:has-text('{option}')").first.click()
    pg.wait_for_function(f"() => document.querySelector('#{elem_id} input')?.value.startsWith({option!r})")


def test_merge_two_checkpoints_then_generate_with_the_result(merger_page, merger_server):
    pg = merger_page
    pg.click("#tab_modelmerger-button")
    choose(pg, "modelmerger_primary_model_name", "tiny.safetensors")
    choose(pg, "modelmerger_secondary_model_name", "tiny2.safetensors")
    set_number(pg, "modelmerger_interp_amount", 0.5)
    pg.click("#modelmerger_merge")
    pg.wait_for_selector(f"#modelmerger_result :text('{MERGED}.safetensors')", timeout=90_000)
    result = pg.inner_text("#modelmerger_result")
    assert "Checkpoint saved to" in result and pg.locator("#modelmerger_result .error").count() == 0, result
    assert (merger_server.data_dir / "models" / "Stable-diffusion" / f"{MERGED}.safetensors").is_file()

    pg.locator("#modelmerger_tertiary_model_name input").click()  # the merger's own lists have it too
    pg.wait_for_selector(f"[role=option]:has-text('{MERGED}')")
    pg.keyboard.press("Escape")

    # the checkpoint bar was refreshed by the merge itself: switch to the new model there
    pg.locator("#setting_sd_model_checkpoint input").click()
    pg.locator(f"[role=option]:has-text('{MERGED}')").first.click()
    pg.wait_for_selector(f"#quicksettings_result :text('Loaded {MERGED}')", timeout=60_000)

    pg.click("#tab_txt2img-button")
    pg.fill("#txt2img_prompt textarea", "a merged circle")
    small_run(pg, "txt2img")
    log = press_generate(pg, "txt2img")
    assert "Time taken" in log and pg.locator("#html_log_txt2img .error").count() == 0, log
    assert f"Model: {MERGED}," in gallery_png(pg, "txt2img").info["parameters"]
