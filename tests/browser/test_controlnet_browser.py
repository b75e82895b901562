"""The ControlNet accordion in a real browser, against a server whose data dir holds a tiny SD1 checkpoint and a
tiny canny ControlNet made from the same tiny UNet: open the accordion, upload a picture to unit 0, enable it,
pick the Canny control type (preprocessor and model follow), preview the map with 💥, Generate, and find the
picture with `ControlNet 0: "Module: canny, ...` in its infotext and the detected map beside it; then PNG Info ->
txt2img on a fresh page restores the unit's controls. A picture the server cannot read is named in the unit,
and Generate refuses that unit by its number."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from .helpers import (
    Server,
    make_data_dir,
    new_page,
    open_page,
    press_generate,
    set_number,
    small_run,
    source_png,
    upload_into,
)

MODEL = "control_sd15_canny_tiny"
UNIT0 = "txt2img_controlnet_ControlNet-0"
UNIT1 = "txt2img_controlnet_ControlNet-1"


@pytest.fixture(scope="module")
def cn_server(tmp_path_factory, playwright_browser):
    from controlnet_files import write_controlnet

    root = make_data_dir(tmp_path_factory.mktemp("controlnet-webui"))  # tiny.safetensors: SD1, seed 3
    write_controlnet(root / "models" / "ControlNet" / f"{MODEL}.safetensors", "sd1", "original", seed=1)
    srv = Server(root, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(playwright_browser, cn_server):
    context, pg = new_page(playwright_browser)
    open_page(pg, cn_server.url)
    yield pg
    context.close()


def fetch(page, src: str) -> Image.Image:
    response = page.request.get(src)
    assert response.ok
    return Image.open(io.BytesIO(response.body()))


def open_accordion(page) -> None:
    page.click("#txt2img_controlnet > .label-wrap")
    page.locator(f"#{UNIT0}_controlnet_enable_checkbox").wait_for(state="visible")


def value_of(page, elem_id: str) -> str:
    return page.input_value(f"#{elem_id} input:not([type=range]):not([type=checkbox])")


def wait_for_value(page, elem_id: str, expected: str, prefix: bool = False) -> None:
    # 60 s: one CI run on the 2-core machine, both workers driving a server and a browser, missed 15 s once
    page.wait_for_function("""([id, expected, prefix]) => {
        const input = document.querySelector(`#${id} input:not([type=range]):not([type=checkbox])`);
        return input !== null && (prefix ? input.value.startsWith(expected) : input.value === expected);
    }""", arg=[elem_id, expected, prefix], timeout=60_000)


def is_checked(page, elem_id: str) -> bool:
    return page.is_checked(f"#{elem_id} input[type=checkbox]")


def choose_radio(page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id} label:has-text('{label}')").first.click()


def gallery_sources(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('#txt2img_gallery .thumbnail-lg img')]"
                         ".map(i => i.src)")


def is_edge_map(picture: Image.Image) -> bool:
    """Canny's output: black and white only, with some white (the disc's outline)."""
    grey = np.asarray(picture.convert("L"))
    values = set(np.unique(grey).tolist())
    return values <= {0, 255} and 0.001 < (grey == 255).mean() < 0.5


def test_unit_preview_generate_and_paste_back(page, playwright_browser, cn_server, tmp_path):
    open_accordion(page)
    upload_into(page, page.locator(f"#{UNIT0}_input_image"), source_png(tmp_path / "disc.png"))
    page.click(f"#{UNIT0}_controlnet_enable_checkbox input")
    choose_radio(page, f"{UNIT0}_controlnet_type_filter_radio", "Canny")
    # the control type picks its preprocessor and the model whose name says canny
    wait_for_value(page, f"{UNIT0}_controlnet_preprocessor_dropdown", "canny")
    wait_for_value(page, f"{UNIT0}_controlnet_model_dropdown", f"{MODEL} [", prefix=True)
    threshold_a = page.locator(f"#{UNIT0}_controlnet_threshold_A_slider")
    threshold_a.wait_for(state="visible")
    assert "Canny Low Threshold" in threshold_a.inner_text()
    set_number(page, f"{UNIT0}_controlnet_threshold_A_slider", 50)
    set_number(page, f"{UNIT0}_controlnet_control_weight_slider", 0.8)

    page.click(f"#{UNIT0}_controlnet_trigger_preprocessor")
    preview = page.wait_for_selector(f"#{UNIT0}_generated_image img", timeout=60_000)
    assert is_checked(page, f"{UNIT0}_controlnet_preprocessor_preview_checkbox")  # Allow Preview turned on
    shown = fetch(page, preview.get_attribute("src"))
    assert shown.size == (512, 512)  # the disc at the preprocessor resolution
    assert is_edge_map(shown)

    page.fill("#txt2img_prompt textarea", "a disc")
    small_run(page, "txt2img", steps=3)
    log = press_generate(page, "txt2img")
    assert "Time taken" in log, log
    sources = gallery_sources(page)
    assert len(sources) == 2  # the picture, then the detected map
    picture, detected = (fetch(page, src) for src in sources)
    parameters = picture.info["parameters"]
    assert 'ControlNet 0: "Module: canny, Model: control_sd15_canny_tiny [' in parameters, parameters
    assert "Weight: 0.8" in parameters and "Threshold A: 50" in parameters
    assert 'ControlNet 0: "Module: canny' in page.inner_text("#html_info_txt2img")
    assert is_edge_map(detected)
    saved = tmp_path / "generated.png"
    picture.save(saved, pnginfo=_pnginfo(parameters))

    # a fresh page (another person): PNG Info -> txt2img restores unit 0
    context, fresh = new_page(playwright_browser)
    try:
        open_page(fresh, cn_server.url)
        fresh.click("#tab_pnginfo-button")
        upload_into(fresh, fresh.locator("#pnginfo_image"), saved)
        fresh.wait_for_selector("#pnginfo_html_info :text('ControlNet 0')")
        fresh.click("#pnginfo_send_to_txt2img")
        fresh.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value == 'a disc'")
        fresh.locator(f"#{UNIT0}_controlnet_enable_checkbox").wait_for(state="visible")  # the accordion opened
        wait_for_value(fresh, f"{UNIT0}_controlnet_preprocessor_dropdown", "canny")
        wait_for_value(fresh, f"{UNIT0}_controlnet_model_dropdown", f"{MODEL} [", prefix=True)
        assert is_checked(fresh, f"{UNIT0}_controlnet_enable_checkbox")
        assert fresh.input_value(f"#{UNIT0}_controlnet_control_weight_slider input[type=number]") == "0.8"
        assert fresh.input_value(f"#{UNIT0}_controlnet_threshold_A_slider input[type=number]") == "50"
        assert fresh.input_value(f"#{UNIT0}_controlnet_threshold_B_slider input[type=number]") == "200"
        # the restored unit is the one Generate uses (with the same picture uploaded again)
        upload_into(fresh, fresh.locator(f"#{UNIT0}_input_image"), source_png(tmp_path / "disc2.png"))
        log = press_generate(fresh, "txt2img")
        assert "Time taken" in log, log
        again = fetch(fresh, gallery_sources(fresh)[0])
        assert np.array_equal(np.asarray(again.convert("RGB")), np.asarray(picture.convert("RGB")))
        fresh.click("#txt2img_controlnet_tabs button[role=tab]:has-text('ControlNet Unit 1')")
        assert not is_checked(fresh, f"{UNIT1}_controlnet_enable_checkbox")  # not in the infotext: untouched
    finally:
        context.close()


def _pnginfo(parameters: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    return info


def test_an_unreadable_control_image_is_named_and_its_unit_refused(page, tmp_path):
    open_accordion(page)
    page.click("#txt2img_controlnet_tabs button[role=tab]:has-text('ControlNet Unit 1')")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a picture" * 20)
    page.locator(f"#{UNIT1}_input_image input[type=file]").set_input_files(str(broken))
    notice = page.wait_for_selector(f"#{UNIT1}_controlnet_notice .error")
    assert "Could not read the uploaded image 'broken.png'" in notice.inner_text()
    page.click(f"#{UNIT1}_controlnet_enable_checkbox input")
    choose_radio(page, f"{UNIT1}_controlnet_type_filter_radio", "Canny")
    wait_for_value(page, f"{UNIT1}_controlnet_model_dropdown", f"{MODEL} [", prefix=True)
    message = page.wait_for_selector(f"#{UNIT1}_controlnet_message .error")
    assert "ControlNet 1: Could not read the uploaded image 'broken.png'" in message.inner_text()
    small_run(page, "txt2img", steps=2)
    log = press_generate(page, "txt2img")
    assert "ControlNet 1: Could not read the uploaded image 'broken.png'" in log, log
