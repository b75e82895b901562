"""Override settings in the page (A1111's): PNG Info's send to txt2img lists the picture's settings that differ from
the current ones under the seed row; Generate uses them for that job only; an entry removed is not used."""

from __future__ import annotations

from .helpers import gallery_png, press_generate, small_run, source_png, upload_into

PASTED = "a pasted fox\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 77, Size: 64x64, Clip skip: 2"
BOX = "#txt2img_override_settings"


def test_png_info_send_to_txt2img_overrides_clip_skip_for_the_job_only(page, tmp_path):
    page.click("#tab_pnginfo-button")
    upload_into(page, page.locator("#pnginfo_image"), source_png(tmp_path / "clip.png", PASTED))
    page.wait_for_selector("#pnginfo_html_info :text('Clip skip: 2')")
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value == 'a pasted fox'")
    page.locator(BOX).wait_for(state="visible")
    assert page.locator(f"{BOX} .token").all_inner_texts() == ["Clip skip: 2"]
    assert page.locator("#img2img_override_settings").is_hidden()  # only the tab pasted onto

    small_run(page, "txt2img")
    log = press_generate(page, "txt2img")
    assert "Time taken" in log, log
    assert "Clip skip: 2" in gallery_png(page, "txt2img").info["parameters"]
    # the setting itself is as it was: the quicksettings bar still shows 1
    assert page.input_value("#setting_CLIP_stop_at_last_layers input[type=number]") == "1"

    page.locator(f"{BOX} .token .token-remove").click()
    page.locator(BOX).wait_for(state="hidden")  # no entries left: hidden, as in A1111
    log = press_generate(page, "txt2img")
    assert "Time taken" in log, log
    parameters = gallery_png(page, "txt2img").info["parameters"]
    assert parameters.startswith("a pasted fox\n") and "Clip skip" not in parameters
