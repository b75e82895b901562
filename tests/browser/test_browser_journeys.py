"""The journeys a newcomer takes, in a real browser, each ending in the press of Generate: every send-to path
(txt2img / img2img results and PNG Info to txt2img, img2img and inpaint) and every failure a person must see on
the page (an unreadable upload, a refused job, a value that was clamped)."""

from __future__ import annotations

import pytest

from .helpers import (
    COUNT_RUNS,
    fill_prompt,
    gallery_png,
    paint_and_generate,
    press_during_job,
    press_generate,
    set_number,
    small_run,
    source_png,
    upload_into,
)

# An infotext as A1111 writes it for an inpaint run: every inpaint radio set away from its default.
SENT = ("a blue square\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, Schedule type: Karras, CFG scale: 6, "
        "Seed: 1234, Size: 64x64, Model: tiny, Denoising strength: 0.6, Mask blur: 2, Mask mode: Inpaint not masked, "
        "Masked content: fill, Inpaint area: Only masked, Masked area padding: 16")


def generate_in_txt2img(page, prompt: str) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    small_run(page, "txt2img")
    log = press_generate(page, "txt2img")
    assert "Time taken" in log, log


def make_result(page, tab: str, prompt: str, tmp_path) -> None:
    """A finished picture in `tab`'s gallery (img2img: from an uploaded picture), ready to be sent on."""
    if tab == "txt2img":
        generate_in_txt2img(page, prompt)
        return
    page.click("#tab_img2img-button")
    upload_into(page, page.locator("#img2img_image"), source_png(tmp_path / "src.png"))
    page.fill("#img2img_prompt textarea", prompt)
    small_run(page, "img2img")
    assert "Time taken" in press_generate(page, "img2img")


def assert_no_error(page, tab: str) -> None:
    assert page.locator(f"#html_log_{tab} .error").count() == 0, page.inner_text(f"#html_log_{tab}")


def wait_for_prompt(page, tab: str, text: str) -> None:
    page.wait_for_function(f"() => document.querySelector('#{tab}_prompt textarea')?.value == {text!r}")


def assert_checked(page, elem_id: str, label: str) -> None:
    """The radio group shows `label` as its selected choice (waits for the page to apply a send-to)."""
    page.wait_for_function("""([id, label]) => {
        const input = document.querySelector(`#${id} input[aria-checked=true]`);
        return input !== null && input.closest('label').innerText.trim() === label;
    }""", arg=[elem_id, label], timeout=10_000)


@pytest.mark.parametrize("source", ["txt2img", "img2img"])
def test_send_result_to_img2img_then_generate(page, tmp_path, source):
    make_result(page, source, "a red circle", tmp_path)
    page.click(f"#{source}_send_to_img2img")
    wait_for_prompt(page, "img2img", "a red circle")
    page.locator("#img2img_image img").wait_for()
    fill_prompt(page, "img2img", "a red circle, again")

    log = press_generate(page, "img2img")
    assert "Time taken" in log, log
    assert_no_error(page, "img2img")
    parameters = gallery_png(page, "img2img").info["parameters"]
    assert parameters.startswith("a red circle, again\n")
    assert "Denoising strength: 0.75" in parameters and "Size: 64x64" in parameters
    assert "Mask blur" not in parameters  # plain img2img: no mask settings in play


@pytest.mark.parametrize("source", ["txt2img", "img2img"])
def test_send_result_to_inpaint_paint_then_generate(page, tmp_path, source):
    make_result(page, source, "a green square", tmp_path)
    page.click(f"#{source}_send_to_inpaint")
    wait_for_prompt(page, "img2img", "a green square")
    page.locator("#img2img_inpaint_controls").first.wait_for(state="visible")
    assert_checked(page, "img2img_mask_mode", "Inpaint masked")
    assert_checked(page, "img2img_inpainting_fill", "original")

    log = paint_and_generate(page)
    assert "Time taken" in log, log
    parameters = gallery_png(page, "img2img").info["parameters"]
    assert parameters.startswith("a green square\n")
    assert "Mask blur: 4" in parameters and "Masked content: original" in parameters


@pytest.mark.parametrize("target", ["txt2img", "img2img", "inpaint"])
def test_png_info_send_to_then_generate(page, tmp_path, target):
    page.click("#tab_pnginfo-button")
    upload_into(page, page.locator("#pnginfo_image"), source_png(tmp_path / "sent.png", SENT))
    page.wait_for_selector("#pnginfo_html_info :text('Masked area padding: 16')")
    page.click(f"#pnginfo_send_to_{target}")
    tab = "txt2img" if target == "txt2img" else "img2img"
    wait_for_prompt(page, tab, "a blue square")
    assert page.input_value(f"#{tab}_seed input") == "1234"
    assert page.input_value(f"#{tab}_steps input[type=number]") == "3"
    if target == "inpaint":
        # Every radio shows the value from the infotext (an index here made the next Generate fail).
        assert_checked(page, "img2img_mask_mode", "Inpaint not masked")
        assert_checked(page, "img2img_inpainting_fill", "fill")
        assert_checked(page, "img2img_inpaint_full_res", "Only masked")
    elif target == "img2img":
        page.locator("#img2img_image img").wait_for()

    log = paint_and_generate(page) if target == "inpaint" else press_generate(page, tab)
    assert "Time taken" in log, log
    parameters = gallery_png(page, tab).info["parameters"]
    assert parameters.startswith("a blue square\nNegative prompt: blurry\n")
    assert "Seed: 1234" in parameters and "Steps: 3" in parameters and "Schedule type: Karras" in parameters
    if target == "inpaint":
        for key in ("Denoising strength: 0.6", "Mask blur: 2", "Mask mode: Inpaint not masked",
                    "Masked content: fill", "Inpaint area: Only masked", "Masked area padding: 16"):
            assert key in parameters
    elif target == "img2img":
        assert "Denoising strength: 0.6" in parameters and "Mask blur" not in parameters


def corrupt_png(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a picture" * 20)
    return path


def test_an_unreadable_upload_in_img2img_is_named_on_the_page(page, tmp_path):
    page.click("#tab_img2img-button")
    page.locator("#img2img_image input[type=file]").set_input_files(str(corrupt_png(tmp_path / "broken.png")))
    error = page.wait_for_selector("#html_log_img2img .error")
    assert "Could not read the uploaded image 'broken.png'" in error.inner_text()
    log = press_generate(page, "img2img")
    assert "Could not read the uploaded image 'broken.png'" in log
    assert "/" not in log.split("'broken.png'")[0]  # no server path
    # The server keeps serving: a good picture in the same box generates.
    upload_into(page, page.locator("#img2img_image"), source_png(tmp_path / "good.png"))
    small_run(page, "img2img")
    assert "Time taken" in press_generate(page, "img2img")


def test_an_unreadable_mask_in_inpaint_upload_is_named_on_the_page(page, tmp_path):
    page.click("#tab_img2img-button")
    page.click("#img2img_inpaint_upload_tab-button")
    upload_into(page, page.locator("#img_inpaint_base"), source_png(tmp_path / "base.png"))
    (tmp_path / "mask.png").write_text("<svg>not a mask</svg>")
    page.locator("#img_inpaint_mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_selector("#html_log_img2img .error")
    small_run(page, "img2img")
    log = press_generate(page, "img2img")
    assert "Could not read the uploaded image 'mask.png'" in log, log


def test_an_unreadable_upload_in_png_info_is_named_on_the_page(page, tmp_path):
    page.click("#tab_pnginfo-button")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(corrupt_png(tmp_path / "broken.png")))
    error = page.wait_for_selector("#pnginfo_html_info .error")
    assert "Could not read the uploaded image 'broken.png'" in error.inner_text()


def test_a_job_that_fails_says_why_in_one_full_line(page):
    # A refiner checkpoint that does not exist: refused when the job runs, not while the request is built.
    page.fill("#txt2img_prompt textarea", "a red circle")
    small_run(page, "txt2img")
    page.click("#txt2img_refiner .label-wrap")
    page.check("#txt2img_enable_refiner input")
    page.fill("#txt2img_refiner_checkpoint input", "no-such-refiner-model")
    page.keyboard.press("Enter")
    log = press_generate(page, "txt2img")
    assert "refiner_checkpoint: Checkpoint not found: 'no-such-refiner-model'" in log, log
    error = page.locator("#html_log_txt2img .error")
    box = error.bounding_box()
    assert box["width"] > 100 and error.evaluate("e => e.scrollWidth <= e.clientWidth")  # not cut off
    page.uncheck("#txt2img_enable_refiner input")
    assert "Time taken" in press_generate(page, "txt2img")  # the next job runs normally


def test_a_clamped_value_is_said_next_to_the_field_and_used(page):
    page.fill("#txt2img_prompt textarea", "a red circle")
    small_run(page, "txt2img", steps=2)
    box = page.locator("#txt2img_batch_size input[type=number]")
    box.fill("100")
    box.press("Enter")
    note = page.locator("#txt2img_batch_size .clamp-note")
    note.wait_for(state="visible")
    assert note.inner_text() == "Batch size: 100 is more than the largest allowed, 8; 8 is used instead."
    assert "Time taken" in press_generate(page, "txt2img")
    images = page.evaluate("() => new Set([...document.querySelectorAll('#txt2img_gallery img')].map(i => i.src)).size")
    assert images == 9  # 8 pictures and their grid
    box.fill("4")  # typing a value in range clears the note
    assert note.inner_text() == ""


def test_a_corrupt_checkpoint_that_sorts_first_is_skipped_and_named_on_the_page(playwright_browser, tmp_path):
    from .helpers import Server, make_data_dir, new_page, open_page

    data_dir = make_data_dir(tmp_path / "data")
    (data_dir / "models" / "Stable-diffusion" / "aaa-broken.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{not json")
    srv = Server(data_dir, warm=True).start()
    context, pg = new_page(playwright_browser)
    try:
        open_page(pg, srv.url)  # the quicksettings show the tiny model that did load
        notice = pg.wait_for_selector("#quicksettings_result :text('aaa-broken.safetensors')")
        assert "Skipped it" in notice.inner_text()
        assert str(data_dir) not in pg.inner_text("#quicksettings_result")  # no server path
        pg.fill("#txt2img_prompt textarea", "a red circle")
        small_run(pg, "txt2img")
        assert "Time taken" in press_generate(pg, "txt2img")
        assert "Model: tiny" in gallery_png(pg, "txt2img").info["parameters"]
    finally:
        context.close()
        srv.stop()


def test_interrupt_shows_and_saves_the_partial_picture(page, server):
    page.fill("#txt2img_prompt textarea", "an interrupted picture")
    set_number(page, "txt2img_width", 128)
    set_number(page, "txt2img_height", 128)
    set_number(page, "txt2img_steps", 150)  # long enough on this CPU to be stopped part way
    page.evaluate(COUNT_RUNS)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_progress .livePreview img")  # sampling has begun
    press_during_job(page, "#txt2img_interrupt")
    page.wait_for_function("() => (window.__runsEnded['txt2img'] || 0) > 0", timeout=90_000)

    log = page.inner_text("#html_log_txt2img")
    assert "No images" not in log and "Time taken" in log
    picture = gallery_png(page, "txt2img")
    assert picture.size == (128, 128)
    assert picture.info["parameters"].startswith("an interrupted picture\n")
    saved = page.inner_text("#html_info_txt2img").split("Saved to:")[1].strip()
    assert (server.data_dir / saved).is_file()  # saved like a finished picture, as A1111 does
