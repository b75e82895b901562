"""Extras in a real browser: upload a picture, choose Nearest and scale 2, press Generate, see the larger picture
and its postprocessing infotext; and "Send to extras" from a txt2img result, then Generate."""

from __future__ import annotations

from .helpers import gallery_png, press_generate, set_number, small_run, source_png, upload_into


def choose_upscaler(page, elem_id: str, name: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"[role=option]:has-text('{name}')").first.click()
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input')?.value == {name!r}")


def upscale_by_two_with_nearest(page) -> str:
    choose_upscaler(page, "extras_upscaler_1", "Nearest")
    set_number(page, "extras_upscaling_resize", 2)
    return press_generate(page, "extras")


def test_extras_upscales_an_uploaded_picture(page, tmp_path):
    page.click("#tab_extras-button")
    source = source_png(tmp_path / "src.png", "a disc\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x64")
    upload_into(page, page.locator("#extras_image"), source)

    log = upscale_by_two_with_nearest(page)
    assert "Time taken" in log, log
    result = gallery_png(page, "extras")
    assert result.size == (128, 128)
    assert result.getpixel((64, 64)) == (240, 200, 20) and result.getpixel((2, 2)) == (30, 90, 200)
    info = page.inner_text("#html_info_extras")
    assert "Postprocess upscale by: 2, Postprocess upscaler: Nearest" in info
    assert "outputs/extras-images" in info  # where it was saved


def test_send_to_extras_from_a_txt2img_result_then_generate(page):
    page.fill("#txt2img_prompt textarea", "a red circle")
    small_run(page, "txt2img")
    assert "Time taken" in press_generate(page, "txt2img")
    page.click("#txt2img_send_to_extras")
    page.locator("#extras_image img").wait_for()  # the Extras tab is in front with the picture in it

    log = upscale_by_two_with_nearest(page)
    assert "Time taken" in log, log
    assert page.locator("#html_log_extras .error").count() == 0
    result = gallery_png(page, "extras")
    assert result.size == (128, 128)
    assert "Postprocess upscaler: Nearest" in page.inner_text("#html_info_extras")


def test_an_unknown_folder_in_batch_from_directory_is_refused_on_the_page(page):
    page.click("#tab_extras-button")
    page.click("#extras_batch_directory_tab-button")
    page.fill("#extras_batch_input_dir textarea", "../../etc")
    log = press_generate(page, "extras")
    assert "Batch folders must be inside" in log, log
