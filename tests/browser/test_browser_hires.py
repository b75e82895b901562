"""Hires. fix in a real browser: open the accordion, choose Latent and scale 2, press Generate and get a picture
twice the size with A1111's Hires keys; the ✨ button on a finished picture puts its upscaled version in that
picture's place in the gallery; a PNG Info paste of a hires infotext fills the accordion."""

from __future__ import annotations

import io

from PIL import Image

from .helpers import gallery_png, press_generate, set_number, small_run, source_png, upload_into

HIRES_INFOTEXT = ("a pasted hires picture\nSteps: 3, Sampler: Euler, CFG scale: 6, Seed: 77, Size: 64x64, "
                  "Model: tiny, Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 3, "
                  "Hires upscaler: Latent (nearest)")


def choose(page, elem_id: str, name: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"[role=option]:has-text('{name}')").first.click()
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input')?.value == {name!r}")


def open_hires(page) -> None:
    page.click("#txt2img_hr .label-wrap")
    page.locator("#txt2img_hr_scale").wait_for(state="visible")


def gallery_pictures(page, tab: str = "txt2img") -> list[Image.Image]:
    """Every picture of the gallery, in order, as the browser fetches them."""
    sources = thumbnail_sources(page, tab)
    pictures = []
    for src in sources:
        response = page.request.get(src)
        assert response.ok
        pictures.append(Image.open(io.BytesIO(response.body())))
    return pictures


def thumbnail_sources(page, tab: str = "txt2img") -> list[str]:
    # the gallery's grid (with a picture selected, a strip of small thumbnails shows the same pictures again)
    return page.evaluate(f"() => [...document.querySelectorAll('#{tab}_gallery .thumbnail-lg img')].map(i => i.src)")


def select_picture(page, index: int, seed: str) -> str:
    """Click the gallery's thumbnail `index`, as a person picks a picture; the infotext shown under it once it
    names the picture's `seed` (the select event answers after the click, in its own time)."""
    small = page.locator("#txt2img_gallery .thumbnail-small")  # the strip under a picture already shown large
    (small if small.count() else page.locator("#txt2img_gallery .thumbnail-lg")).nth(index).click()
    page.wait_for_function("(seed) => document.querySelector('#html_info_txt2img')?.innerText"
                           ".includes(`Seed: ${seed},`)", arg=seed, timeout=15_000)
    return page.inner_text("#html_info_txt2img")


def press_upscale(page) -> str:
    """Press ✨ and wait until the gallery's pictures change or an error line is shown; the message area."""
    before = thumbnail_sources(page)
    page.click("#txt2img_upscale")
    page.wait_for_function("""(before) => {
        if (document.querySelector('#html_log_txt2img .error')) return true;
        const now = [...document.querySelectorAll('#txt2img_gallery .thumbnail-lg img')].map(i => i.src);
        return now.length > 0 && JSON.stringify(now) !== JSON.stringify(before)
            && document.querySelector('#html_log_txt2img .time') !== null;
    }""", arg=before, timeout=90_000)
    return page.inner_text("#html_log_txt2img")


def test_hires_fix_latent_doubles_the_picture_and_writes_its_keys(page):
    page.fill("#txt2img_prompt textarea", "a red circle")
    small_run(page, "txt2img", steps=2)
    open_hires(page)
    choose(page, "txt2img_hr_upscaler", "Latent")
    set_number(page, "txt2img_hr_scale", 2)
    set_number(page, "txt2img_hires_steps", 2)
    set_number(page, "txt2img_denoising_strength", 0.5)

    log = press_generate(page, "txt2img")
    assert "Time taken" in log, log
    picture = gallery_png(page, "txt2img")
    assert picture.size == (128, 128)  # twice the 64x64 first pass
    parameters = picture.info["parameters"]
    for key in ("Size: 64x64", "Hires upscale: 2", "Hires upscaler: Latent,", "Hires steps: 2",
                "Denoising strength: 0.5"):
        assert key in parameters, parameters
    assert "Hires upscale: 2" in page.inner_text("#html_info_txt2img")


def test_upscale_button_replaces_the_selected_picture_in_the_gallery(page):
    page.fill("#txt2img_prompt textarea", "two blue squares")
    small_run(page, "txt2img", steps=2)
    set_number(page, "txt2img_batch_size", 2)
    assert "Time taken" in press_generate(page, "txt2img")
    before = gallery_pictures(page)
    assert [im.size for im in before] == [(128, 64), (64, 64), (64, 64)]  # the grid, then the two pictures
    assert "Hires" not in before[1].info["parameters"]
    seed = before[1].info["parameters"].split("Seed: ")[1].split(",")[0]
    assert "Hires" not in select_picture(page, 1, seed)  # the first picture of the batch

    open_hires(page)  # the settings the ✨ button uses; it runs the hires pass even with the accordion closed
    set_number(page, "txt2img_hr_scale", 2)
    set_number(page, "txt2img_hires_steps", 2)
    page.click("#txt2img_hr .label-wrap")  # closed again
    log = press_upscale(page)
    assert "Time taken" in log, log

    after = gallery_pictures(page)
    assert [im.size for im in after] == [(128, 64), (128, 128), (64, 64)]  # only the selected one is replaced
    assert after[2].tobytes() == before[2].tobytes() and after[0].tobytes() == before[0].tobytes()
    upscaled = after[1].info["parameters"]
    assert "Hires upscale: 2" in upscaled and "Denoising strength" in upscaled and f"Seed: {seed}," in upscaled
    shown = page.inner_text("#html_info_txt2img")
    assert "Hires upscale: 2" in shown and "Hires upscaler: Latent" in shown and "Denoising strength" in shown
    assert f"Seed: {seed}," in shown  # the picture's own seed

    other_seed = before[2].info["parameters"].split("Seed: ")[1].split(",")[0]
    assert other_seed != seed
    assert "Hires" not in select_picture(page, 2, other_seed)  # the other picture keeps its own infotext
    assert "Hires upscale: 2" in select_picture(page, 1, seed)  # and the replaced one has the new one at its place


def test_png_info_paste_of_a_hires_infotext_fills_the_accordion(page, tmp_path):
    page.click("#tab_pnginfo-button")
    upload_into(page, page.locator("#pnginfo_image"), source_png(tmp_path / "hires.png", HIRES_INFOTEXT))
    page.wait_for_selector("#pnginfo_html_info :text('Hires upscaler: Latent (nearest)')")
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value == "
                           "'a pasted hires picture'")
    page.locator("#txt2img_hr_scale").wait_for(state="visible")  # the accordion opened
    page.wait_for_function("() => document.querySelector('#txt2img_hr_upscaler input')?.value == "
                           "'Latent (nearest)'")
    assert page.input_value("#txt2img_hr_scale input[type=number]") == "1.5"
    assert page.input_value("#txt2img_denoising_strength input[type=number]") == "0.45"
    assert page.input_value("#txt2img_hires_steps input[type=number]") == "3"
