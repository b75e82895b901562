"""The web UI in a real browser: generate, inpaint with a painted mask, interrupt, PNG Info round trip, queue
shared by two tabs, settings that survive a restart; screenshots of every tab."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from .helpers import (
    REPO,
    Server,
    drop_into_editor,
    gallery_png,
    make_data_dir,
    new_page,
    open_page,
    paint_stroke,
    press_during_job,
    press_generate,
    set_number,
    small_run,
    source_png,
    upload_into,
    wait_for_run_end,
    wait_for_saved,
)

SCREENSHOTS = REPO / "docs" / "screenshots"


def test_txt2img_generate_shows_image_whose_png_carries_the_infotext(page):
    page.fill("#txt2img_prompt textarea", "a red circle")
    page.wait_for_selector("#txt2img_token_counter :text('3/75')")
    # a prompt-editing schedule counts its longer prompt only if its step comes within the steps
    page.fill("#txt2img_neg_prompt textarea", "[blurry:a blurry dark photo:10]")
    page.wait_for_selector("#txt2img_negative_token_counter :text('4/75')")
    small_run(page, "txt2img")  # 4 steps: both counters are counted again
    page.wait_for_selector("#txt2img_negative_token_counter :text('1/75')")
    assert page.inner_text("#txt2img_token_counter") == "3/75"
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=90_000)
    wait_for_run_end(page, "txt2img")

    image = gallery_png(page, "txt2img")
    assert image.size == (64, 64)
    parameters = image.info["parameters"]
    assert parameters.startswith("a red circle\n")
    assert "Steps: 4" in parameters and "Size: 64x64" in parameters and "Model: tiny" in parameters
    info = page.inner_text("#html_info_txt2img")
    assert "a red circle" in info and "Saved to:" in info

    # The reuse-seed button brings back the seed of that image.
    seed = parameters.split("Seed: ")[1].split(",")[0]
    page.click("#txt2img_reuse_seed")
    page.wait_for_function(f"() => document.querySelector('#txt2img_seed input').value == '{seed}'")


def test_inpaint_with_a_mask_painted_in_the_page(page, tmp_path):
    page.click("#tab_img2img-button")
    page.click("#img2img_inpaint_tab-button")
    drop_into_editor(page, "img2maskimg", source_png(tmp_path / "src.png"))
    small_run(page, "img2img")
    page.fill("#img2img_prompt textarea", "a green square")

    # Nothing painted yet: a readable message, not a stack trace. Pressed before the editor has handed the picture
    # to its state, the page says "Add an image first" and, like a person, the test presses again.
    for _ in range(10):
        message = press_generate(page, "img2img")
        if "Add an image first" not in message:
            break
        page.wait_for_timeout(1000)
    assert "mask is empty" in message
    assert "Traceback" not in page.content()

    paint_stroke(page, "img2maskimg")

    page.click("#img2img_generate")
    page.wait_for_selector("#img2img_gallery img", timeout=90_000)
    parameters = gallery_png(page, "img2img").info["parameters"]
    assert parameters.startswith("a green square\n")
    for key in ("Denoising strength: 0.75", "Mask blur: 4", "Masked content: original"):
        assert key in parameters


def test_interrupt_stops_a_long_job_and_a_second_tab_waits_in_the_queue(page, playwright_browser, server):
    set_number(page, "txt2img_width", 128)
    set_number(page, "txt2img_height", 128)
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_batch_count", 50)  # minutes of work on this CPU if nobody stopped it
    page.fill("#txt2img_prompt textarea", "a long job")

    context, other = new_page(playwright_browser)
    open_page(other, server.url)
    small_run(other, "txt2img")

    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_progress .progressDiv")
    # live preview while sampling; asked of the page itself, since each new preview replaces the element
    page.wait_for_function("() => !!document.querySelector('#txt2img_progress .livePreview img')", timeout=90_000)
    assert "ETA" in page.inner_text("#txt2img_progress")

    other.click("#txt2img_generate")
    # asked of the page, with room for a slow host: the busy server answers each progress poll late
    other.wait_for_function(
        "() => (document.querySelector('#txt2img_progress .progress-text')?.textContent || '')"
        ".includes('Waiting in queue: 1 job ahead')", timeout=90_000)

    page.bring_to_front()  # back to the first tab, as a person would
    press_during_job(page, "#txt2img_interrupt")
    wait_for_run_end(page, "txt2img")
    assert page.locator("#txt2img_gallery img").count() < 50
    # The queue moves on: the other tab's job runs and shows its image.
    other.wait_for_selector("#txt2img_gallery img", timeout=90_000)
    context.close()


def test_png_info_round_trip_to_txt2img(page, tmp_path):
    page.fill("#txt2img_prompt textarea", "round trip, blue")
    page.fill("#txt2img_neg_prompt textarea", "blurry")
    small_run(page, "txt2img", steps=5)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=90_000)
    saved = tmp_path / "result.png"
    image = gallery_png(page, "txt2img")
    image.save(saved, pnginfo=_pnginfo(image))
    seed = image.info["parameters"].split("Seed: ")[1].split(",")[0]

    page.reload()
    open_page(page, page.url)
    page.click("#tab_pnginfo-button")
    upload_into(page, page.locator("#pnginfo_image"), saved)
    page.wait_for_selector("#pnginfo_html_info :text('Steps: 5')")
    assert "round trip, blue" in page.inner_text("#pnginfo_html_info")

    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value == 'round trip, blue'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "blurry"
    assert page.input_value("#txt2img_seed input") == seed
    assert page.input_value("#txt2img_steps input[type=number]") == "5"
    assert page.input_value("#txt2img_width input[type=number]") == "64"


def _pnginfo(image: Image.Image):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", image.info["parameters"])
    return info


def test_a_setting_survives_a_restart(playwright_browser, tmp_path):
    """Also: a saved choice whose file is gone (an upscaler deleted since) is not replaced by the list's first entry
    when another setting is applied, whether or not its section was opened first (unopened, the page replaced it
    in most tries), and the page shows it as not found."""
    data_dir = make_data_dir(tmp_path / "data")
    config = data_dir / "config.json"
    config.write_text(json.dumps({"upscaler_for_img2img": "4x-Deleted-ESRGAN"}))
    srv = Server(data_dir, warm=True).start()
    context, pg = new_page(playwright_browser)
    try:
        open_page(pg, srv.url)
        pg.click("#tab_settings-button")
        pg.click("#settings_ui-button")
        for steps in (5, 6, 7):  # the missing choice's section never opened
            set_number(pg, "setting_show_progress_every_n_steps", steps)
            pg.click("#settings_submit")
            wait_for_saved(config, "show_progress_every_n_steps", steps)
            assert json.loads(config.read_text())["upscaler_for_img2img"] == "4x-Deleted-ESRGAN"
        # its section (in the overflow menu of the section tabs) names it, marked as not found
        pg.click("#settings .overflow-menu > button")
        pg.click("#settings .overflow-dropdown button:text-is('Upscaling')")
        pg.wait_for_function("() => document.querySelector('#setting_upscaler_for_img2img input')?.value"
                             " == '4x-Deleted-ESRGAN (not found)'")
        pg.click("#settings_ui-button")
        set_number(pg, "setting_show_progress_every_n_steps", 8)
        pg.click("#settings_submit")
        pg.wait_for_selector("#settings_result :text('1 setting changed')")
        saved = json.loads(config.read_text())
        assert saved["upscaler_for_img2img"] == "4x-Deleted-ESRGAN"
        set_number(pg, "setting_show_progress_every_n_steps", 7)
        pg.click("#settings_submit")

        wait_for_saved(config, "show_progress_every_n_steps", 7)

        srv.stop()
        srv.start()
        open_page(pg, srv.url)
        pg.click("#tab_settings-button")
        pg.click("#settings_ui-button")
        pg.wait_for_function("() => document.querySelector('#setting_show_progress_every_n_steps "
                             "input[type=number]').value == '7'")
    finally:
        context.close()
        srv.stop()


SCREENSHOT_PROMPT = "a small red circle at the top left and a large blue square, on a yellow background"


def test_screenshots_of_each_tab_with_the_bundled_model(playwright_browser, tmp_path):
    """What a newcomer sees on a fresh install: the bundled model, a prompt it understands, each tab after use.

    With UPDATE_SCREENSHOTS=1 the pictures in docs/screenshots/ (shown in the README) are refreshed."""
    data_dir = tmp_path / "fresh"
    (data_dir / "models" / "Stable-diffusion").mkdir(parents=True)  # no checkpoint of the user's own
    srv = Server(data_dir, warm=True).start()
    context, pg = new_page(playwright_browser)
    target = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "shots"
    target.mkdir(parents=True, exist_ok=True)

    def shot(tab: str) -> None:
        path = target / f"{tab}.png"
        pg.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000

    try:
        open_page(pg, srv.url, model="default-shapes-v1")
        pg.fill("#txt2img_prompt textarea", SCREENSHOT_PROMPT)
        assert pg.input_value("#txt2img_width input[type=number]") == "256"  # the size the model was trained at
        assert "Time taken" in press_generate(pg, "txt2img")
        picture = gallery_png(pg, "txt2img")
        assert picture.size == (256, 256) and "Model: default-shapes-v1" in picture.info["parameters"]
        shot("txt2img")

        pg.click("#txt2img_send_to_img2img")
        pg.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value.includes('red circle')")
        pg.fill("#img2img_prompt textarea", SCREENSHOT_PROMPT.replace("yellow", "green"))
        set_number(pg, "img2img_denoising_strength", 0.6)
        assert "Time taken" in press_generate(pg, "img2img")
        shot("img2img")

        saved = tmp_path / "result.png"
        picture.save(saved, pnginfo=_pnginfo(picture))
        pg.click("#tab_pnginfo-button")
        upload_into(pg, pg.locator("#pnginfo_image"), saved)
        pg.wait_for_selector("#pnginfo_html_info :text('Steps: 20')")
        shot("pnginfo")

        pg.click("#tab_settings-button")
        pg.wait_for_selector("#tab_settings", state="visible")
        shot("settings")
    finally:
        context.close()
        srv.stop()


def test_login_and_subpath(tmp_path):
    """--subpath serves the page under /sd/; --gradio-auth guards gradio's routes and our /internal ones."""
    import http.cookiejar
    import urllib.error
    import urllib.parse
    import urllib.request

    srv = Server(make_data_dir(tmp_path / "data"), "--subpath", "sd", "--gradio-auth", "alice:s3cret",
                 warm=True).start()
    url = f"{srv.url}sd/"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def status(path: str, body: dict | None = None) -> int:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with opener.open(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        assert status("") == 200  # the log-in page
        assert status("config") == 401
        assert status("internal/progress", {"id_task": "x"}) == 401
        form = urllib.parse.urlencode({"username": "alice", "password": "wrong"}).encode()
        with pytest.raises(urllib.error.HTTPError):
            opener.open(url + "login", data=form, timeout=10)
        form = urllib.parse.urlencode({"username": "alice", "password": "s3cret"}).encode()
        with opener.open(url + "login", data=form, timeout=10) as response:
            assert response.status == 200
        assert status("config") == 200
        assert status("internal/progress", {"id_task": "x"}) == 200
    finally:
        srv.stop()
