"""The Settings tab's logic and the page build: widgets per setting, Apply saves config.json, element ids."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from modules import shared
from modules.options import OptionInfo
from modules.ui import settings


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    monkeypatch.setattr(shared, "config_filename", str(path))
    saved = dict(shared.opts.data)
    yield path
    shared.opts.data.clear()
    shared.opts.data.update(saved)


def test_each_setting_gets_a_fitting_widget():
    with gr.Blocks():
        assert isinstance(settings.component_for("a", OptionInfo(True, "A")), gr.Checkbox)
        assert isinstance(settings.component_for("b", OptionInfo("x", "B", component_args={"choices": ["x", "y"]})),
                          gr.Dropdown)
        slider = settings.component_for("c", OptionInfo(3, "C", component_args={"minimum": 1, "maximum": 9}))
        assert isinstance(slider, gr.Slider) and slider.elem_id == "setting_c"
        assert isinstance(settings.component_for("d", OptionInfo(1000, "D")), gr.Number)
        text = settings.component_for("e", OptionInfo("s", "E").info("<b>bold</b> note"))
        assert isinstance(text, gr.Textbox) and text.info == "(bold note)"


def test_apply_changes_settings_and_saves_config_json(config):
    keys = ["show_progress_every_n_steps", "live_previews_enable"]
    html = settings.apply(keys, [7.0, shared.opts.live_previews_enable])
    assert "1 setting changed: Live preview display period" in html
    assert shared.opts.show_progress_every_n_steps == 7
    assert json.loads(config.read_text())["show_progress_every_n_steps"] == 7
    assert "No settings changed" in settings.apply(keys, [7, shared.opts.live_previews_enable])


def test_a_value_of_the_wrong_type_is_reported_not_saved(config):
    html = settings.apply(["show_progress_every_n_steps"], ["lots"])
    assert "class='error'" in html and "show_progress_every_n_steps" in html
    assert shared.opts.show_progress_every_n_steps != "lots"


def test_frozen_settings_are_refused(config, monkeypatch):
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--freeze-settings"]))
    assert "frozen" in settings.apply(["show_progress_every_n_steps"], [3])
    assert not config.exists()


def test_the_page_has_a1111_element_ids():
    from modules.ui import app

    demo = app.create_ui()
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for tab in ("txt2img", "img2img"):
        for suffix in ("prompt", "neg_prompt", "steps", "sampling", "scheduler", "width", "height", "batch_count",
                       "batch_size", "cfg_scale", "seed", "generate", "interrupt", "skip", "gallery", "styles",
                       "random_seed", "reuse_seed", "res_switch_btn", "token_counter", "negative_token_counter",
                       "subseed", "subseed_strength", "send_to_img2img", "send_to_inpaint"):
            assert f"{tab}_{suffix}" in ids, f"{tab}_{suffix}"
        assert f"html_info_{tab}" in ids and f"generation_info_{tab}" in ids
    for elem_id in ("img2img_image", "img2img_sketch", "img2maskimg", "img_inpaint_base", "img_inpaint_mask",
                    "img2img_batch_input_dir", "img2img_batch_output_dir", "img2img_denoising_strength",
                    "img2img_mask_blur", "img2img_inpainting_fill", "img2img_inpaint_full_res", "resize_mode",
                    "pnginfo_image", "pnginfo_send_to_txt2img", "pnginfo_send_to_img2img", "pnginfo_send_to_inpaint",
                    "settings_submit", "settings_restart_gradio", "setting_sd_model_checkpoint", "setting_sd_vae",
                    "setting_CLIP_stop_at_last_layers", "refresh_sd_model_checkpoint", "tab_txt2img",
                    "tab_img2img", "tab_pnginfo", "tab_settings"):
        assert elem_id in ids, elem_id
    # no placeholder tabs for features that do not exist
    assert not ids & {"tab_extras", "tab_train", "tab_modelmerger", "tab_extensions"}
