"""Settings' Actions and Sysinfo sub-tabs as a person uses them: unload the checkpoint, see the line saying so,
load it again, hash every checkpoint, and generate afterwards; download the system report from its link and
check it, then see an edited copy called edited."""

from __future__ import annotations

import json
import re

from .helpers import fill_prompt, gallery_png, open_settings_section, press_generate, small_run


def _press_and_read(page, button: str, expected: str) -> str:
    page.click(f"#{button}")
    page.wait_for_selector(f"#settings_actions_result :text('{expected}')", timeout=60_000)
    return page.inner_text("#settings_actions_result")


def test_unload_load_and_hash_then_generate(page):
    open_settings_section(page, "Actions")
    assert "next job loads it again" in _press_and_read(page, "sett_unload_sd_model", "Checkpoint unloaded")
    assert "tiny" in _press_and_read(page, "sett_reload_sd_model", "Checkpoint loaded")
    hashed = re.search(r"Hashed (\d+) of (\d+) checkpoints", _press_and_read(page, "calculate_all_checkpoint_hash",
                                                                             "Hashed"))
    assert hashed and hashed[1] == hashed[2] != "0"  # the tiny checkpoint and the bundled model, none unreadable
    page.click("#tab_txt2img-button")
    fill_prompt(page, "txt2img", "after the actions")
    small_run(page, "txt2img", steps=2)
    press_generate(page, "txt2img")
    assert gallery_png(page, "txt2img").info["parameters"].startswith("after the actions")


def test_download_the_system_report_and_check_it(page):
    open_settings_section(page, "Sysinfo")
    with page.expect_download() as download:
        page.click("#sysinfo_download")
    text = open(download.value.path(), encoding="utf-8").read()
    assert download.value.suggested_filename.startswith("sysinfo-")
    info = json.loads(text)
    assert info["Torch"]["version"] and info["Extensions"] is not None and "Config" in info
    page.fill("#sysinfo_check_text textarea", text)
    page.click("#sysinfo_check")
    page.wait_for_selector("#sysinfo_check_result :text('was not edited')")
    info["Commandline"] = {}
    page.fill("#sysinfo_check_text textarea", json.dumps(info))
    page.click("#sysinfo_check")
    page.wait_for_selector("#sysinfo_check_result :text('does not match')")
