"""The ControlNet accordion's functions without a browser: the page it builds (units, the extension's elem ids,
paste fields), control type filtering, the sliders a preprocessor asks for, a unit from the controls (and the
refusals Generate gives for a bad one), the 💥 preview on the queue, and pasting a unit's infotext back (model
by title, renamed file by hash), with a real generation on a tiny SD1 model and ControlNet in between."""

from __future__ import annotations

import html
import shutil
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from controlnet_files import write_controlnet
from PIL import Image, ImageDraw

from modules import processing, scripts, sd_models, shared
from modules.controlnet import files, preprocessors, runtime, ui, ui_values
from modules.controlnet.units import ControlNetUnit
from modules.ui import uploads

CANNY = "control_sd15_canny_tiny"
DEPTH = "control_sd15_depth_tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}}
    settings = {"live_previews_enable": False, "cuda_graphs": False}
    with isolated_data_dir(tmp_path_factory.mktemp("cnui"), checkpoints, settings) as root:
        folder = root / "models" / "ControlNet"
        folder.mkdir(parents=True, exist_ok=True)
        write_controlnet(folder / f"{CANNY}.safetensors", "sd1", "original", seed=1)
        write_controlnet(folder / f"{DEPTH}.safetensors", "sd1", "diffusers", seed=2)
        files.refresh()
        scripts.load_scripts()
        yield root
    files.refresh()


def title(name: str) -> str:
    found = files.find(name)
    assert found is not None, name
    return found.title


def square(size: int = 64) -> np.ndarray:
    picture = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(picture).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="white")
    return np.asarray(picture)


def controls(**given) -> list:
    """A unit's control values (ui_values.CONTROL_NAMES order) as the page starts them, with `given` changed."""
    values = {"enabled": True, "image": square(), "mask": None, "independent": True, "module": "canny",
              "model": title(CANNY), "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0, "low_vram": False,
              "pixel_perfect": False, "processor_res": 512, "threshold_a": 100, "threshold_b": 200,
              "control_mode": "Balanced", "resize_mode": "Crop and Resize", "hr_option": "Both", **given}
    return [values[name] for name in ui_values.CONTROL_NAMES]


def update_of(value) -> dict:
    assert isinstance(value, dict), value
    return value


# --- the page ------------------------------------------------------------------------------------------------------


def built(is_img2img: bool, monkeypatch, count: int = 3):
    monkeypatch.setitem(shared.opts.data, "control_net_unit_count", count)
    script = SimpleNamespace(infotext_fields=None, paste_field_names=None)
    tab = "img2img" if is_img2img else "txt2img"
    with gr.Blocks() as demo:
        gr.Slider(elem_id=f"{tab}_width")
        gr.Slider(elem_id=f"{tab}_height")
        states = ui.build(script, is_img2img)
    ids = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    ids["tabs"] = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    return script, states, ids


def test_accordion_has_one_tab_per_unit_with_the_extensions_elem_ids(data_dir, monkeypatch):
    script, states, ids = built(False, monkeypatch)
    assert len(states) == 3 and all(isinstance(s, gr.State) and s.value is None for s in states)
    assert isinstance(ids["txt2img_controlnet"], gr.Accordion) and ids["txt2img_controlnet"].label == "ControlNet"
    for i in range(3):
        prefix = f"txt2img_controlnet_ControlNet-{i}"
        assert isinstance(ids[f"{prefix}_input_image"], gr.Image)
        assert ids[f"{prefix}_controlnet_enable_checkbox"].label == "Enable"
        assert ids[f"{prefix}_controlnet_enable_checkbox"].value is False
        assert ids[f"{prefix}_controlnet_preprocessor_dropdown"].value == "none"
        assert ids[f"{prefix}_controlnet_control_weight_slider"].label == "Control Weight"
        assert ids[f"{prefix}_controlnet_hr_option_radio"].visible is False  # until Hires. fix is on
    assert ids["tabs"] == ["ControlNet Unit 0", "ControlNet Unit 1", "ControlNet Unit 2"]
    model = ids["txt2img_controlnet_ControlNet-0_controlnet_model_dropdown"]
    assert [c[0] for c in model.choices] == ["None", title(CANNY), title(DEPTH)]
    kinds = [c[0] for c in ids["txt2img_controlnet_ControlNet-0_controlnet_type_filter_radio"].choices]
    assert kinds[:3] == ["All", "Canny", "Depth"]
    assert [label for _, label in script.infotext_fields] == ["ControlNet 0", "ControlNet 1", "ControlNet 2"]
    assert script.paste_field_names == ["ControlNet 0", "ControlNet 1", "ControlNet 2"]


def test_one_unit_uses_the_extensions_single_unit_ids_and_img2img_asks_for_an_own_picture(data_dir, monkeypatch):
    _, states, ids = built(True, monkeypatch, count=1)
    assert len(states) == 1
    assert "img2img_controlnet_ControlNet_controlnet_enable_checkbox" in ids
    independent = ids["img2img_controlnet_ControlNet_controlnet_same_img2img_checkbox"]
    assert independent.label == "Upload independent control image" and independent.value is False
    assert ids["img2img_controlnet_ControlNet_controlnet_trigger_preprocessor"].visible is False


# --- control types and sliders -------------------------------------------------------------------------------------


def test_control_type_filters_preprocessors_and_models_as_the_extension(data_dir):
    modules, models, module, model = ui_values.choices_for("Canny")
    assert module == "canny" and model == title(CANNY)
    assert modules[0] == "none" and "canny" in modules and "depth_midas" not in modules
    assert models == ["None", title(CANNY)]
    update = ui_values.on_control_type("Depth", False)
    assert update_of(update[0])["value"] == "depth_midas" and update_of(update[1])["value"] == title(DEPTH)
    assert update_of(update[1])["choices"] == ["None", title(DEPTH)]
    assert ui_values.choices_for("no such type")[0] == preprocessors.names()


def test_sliders_follow_the_preprocessor(data_dir):
    res, a, b = (update_of(u) for u in ui_values.slider_updates("canny", False))
    assert (res["label"], res["minimum"], res["maximum"], res["value"], res["visible"]) == \
        ("Preprocessor Resolution", 64, 2048, 512, True)
    assert (a["label"], a["minimum"], a["maximum"], a["value"]) == ("Canny Low Threshold", 1, 255, 100)
    assert (b["label"], b["value"], b["visible"]) == ("Canny High Threshold", 200, True)
    assert [update_of(u)["visible"] for u in ui_values.slider_updates("none", False)] == [False] * 3
    tile = [update_of(u) for u in ui_values.slider_updates("tile_resample", False)]
    assert [u["visible"] for u in tile] == [False, True, False] and tile[1]["label"] == "Down Sampling Rate"
    assert update_of(ui_values.slider_updates("canny", True)[0])["visible"] is False  # Pixel Perfect computes it
    kept = [update_of(u)["value"] for u in ui_values.slider_updates("canny", False, (256, 50, 9999))]
    assert kept == [256, 50, 200]  # an out-of-range value falls back to the default


def test_refresh_lists_a_new_file_and_keeps_the_choice(data_dir):
    folder = data_dir / "models" / "ControlNet"
    shutil.copy(folder / f"{CANNY}.safetensors", folder / "control_sd15_canny_copy.safetensors")
    try:
        update = update_of(ui_values.refreshed_models("Canny", title(CANNY)))
        assert update["value"] == title(CANNY)
        assert [c.split(" [")[0] for c in update["choices"]] == ["None", "control_sd15_canny_copy", CANNY]
    finally:
        (folder / "control_sd15_canny_copy.safetensors").unlink()
    update = update_of(ui_values.refreshed_models("Canny", "control_sd15_canny_copy [00000000]"))
    assert update["value"] == "None"  # the chosen file is gone


def generate(states: list) -> processing.Processed:
    """txt2img on the tiny SD1 model with the units' states as the ControlNet script's arguments, as the
    Generate button hands them over."""
    sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a square", steps=3, width=64, height=64, sampler_name="Euler", seed=5, do_not_save_samples=True,
        do_not_save_grid=True)
    runner = scripts.runner_for(p)
    runner.ensure_inputs()
    script = runner.script("ControlNet")
    args = list(runner.default_args())
    args[script.args_from:script.args_from + len(states)] = states
    p.scripts, p.script_args = runner, tuple(args)
    return processing.process_images(p)


# --- the unit's state ----------------------------------------------------------------------------------------------


def test_controls_make_the_unit_the_script_runs(data_dir):
    unit, message = ui_values.unit_value(0, *controls(weight=0.6, guidance_end=0.8, control_mode="Balanced"))
    assert message == "" and isinstance(unit, ControlNetUnit)
    assert (unit.module, unit.model, unit.weight, unit.guidance_end) == ("canny", title(CANNY), 0.6, 0.8)
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 100, 200)
    assert np.array_equal(unit.rgba_images()[0][:, :, :3], square())
    assert ui_values.unit_value(0, *controls(enabled=False)) == (None, "")

    # sliders the preprocessor does not have are "not used" (-1), as the extension sends them
    tile, _ = ui_values.unit_value(0, *controls(module="tile_resample", threshold_a=2.5))
    assert (tile.processor_res, tile.threshold_a, tile.threshold_b) == (-1, 2.5, -1)
    # img2img without "Upload independent control image": the unit reads the img2img picture
    img2img, _ = ui_values.unit_value(0, *controls(independent=False))
    assert img2img.images is None


@pytest.mark.parametrize(("change", "message"), [
    ({"guidance_start": 0.7, "guidance_end": 0.3}, "guidance_start (0.7) is after guidance_end (0.3)"),
    ({"mask": np.zeros((32, 32), np.uint8)}, "mask: its size 32x32 differs from the image's 64x64"),
    ({"image": uploads.UnreadableUpload("notes.txt", "it is not a picture")},
     "Could not read the uploaded image 'notes.txt': it is not a picture."),
    ({"module": "gone_preprocessor"}, 'preprocessor "gone_preprocessor" does not exist'),
])
def test_a_unit_generate_would_refuse_says_so_now_and_generate_refuses_it_by_name(data_dir, change, message):
    value, shown = ui_values.unit_value(1, *controls(**change))
    assert "ControlNet 1: " in shown and message in html.unescape(shown)
    with pytest.raises(runtime.ControlUnitError) as refused:
        generate([None, value])
    assert message in str(refused.value)
    # (the runtime's unknown-preprocessor refusal names the preprocessor, not the unit)
    assert str(refused.value).startswith("ControlNet 1: ") or "gone_preprocessor" in message


# --- preview -------------------------------------------------------------------------------------------------------


def test_preview_is_the_preprocessors_map_with_the_units_settings(data_dir):
    job = ui_values.preview_work(square(), None, "canny", 64, 50, 150, False, "Crop and Resize", 512, 512)
    assert np.array_equal(job(), preprocessors.run("canny", square(), 64, 50, 150))
    # Pixel Perfect: the resolution from the generation size (128x128 for a 64x64 picture: twice as large)
    job = ui_values.preview_work(square(), None, "canny", 64, 100, 200, True, "Crop and Resize", 128, 128)
    assert job().shape[:2] == (128, 128)


def test_preview_refusals_are_readable(data_dir):
    with pytest.raises(ValueError, match="Upload a control image"):
        ui_values.preview_work(None, None, "canny", 512, 100, 200, False, "Crop and Resize", 64, 64)
    with pytest.raises(ValueError, match="Could not read the uploaded image 'x.png'"):
        ui_values.preview_work(uploads.UnreadableUpload("x.png", "damaged"), None, "canny", 512, 100, 200, False,
                               "Crop and Resize", 64, 64)
    job = ui_values.preview_work(square(), None, "depth_midas", 512, -1, -1, False, "Crop and Resize", 64, 64)
    with pytest.raises(ValueError) as missing:
        job()
    text = str(missing.value)
    assert text.startswith('ControlNet preprocessor "depth_midas" needs its weights at models/')
    assert str(data_dir) not in text  # never the server's own layout


def test_inpaint_preview_shows_the_masked_area_half_transparent(data_dir):
    mask = np.zeros((64, 64), np.uint8)
    mask[:32] = 255
    shown = ui_values.preview_work(square(), mask, "inpaint_only", 512, -1, -1, False, "Crop and Resize", 64, 64)()
    assert shown.shape == (64, 64, 4)
    assert set(np.unique(shown[:32, :, 3])) == {128} and set(np.unique(shown[32:, :, 3])) == {255}


def test_preview_button_runs_on_the_queue(data_dir):
    request = SimpleNamespace(session_hash="cnui-test", username=None)
    updates = list(ui.run_preview(request, square(), None, "canny", 512, 100, 200, False, "Crop and Resize", 64,
                                  64))
    picture, allow_preview, notice = updates[-1]
    assert allow_preview is True and notice == ""
    assert np.array_equal(picture, preprocessors.run("canny", square(), 512, 100, 200))
    *_, (_, _, refused) = ui.run_preview(request, None, None, "canny", 512, 100, 200, False, "Crop and Resize", 64,
                                         64)
    assert "Upload a control image" in refused and "class='error'" in refused


# --- infotext paste ------------------------------------------------------------------------------------------------


def pasted(text: str) -> dict:
    values, note = ui_values.pasted_values(text)
    out = dict(zip(ui_values.PASTED_NAMES, values, strict=True))
    out["note"] = note
    return out


def value(update):
    return update["value"] if isinstance(update, dict) else update


def test_a_generated_unit_pastes_back_into_the_same_controls(data_dir):
    from modules import infotext_utils

    unit, _ = ui_values.unit_value(0, *controls(weight=0.75, guidance_start=0.1, guidance_end=0.9,
                                                processor_res=128, threshold_a=80, threshold_b=160,
                                                control_mode="My prompt is more important",
                                                resize_mode="Just Resize"))
    result = generate([unit])
    assert len(result.images) == 2  # the picture and the detected map
    params = infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert params["ControlNet 0"].startswith("Module: canny, Model: " + title(CANNY))

    got = pasted(params["ControlNet 0"])
    assert got["note"] == ""
    assert got["enabled"] is True and got["control_type"] == "All"
    assert value(got["module"]) == "canny" and value(got["model"]) == title(CANNY)
    assert (got["weight"], got["guidance_start"], got["guidance_end"]) == (0.75, 0.1, 0.9)
    assert [value(got[n]) for n in ("processor_res", "threshold_a", "threshold_b")] == [128, 80, 160]
    assert (got["control_mode"], got["resize_mode"]) == ("My prompt is more important", "Just Resize")
    assert got["pixel_perfect"] is False
    # the model dropdown lists everything again, whatever control type was chosen before
    assert got["model"]["choices"] == ["None", title(CANNY), title(DEPTH)]


def test_paste_finds_a_renamed_model_by_its_hash_and_says_what_is_missing(data_dir):
    folder = data_dir / "models" / "ControlNet"
    old = title(CANNY)
    written = old.replace(CANNY, "canny_from_last_year")
    shutil.move(folder / f"{CANNY}.safetensors", folder / "canny_renamed.safetensors")
    try:
        files.refresh()
        got = pasted(f"Module: canny, Model: {written}, Weight: 1.0")
        assert value(got["model"]) == title("canny_renamed") == old.replace(CANNY, "canny_renamed")
    finally:
        shutil.move(folder / "canny_renamed.safetensors", folder / f"{CANNY}.safetensors")
        files.refresh()
    got = pasted("Module: depth, Model: someone_elses_model [0123abcd], Weight: 0.5")
    assert value(got["module"]) == "depth_midas"  # the extension's internal name, read as its label
    assert value(got["model"]) == "None" and got["weight"] == 0.5
    assert 'model "someone_elses_model [0123abcd]" is not in the ControlNet model folders' in got["note"]


def test_no_unit_in_the_infotext_changes_nothing_and_a_broken_one_says_so(data_dir):
    values, note = ui_values.pasted_values(None)
    assert note == "" and all(isinstance(v, type(gr.skip())) for v in values)
    values, note = ui_values.pasted_values("Weight: banana")
    assert "Could not read the pasted ControlNet unit" in note


def test_the_page_registers_the_units_for_paste_and_shows_the_hires_option_with_hires_fix(data_dir):
    from modules import infotext_utils
    from modules.ui import app, paste

    demo = app.create_ui()
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    for tab in ("txt2img", "img2img"):
        box = blocks[f"{tab}_controlnet_ControlNet-0_controlnet_pasted"]
        fields = [(component, target) for component, target in infotext_utils.paste_fields[tab]["fields"]
                  if component is box]
        assert fields == [(box, "ControlNet 0")]
        text = "Module: canny, Model: x [12345678], Weight: 1.0"
        assert paste.values_for(fields, {"ControlNet 0": text, "Steps": 20}) == [text]
    switch = blocks["txt2img_hr-checkbox"]
    radios = {blocks[f"txt2img_controlnet_ControlNet-{i}_controlnet_hr_option_radio"]._id for i in range(3)}
    listeners = [d for d in demo.config["dependencies"]
                 if [switch._id, "change"] in [list(t) for t in d["targets"]] and set(d["outputs"]) == radios]
    assert len(listeners) == 1
