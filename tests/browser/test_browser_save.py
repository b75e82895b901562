"""💾 Save and 🗃️ Zip under a result, as a person uses them: generate a small picture, press the button, read the
line saying where it went, and find the picture (with its infotext) and a log.csv row in the data dir's log/images;
🗃️ also offers a zip to download that holds the picture."""

from __future__ import annotations

import csv
import io
import re
import zipfile

from PIL import Image

from .helpers import fill_prompt, press_generate, small_run


def generate(page, prompt: str) -> None:
    fill_prompt(page, "txt2img", prompt)
    small_run(page, "txt2img")
    log = press_generate(page, "txt2img")
    assert "Time taken" in log, log


def saved_names(page) -> list[str]:
    """The files the page says it saved, relative to the data dir."""
    line = page.locator("#html_log_txt2img .saved-files")
    line.wait_for(timeout=30_000)
    text = line.inner_text()
    assert text.startswith("Saved: "), text
    return text.removeprefix("Saved: ").split(", ")


def test_save_button_copies_the_picture_with_its_infotext_and_logs_it(page, server):
    generate(page, "a saved green square")
    page.click("#save_txt2img")
    names = saved_names(page)
    assert len(names) == 1 and re.fullmatch(r"log/images/\d{5}-\d+\.png", names[0]), names
    assert page.locator("#html_log_txt2img .error").count() == 0

    saved = server.data_dir / names[0]
    with Image.open(saved) as im:
        assert im.size == (64, 64)
        assert im.info["parameters"].startswith("a saved green square\n")
        assert "Steps: 4" in im.info["parameters"]
    with open(server.data_dir / "log" / "images" / "log.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["prompt", "seed", "width"]
    row = next(r for r in rows[1:] if r[7] == saved.name)
    assert row[0] == "a saved green square" and row[2:4] == ["64", "64"] and row[6] == "4"


def test_zip_button_offers_a_zip_with_the_picture(page, server):
    generate(page, "a zipped blue square")
    page.click("#save_zip_txt2img")
    names = saved_names(page)
    assert len(names) == 2 and names[0].endswith(".zip") and names[1].endswith(".png"), names
    assert (server.data_dir / names[0]).is_file()

    link = page.locator("#download_files_txt2img a[download$='.zip']")
    link.wait_for(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    data = open(download.value.path(), "rb").read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        png = names[1].rsplit("/", 1)[1]
        assert z.namelist() == [png]
        with Image.open(io.BytesIO(z.read(png))) as im:
            assert im.info["parameters"].startswith("a zipped blue square\n")


def test_saving_an_empty_gallery_says_so(page):
    page.click("#tab_img2img-button")
    page.click("#save_img2img")
    page.wait_for_selector("#html_log_img2img :text('Nothing to save: the gallery is empty.')")
    assert page.locator("#download_files_img2img").is_hidden()
