"""The modules A1111 extensions import exist under A1111's names (reference §6.6), and behave like them."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# module -> names extensions use from it (reference §6.6 and issue 12 point 7)
A1111_NAMES: dict[str, list[str]] = {
    "modules.shared": [
        "opts", "cmd_opts", "parser", "state", "sd_model", "device", "sd_upscalers", "face_restorers",
        "prompt_styles", "demo", "OptionInfo", "OptionHTML", "options_section", "options_templates",
        "config_filename", "styles_filename", "hide_dirs", "models_path", "data_path", "script_path",
        "extensions_dir", "listfiles", "walk_files", "natural_sort_key", "refresh_checkpoints",
        "list_checkpoint_tiles", "hf_endpoint",
    ],
    "modules.processing": [
        "process_images", "process_images_inner", "fix_seed", "get_fixed_seed", "create_infotext",
        "StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img",
        "Processed",
    ],
    "modules.images": ["save_image", "read_info_from_image", "resize_image", "image_grid"],
    "modules.sd_models": [
        "checkpoints_list", "checkpoint_aliases", "checkpoint_alisases", "get_closet_checkpoint_match",
        "select_checkpoint", "reload_model_weights", "unload_model_weights", "model_data", "CheckpointInfo",
        "model_hash", "list_models", "checkpoint_tiles",
    ],
    "modules.sd_samplers": [
        "all_samplers", "all_samplers_map", "samplers", "samplers_for_img2img", "samplers_map", "set_samplers",
        "create_sampler", "find_sampler_config", "get_sampler_and_scheduler", "get_sampler_from_infotext",
    ],
    "modules.sd_samplers_common": ["SamplerData", "setup_img2img_steps", "is_sampler_using_eta_noise_seed_delta",
                                   "InterruptedException"],
    "modules.sd_samplers_kdiffusion": ["KDiffusionSampler", "samplers_k_diffusion", "samplers_data_k_diffusion",
                                       "sampler_extra_params", "k_diffusion_samplers_map"],
    "modules.sd_schedulers": ["Scheduler", "schedulers", "schedulers_map"],
    "modules.infotext_utils": ["parse_generation_parameters", "bind_buttons", "register_paste_params_button",
                               "ParamBinding", "PasteField"],
    "modules.generation_parameters_copypaste": ["parse_generation_parameters", "ParamBinding"],
    "modules.paths": ["script_path", "data_path", "models_path", "extensions_dir", "extensions_builtin_dir"],
    "modules.ui_components": ["ToolButton", "FormRow", "FormColumn", "FormGroup", "FormHTML", "FormColorPicker",
                              "InputAccordion", "ResizeHandleRow", "DropdownMulti", "DropdownEditable"],
    "modules.ui_common": ["create_refresh_button", "plaintext_to_html", "save_files", "refresh_symbol"],
    "modules.devices": ["device", "cpu", "dtype", "torch_gc", "autocast", "get_optimal_device"],
    "modules.extra_networks": ["ExtraNetwork", "ExtraNetworkParams", "register_extra_network", "parse_prompt",
                               "activate", "deactivate"],
    "modules.extensions": ["active", "extensions", "Extension"],
    "modules.hashes": ["sha256", "sha256_from_cache", "calculate_sha256", "addnet_hash_safetensors", "cache",
                       "dump_cache"],
    "modules.scripts": ["Script", "AlwaysVisible", "basedir"],
    "modules.script_callbacks": ["on_ui_tabs", "on_ui_settings", "on_app_started"],
    "launch": ["is_installed", "run_pip", "run"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(A1111_NAMES))
def test_module_has_a1111_names(module):
    imported = importlib.import_module(module)
    missing = [name for name in A1111_NAMES[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


def test_old_infotext_module_name_is_the_same_module():
    from modules import generation_parameters_copypaste, infotext_utils

    assert generation_parameters_copypaste is infotext_utils


def test_shared_device_follows_devices_and_styles_are_made_on_first_use(monkeypatch, tmp_path):
    import torch

    from modules import devices, shared

    assert shared.device == devices.device and isinstance(shared.device, torch.device)
    monkeypatch.setattr(devices, "device", torch.device("cpu"))
    assert shared.device is devices.device

    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nneon,{prompt}, neon,\n", encoding="utf-8")
    monkeypatch.delattr(shared, "prompt_styles", raising=False)
    monkeypatch.setattr(shared, "styles_filename", [str(tmp_path / "styles.csv")])
    assert "neon" in shared.prompt_styles.styles
    assert shared.prompt_styles is shared.prompt_styles  # made once


def test_shared_file_helpers(tmp_path, monkeypatch):
    from modules import shared

    for name in ("img10.png", "img2.png", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.PNG").write_bytes(b"x")
    assert [os.path.basename(f) for f in shared.listfiles(str(tmp_path))] == ["img2.png", "img10.png", "notes.txt"]
    walked = [os.path.relpath(f, tmp_path) for f in shared.walk_files(str(tmp_path), allowed_extensions=[".png"])]
    assert walked == [".hidden.png", "img2.png", "img10.png", os.path.join("sub", "a.PNG")]
    assert sorted(["b10", "b9", "A1"], key=shared.natural_sort_key) == ["A1", "b9", "b10"]


def test_launch_helpers_for_install_scripts():
    import launch

    assert launch.is_installed("pytest") and not launch.is_installed("no-such-package-xyz")
    assert launch.run([sys.executable, "-c", "print('hi')"]).strip() == "hi"


# --- ui_components / ui_common ---


def test_ui_components_are_drawn_as_their_gradio_components():
    from modules import ui_components as uc
    from modules.ui import common

    with gr.Blocks() as demo:
        with uc.FormRow(elem_id="row"):
            uc.ToolButton(value="\U0001f504", elem_id="tool", tooltip="Refresh the list")
            uc.DropdownMulti(choices=["a", "b"], value=["a"], label="multi")
            uc.DropdownEditable(choices=["a"], value="a", label="editable")
        with uc.ResizeHandleRow(), uc.FormColumn(), uc.FormGroup():
            uc.FormHTML("<b>x</b>")
            uc.FormColorPicker(label="colour")
    components = {c["props"].get("label") or c["props"].get("elem_id") or c["type"]: c
                  for c in demo.get_config_file()["components"]}
    assert components["row"]["type"] == "row"
    assert components["tool"]["type"] == "button" and "tool" in components["tool"]["props"]["elem_classes"]
    assert common.TOOLTIPS["tool"] == "Refresh the list"
    assert components["multi"]["type"] == "dropdown" and components["multi"]["props"]["multiselect"] is True
    assert components["editable"]["props"]["allow_custom_value"] is True
    assert components["colour"]["type"] == "colorpicker"
    types = {c["type"] for c in demo.get_config_file()["components"]}
    assert {"row", "column", "group", "html"} <= types
    assert any("resize-handle-row" in (c["props"].get("elem_classes") or [])
               for c in demo.get_config_file()["components"])
    assert not list((REPO / "modules").glob("*.pyi"))  # Gradio writes stubs for component classes; not ours


def test_input_accordion_is_an_input_that_follows_the_accordion():
    from modules.ui_components import InputAccordion

    with gr.Blocks() as demo:
        with InputAccordion(True, label="Hires. fix", elem_id="hr") as enable:
            with enable.extra():
                gr.HTML("next to the label")
            inner = gr.Textbox(label="inside")
    assert isinstance(enable, gr.Checkbox) and enable.value is True and enable.visible is False
    assert enable.accordion.open is True
    parent = inner.parent
    while parent is not None and parent is not enable.accordion:
        parent = parent.parent
    assert parent is enable.accordion  # `with InputAccordion(...)` puts components into the accordion
    config = demo.get_config_file()
    by_id = {c["id"]: c for c in config["components"]}
    assert by_id[enable._id]["type"] == "checkbox" and by_id[enable.accordion._id]["type"] == "accordion"
    triggers = {(t[1]) for d in config["dependencies"] for t in d["targets"]}
    assert {"expand", "collapse", "change"} <= triggers
    follow = next(fn for fn in demo.fns.values() if fn.name == "<lambda>")
    assert follow.fn(False) == {"__type__": "update", "open": False}


def test_plaintext_to_html_escapes():
    from modules.ui_common import plaintext_to_html

    assert plaintext_to_html("a<b>\nc") == "<p>a&lt;b&gt;<br>\nc</p>"
    assert plaintext_to_html("x", "info'") == "<p class='info&#x27;'>x</p>"


def test_refresh_button_calls_the_method_and_updates_the_component():
    from modules.ui_common import create_refresh_button

    calls = []
    with gr.Blocks() as demo:
        dropdown = gr.Dropdown(choices=["a"], label="Model")
        other = gr.Dropdown(choices=["a"], label="Other")
        create_refresh_button(dropdown, lambda: calls.append(1), lambda: {"choices": ["a", "b"]}, "refresh_model")
        create_refresh_button([dropdown, other], lambda: calls.append(2), {"choices": ["c"]}, "refresh_both")
    first, both = [fn for fn in demo.fns.values() if fn.name == "refresh"]
    assert first.fn() == {"__type__": "update", "choices": ["a", "b"]}
    assert both.fn() == [{"__type__": "update", "choices": ["c"]}] * 2 and calls == [1, 2]


def test_save_files_writes_images_infotext_and_log(tmp_path, monkeypatch):
    from modules import images, shared
    from modules.ui_common import save_files

    monkeypatch.setitem(shared.opts.data, "outdir_save", str(tmp_path / "saved"))
    monkeypatch.setitem(shared.opts.data, "samples_format", "png")
    source = tmp_path / "00001.png"
    Image.new("RGB", (8, 8), "red").save(source)
    text = "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 8x8"
    js = json.dumps({"prompt": "a red circle", "seed": 42, "width": 8, "height": 8, "sampler_name": "Euler",
                     "cfg_scale": 7, "steps": 2, "infotexts": [text], "index_of_first_image": 0,
                     "sd_model_name": "tiny", "sd_model_hash": "abc"})
    files, message = save_files(js, [(str(source), None)], do_make_zip=True, index=0)
    saved = [f for f in files["value"] if f.endswith(".png")]
    assert files["visible"] is True and any(f.endswith(".zip") for f in files["value"])
    assert "Saved: " in message and len(saved) == 1
    assert images.read_info_from_image(Image.open(saved[0]))[0] == text
    log = (tmp_path / "saved" / "log.csv").read_text(encoding="utf-8").splitlines()
    assert log[0].startswith("prompt,seed,width") and log[1].startswith("a red circle,42,8,8,Euler")


# --- tidiness (issue 12 point 13) ---


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_state_does_not_import_the_engine():
    code = ("import sys, modules.shared_state, modules.shared; "
            "print(sorted(m for m in sys.modules if m.startswith('modules.engine') or m == 'torch'))")
    assert run_python(code) == "[]"


def test_the_job_hands_the_state_its_preview_function():
    import torch

    from modules.engine import previews
    from modules.shared_state import State

    state = State()
    state.begin()
    state.current_latent = torch.zeros(1, 4, 2, 2)
    state.do_set_current_image()
    assert state.current_image is None  # nothing handed over: no preview, and no engine import to make one
    state.preview_function = previews.preview_function(model=None)
    state.do_set_current_image()
    assert state.current_image.size == (16, 16)


def test_default_model_world_lives_with_its_tools():
    assert importlib.util.find_spec("modules.default_model") is None
    assert importlib.util.find_spec("tools.default_model.scenes") is not None
    # no runtime module reaches for the training tools' world (the word alone is also a ControlNet API key)
    reaching = re.compile(r"(tools\.default_model|import default_model|from default_model)")
    runtime = [p for p in (REPO / "modules").rglob("*.py") if reaching.search(p.read_text(encoding="utf-8"))]
    assert runtime == []


@pytest.mark.parametrize("name", ["images.py", "infotext_utils.py", "filename_patterns.py"])
def test_modules_are_imported_normally(name):
    assert "importlib" not in (REPO / "modules" / name).read_text(encoding="utf-8")
