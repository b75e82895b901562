"""img2img Batch > Upload in a real browser: two pictures uploaded at once (one carrying an infotext), "Append png
info to prompts" with Steps and Prompt ticked, Generate: two pictures in the gallery, the one from the picture
with PNG info made with its steps and its prompt after the page's."""

from __future__ import annotations

import io

from PIL import Image

from .helpers import fill_prompt, press_generate, small_run, source_png


def gallery_parameters(page) -> list[str]:
    """The infotext of every picture in the img2img gallery, as the browser fetches the files."""
    sources = page.evaluate("() => [...document.querySelectorAll('#img2img_gallery .thumbnail-lg img')]"
                            ".map(i => i.src)")
    found = []
    for src in sources:
        response = page.request.get(src)
        assert response.ok
        found.append(Image.open(io.BytesIO(response.body())).info.get("parameters", ""))
    return found


def test_batch_upload_with_png_info_steps_and_prompt(page, tmp_path):
    with_info = source_png(tmp_path / "with-info.png", "a disc from the png\nSteps: 3, Sampler: Euler, Seed: 5, "
                                                       "Size: 64x64")
    plain = source_png(tmp_path / "plain.png")
    page.click("#tab_img2img-button")
    page.click("#img2img_batch_tab-button")
    page.click("#img2img_batch_upload_tab-button")
    batch = page.locator("#img2img_image_batch")
    with page.expect_response(lambda r: "/upload" in r.url and r.request.method == "POST"):
        batch.locator("input[type=file]").set_input_files([str(with_info), str(plain)])
    batch.locator(".filename[aria-label='plain.png']").wait_for()  # the server has both; the page lists them

    page.click("#img2img_batch_png_info .label-wrap")  # the accordion starts closed
    page.locator("#img2img_batch_use_png_info input").check()
    for prop in ("Steps", "Prompt"):
        page.locator(f"#img2img_batch_png_info_props label:has-text('{prop}') input").first.check()
    fill_prompt(page, "img2img", "page words")
    small_run(page, "img2img", steps=4)

    log = press_generate(page, "img2img")
    assert "Time taken" in log and "Processed 2 image(s)" in log, log
    assert page.locator("#html_log_img2img .error").count() == 0
    page.wait_for_function("() => document.querySelectorAll('#img2img_gallery .thumbnail-lg img').length == 2")
    parameters = gallery_parameters(page)
    assert len(parameters) == 2, parameters
    from_info = [p for p in parameters if "Steps: 3," in p]
    from_page = [p for p in parameters if "Steps: 4," in p]
    assert len(from_info) == 1 and len(from_page) == 1, parameters
    assert from_info[0].startswith("page words a disc from the png\n"), from_info[0]
    assert from_page[0].startswith("page words\n"), from_page[0]
