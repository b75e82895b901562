"""The Settings tab's logic and the page build: widgets per setting, Apply saves config.json, element ids."""

from __future__ import annotations

import json
from html import escape as html_escape

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


def test_an_out_of_range_value_refuses_the_whole_apply_and_saves_nothing(config):
    config.write_text('{"eta_noise_seed_delta": 0}')
    before = config.read_bytes()
    keys = ["eta_noise_seed_delta", "show_progress_every_n_steps"]
    html = settings.apply(keys, [2**80, shared.opts.show_progress_every_n_steps + 1])
    assert ("Eta noise seed delta (eta_noise_seed_delta): 1208925819614629174706176 is out of range "
            "(0 to 4294967295)") in html
    assert "class='error'" in html and "Nothing was saved" in html
    assert config.read_bytes() == before
    assert shared.opts.eta_noise_seed_delta == 0
    assert shared.opts.show_progress_every_n_steps == shared.opts.get_default("show_progress_every_n_steps")


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("randn_source", "../../x", "'../../x' is not one of: GPU, CPU, NV"),
    ("sd_checkpoints_limit", -5, "-5 is out of range (1 to 10)"),
    ("live_previews_enable", "maybe", "expected true/false"),
    ("eta_noise_seed_delta", None, "a value is required"),  # an emptied Number box
])
def test_each_bad_value_is_named_and_not_saved(config, key, value, reason):
    before = shared.opts.data.get(key)
    html = settings.apply([key], [value])
    assert f"({key}): " in html and html_escape(reason) in html
    assert not config.exists()
    assert shared.opts.data.get(key) == before  # unchanged (whatever earlier tests left there)


def test_all_bad_values_are_listed_at_once(config):
    html = settings.apply(["randn_source", "sd_checkpoints_limit"], ["../../x", -5])
    assert html.count("class='error'") == 2 and "correct the values above" in html


def test_a_good_value_is_still_saved(config):
    html = settings.apply(["eta_noise_seed_delta", "randn_source"], [31337.0, "CPU"])
    assert "2 settings changed" in html
    saved = json.loads(config.read_text())
    assert saved["eta_noise_seed_delta"] == 31337 and isinstance(saved["eta_noise_seed_delta"], int)
    assert saved["randn_source"] == "CPU"


def test_the_ensd_box_is_a_number_box_without_a_slider_range():
    # A slider 0..2**32 would be useless; the range is checked on Apply instead (and the browser test types past it).
    with gr.Blocks():
        box = settings.component_for("eta_noise_seed_delta", shared.opts.data_labels["eta_noise_seed_delta"])
    assert isinstance(box, gr.Number) and box.precision == 0


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
                    "tab_img2img", "tab_pnginfo", "tab_extensions", "tab_settings", "script_list"):
        assert elem_id in ids, elem_id
    # no placeholder tabs for features that do not exist
    assert "tab_train" not in ids
    assert {"tab_modelmerger", "modelmerger_primary_model_name", "modelmerger_merge", "modelmerger_result"} <= ids
    assert {"tab_extras", "extras_upscaler_1", "extras_upscaling_resize", "txt2img_send_to_extras"} <= ids


def test_applying_the_page_as_it_opens_is_accepted(config):
    """Apply with every widget as the page shows it (nothing touched) must not refuse anything: a dropdown with
    no choice yet sends "" (upscaler_for_img2img with no upscalers refused every Apply)."""
    keys = [k for k, info in shared.opts.data_labels.items() if not getattr(info, "do_not_save", False)]
    with gr.Blocks():
        widgets = {k: settings.component_for(k, shared.opts.data_labels[k]) for k in keys}
    values = ["" if getattr(w, "value", None) is None else w.value for w in widgets.values()]
    html = settings.apply(list(widgets), values)
    assert "class='error'" not in html, html
    # gradio itself refuses a dropdown value outside its choices before Apply runs: none may open that way.
    for key, w in widgets.items():
        if isinstance(w, gr.Dropdown) and not w.allow_custom_value:
            choices = [c[1] for c in w.choices]
            assert all(v in choices for v in (w.value if isinstance(w.value, list) else [w.value])), key


def test_a_saved_choice_missing_from_todays_list_does_not_block_apply(config):
    """config.json names an upscaler whose file was removed: the page still applies another change, keeps that
    value, and a new value outside the list is refused by the setting's name."""
    shared.opts.data["upscaler_for_img2img"] = "4x-Removed"
    keys = ["upscaler_for_img2img", "show_progress_every_n_steps"]
    with gr.Blocks():
        dropdown = settings.component_for(keys[0], shared.opts.data_labels[keys[0]])
    assert dropdown.preprocess("4x-Removed") == "4x-Removed"  # gradio hands it to our check, not an error of its own
    assert ("4x-Removed (not found)", "4x-Removed") in dropdown.choices  # listed, so the page keeps it
    assert ("None", "None") in dropdown.choices
    # set after the page was built (the API): a page load lists it too
    shared.opts.data["upscaler_for_img2img"] = "4x-Gone-Later"
    update = settings._loaded(shared.opts.data_labels[keys[0]], "4x-Gone-Later")
    assert update.value == "4x-Gone-Later" and ("4x-Gone-Later (not found)", "4x-Gone-Later") in update.choices
    assert ("4x-Removed (not found)", "4x-Removed") not in update.choices
    shared.opts.data["upscaler_for_img2img"] = "4x-Removed"
    html = settings.apply(keys, ["4x-Removed", 3])
    assert "1 setting changed" in html and shared.opts.show_progress_every_n_steps == 3
    assert json.loads(config.read_text())["upscaler_for_img2img"] == "4x-Removed"
    html = settings.apply(keys, ["4x-Typed", 3])
    assert "class='error'" in html and "upscaler_for_img2img" in html and "&#x27;4x-Typed&#x27; is not one of" in html
    assert shared.opts.upscaler_for_img2img == "4x-Removed"
