"""The Depth tab in a real browser, against a server whose data dir holds a tiny SD2 depth checkpoint and tiny
depth estimators: upload a picture, estimate, see the map and its saved 16-bit file; invert; generate with
depth2img from the tab; send the map to img2img as its depth source."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from .helpers import Server, gallery_png, new_page, open_page, press_generate, set_number, source_png, upload_into


@pytest.fixture(scope="module")
def depth_server(tmp_path_factory, playwright_browser):
    from depth_files import write_estimator
    from tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("depth-webui")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "sd2-depth.safetensors", "sd2", "depth", seed=2)
    write_estimator(root / "models", "midas_dpt_hybrid", seed=1)
    srv = Server(root, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(playwright_browser, depth_server):
    context, pg = new_page(playwright_browser)
    open_page(pg, depth_server.url, model="sd2-depth")
    yield pg
    context.close()


def estimate(page, expect: str = "") -> str:
    """Press Estimate and wait for its end: `expect` (the name of the file it saves) in the infotext, or an
    error line."""
    page.click("#depth_estimate")
    page.wait_for_function("(expect) => document.querySelector('#html_log_depth .error') !== null || "
                           "(expect !== '' && document.querySelector('#html_info_depth').innerText.includes(expect) "
                           "&& document.querySelector('#html_log_depth .time') !== null)", arg=expect,
                           timeout=60_000)
    return page.inner_text("#html_log_depth")


def saved_maps(root) -> list:
    folder = root / "outputs" / "depth-images"
    return sorted(p for p in folder.glob("*.png") if not p.stem.endswith(("-grey", "-preview")))


def shown_png(page, elem_id: str) -> Image.Image:
    src = page.locator(f"#{elem_id} img").first.get_attribute("src")
    response = page.request.get(src)
    assert response.ok
    return Image.open(io.BytesIO(response.body()))


def test_estimate_invert_generate_and_send(page, depth_server, tmp_path):
    page.click("#tab_depth-button")
    upload_into(page, page.locator("#depth_image"), source_png(tmp_path / "src.png"))
    set_number(page, "depth_resolution", 128)

    log = estimate(page, "00000.png")
    assert "Time taken" in log, log
    preview = shown_png(page, "depth_preview")
    assert preview.size == (64, 64) and preview.mode in ("RGB", "RGBA")
    assert len(np.unique(np.asarray(preview.convert("RGB")).reshape(-1, 3), axis=0)) > 4  # a coloured map, not a flat picture
    info = page.inner_text("#html_info_depth")
    assert "Depth estimator: midas_dpt_hybrid" in info and "Processing resolution: 128" in info
    assert "outputs/depth-images" in info
    files = saved_maps(depth_server.data_dir)
    assert len(files) == 1
    first = Image.open(files[0])
    assert first.mode in ("I;16", "I") and first.size == (64, 64)
    assert "Depth estimator: midas_dpt_hybrid" in first.info["parameters"]
    values = np.asarray(first, dtype=np.int64)
    assert values.min() == 0 and values.max() == 65535

    page.check("#depth_invert input")
    assert "Time taken" in estimate(page, "00001.png")
    files = saved_maps(depth_server.data_dir)
    assert len(files) == 2
    inverted = np.asarray(Image.open(files[1]), dtype=np.int64)
    assert np.abs(inverted - (65535 - values)).max() <= 1
    assert "Invert: True" in page.inner_text("#html_info_depth")

    # depth2img from the tab: the inverted map shown is what the model gets
    page.click("#depth_generate_accordion")
    page.fill("#depth_prompt textarea", "a room")
    set_number(page, "depth_steps", 3)
    log = press_generate(page, "depth2img")
    assert "Time taken" in log and page.locator("#html_log_depth2img .error").count() == 0, log
    assert gallery_png(page, "depth2img").size == (64, 64)
    assert "Depth source: user map" in page.inner_text("#html_info_depth2img")

    page.click("#depth_send_to_img2img")
    page.locator("#img2img_image img").wait_for()
    assert page.locator("#tab_img2img").is_visible()
    page.click("#img2img_depth_accordion")  # where the map went
    sent = shown_png(page, "img2img_depth_map")
    assert sent.size == (64, 64) and sent.mode in ("I;16", "I")  # the 16-bit map itself
    assert np.abs(np.asarray(sent, dtype=np.int64) - inverted).max() <= 1


def test_missing_estimator_is_refused_on_the_page(page, tmp_path):
    page.click("#tab_depth-button")
    upload_into(page, page.locator("#depth_image"), source_png(tmp_path / "src.png"))
    page.locator("#depth_estimator input").click()
    page.locator("[role=option]:has-text('depth_anything_v2_large')").first.click()
    log = estimate(page)
    assert "depth_anything_v2_large" in log and "models/depth/depth_anything_v2_large" in log, log


def test_send_the_map_to_a_controlnet_unit(page, tmp_path):
    page.click("#tab_depth-button")
    upload_into(page, page.locator("#depth_image"), source_png(tmp_path / "src.png"))
    set_number(page, "depth_resolution", 128)
    estimate(page, ".png")
    page.click("#depth_send_to_controlnet")
    unit = "#txt2img_controlnet_ControlNet-0"
    page.wait_for_selector(f"{unit}_input_image img", state="visible", timeout=30_000)
    assert page.locator("#tab_txt2img").is_visible()
    assert page.locator(f"{unit}_controlnet_enable_checkbox input").is_checked()
    assert page.locator(f"{unit}_controlnet_preprocessor_dropdown input").input_value() == "none"
    sent = Image.open(io.BytesIO(page.request.get(
        page.locator(f"{unit}_input_image img").first.get_attribute("src")).body())).convert("L")
    grey = shown_png(page, "depth_grey").convert("L")
    # the map as shown (the page serves the unit's picture lossily compressed, so within a few levels)
    difference = np.abs(np.asarray(sent, dtype=np.int16) - np.asarray(grey, dtype=np.int16))
    assert sent.size == grey.size and difference.mean() < 4
