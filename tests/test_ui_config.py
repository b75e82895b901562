"""ui-config.json (A1111's `--ui-config-file`): the real page records its defaults into it on the first build,
takes hand-edited defaults and limits from it, skips values that do not fit with a warning naming the key, and
moves a corrupt file aside."""

from __future__ import annotations

import json
import os

import gradio as gr
import pytest

from modules import cmd_args, script_callbacks, scripts, shared
from modules.ui import app, ui_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("uiconfig"), {"sd1.safetensors": {"family": "sd1", "seed": 3}}) \
            as root:
        scripts.load_scripts()  # the Script dropdown's and the always-on scripts' controls
        yield root


@pytest.fixture
def config(data_dir):
    path = data_dir / "ui-config.json"
    path.unlink(missing_ok=True)
    for old in data_dir.glob("ui-config.json.bad-*"):
        old.unlink()
    return path


def _by_id(demo: gr.Blocks, elem_id: str):
    (block,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return block


def _served(demo: gr.Blocks, elem_id: str) -> dict:
    """The component's props in the config the page is served with (made when the Blocks closed)."""
    (props,) = [c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == elem_id]
    return props


def _xyz_control(runner: scripts.ScriptRunner, label: str):
    (script,) = [s for s in runner.scripts if os.path.basename(s.filename or "") == "xyz_grid.py"]
    (control,) = [c for c in script.controls if getattr(c, "label", None) == label]
    return control


def test_the_first_build_records_every_default_in_build_order(config):
    app.create_ui()
    text = config.read_text(encoding="utf-8")
    saved = json.loads(text)
    assert saved["txt2img/Sampling steps/value"] == 20
    assert saved["txt2img/Sampling steps/minimum"] == 1 and saved["txt2img/Sampling steps/step"] == 1
    assert saved["txt2img/Width/maximum"] == 2048
    assert saved["txt2img/Seed/visible"] is True and saved["txt2img/Seed/value"] == -1
    assert saved["img2img/Denoising strength/value"] == 0.75
    assert saved["txt2img/Sampling method/value"] == "DPM++ 2M"
    assert "img2img/Tabs@mode_img2img/selected" in saved
    assert saved["extras/Resize/value"] == 4 and saved["depth/Sampling steps/value"] == 20
    assert saved["customscript/xyz_grid.py/txt2img/Draw legend/value"] is True  # a script's control
    assert saved["txt2img/🎲️/visible"] is True  # a labelless button: keyed by its text
    assert not [k for k in saved if k.startswith(("settings/", "extensions/"))]
    assert not [k for k in saved if "/Override settings/" in k]  # filled per paste (do_not_save_to_config)
    keys = list(saved)
    assert keys[0].startswith("txt2img/") and keys.index("txt2img/Width/value") < keys.index("img2img/Prompt/value")
    assert '\n    "txt2img/Sampling steps/value": 20,' in text  # indent 4, as A1111 writes it

    # a build that adds no key leaves the file as it is (not even rewritten: the same inode)
    before = config.stat().st_ino
    app.create_ui()
    assert config.stat().st_ino == before and config.read_text(encoding="utf-8") == text


def test_edited_values_take_effect_on_the_page(config, capsys):
    config.write_text(json.dumps({
        "txt2img/Sampling steps/value": 30,
        "txt2img/Width/maximum": 4096,
        "txt2img/Width/value": 3000,  # beyond the default maximum, inside the edited one
        "txt2img/Seed/visible": False,
        "txt2img/Sampling method/value": "Euler",
        "txt2img/Styles/value": [],
        "txt2img/Prompt/value": 42,  # a textbox takes numbers as text
        "txt2img/Control Weight/value": 1.5,  # three units share the label: all of them
        "img2img/Denoising strength/value": 0.5,
        "img2img/Tabs@mode_img2img/selected": "inpaint",
        "customscript/xyz_grid.py/txt2img/Draw legend/value": False,
        "txt2img/Script/value": "X/Y/Z plot",  # shows that script's controls, as A1111 does
        "txt2img/Hires. fix/value": True,  # an InputAccordion: the accordion opens
        "someone/else's/key": "kept",
    }), encoding="utf-8")
    demo = app.create_ui()
    steps, width = _by_id(demo, "txt2img_steps"), _by_id(demo, "txt2img_width")
    assert steps.value == 30 and _served(demo, "txt2img_steps")["value"] == 30
    assert width.maximum == 4096 and width.value == 3000 and _served(demo, "txt2img_width")["maximum"] == 4096
    assert _by_id(demo, "txt2img_seed").visible is False and _served(demo, "txt2img_seed")["visible"] is False
    assert _by_id(demo, "txt2img_sampling").value == "Euler"
    assert _by_id(demo, "txt2img_prompt").value == "42"
    weights = [b for b in demo.blocks.values() if isinstance(b, gr.Slider) and b.label == "Control Weight"
               and b.elem_id.startswith("txt2img")]
    assert len(weights) == 3 and all(w.value == 1.5 for w in weights)
    assert _by_id(demo, "img2img_denoising_strength").value == 0.5
    assert _by_id(demo, "mode_img2img").selected == "inpaint"
    assert _xyz_control(scripts.scripts_txt2img, "Draw legend").value is False
    assert _xyz_control(scripts.scripts_img2img, "Draw legend").value is True  # another tab, another key
    assert _by_id(demo, "img2img_steps").value == 20  # img2img's steps have their own key
    assert scripts.scripts_txt2img.inputs[0].value == "X/Y/Z plot"  # the Script dropdown
    groups = {s.title(): s.group.visible for s in scripts.scripts_txt2img.selectable_scripts}
    assert groups["X/Y/Z plot"] is True and groups["Prompt matrix"] is False
    assert _by_id(demo, "txt2img_hr-checkbox").value is True and _by_id(demo, "txt2img_hr").open is True
    assert "Warning" not in capsys.readouterr().err

    saved = json.loads(config.read_text(encoding="utf-8"))
    assert saved["txt2img/Sampling steps/value"] == 30 and saved["someone/else's/key"] == "kept"
    assert saved["txt2img/Height/maximum"] == 2048  # the keys the file lacked were added


@pytest.mark.parametrize(("key", "value", "elem_id", "attribute", "default"), [
    ("txt2img/Sampling steps/value", "thirty", "txt2img_steps", "value", 20),
    ("txt2img/Sampling steps/value", 151, "txt2img_steps", "value", 20),  # outside 1..150
    ("txt2img/Sampling steps/value", True, "txt2img_steps", "value", 20),
    ("txt2img/Width/value", 4000, "txt2img_width", "value", 512),  # the maximum is still 2048
    ("txt2img/Width/minimum", 1024, "txt2img_width", "minimum", 64),  # would shut out the value 512
    ("txt2img/Width/step", 0, "txt2img_width", "step", 8),
    ("txt2img/Sampling method/value", "No such sampler", "txt2img_sampling", "value", "DPM++ 2M"),
    ("txt2img/Styles/value", ["no such style"], "txt2img_styles", "value", []),
    ("txt2img/Seed/visible", "no", "txt2img_seed", "visible", True),
    ("txt2img/Seed/value", "42", "txt2img_seed", "value", -1),
    ("txt2img/Tiling/value", 1, "txt2img_tiling", "value", False),
    ("img2img/Tabs@mode_img2img/selected", "no such tab", "mode_img2img", "selected", None),
])
def test_a_value_that_does_not_fit_is_skipped_with_a_warning(config, capsys, key, value, elem_id, attribute,
                                                             default):
    config.write_text(json.dumps({key: value, "txt2img/Batch size/value": 4}), encoding="utf-8")
    demo = app.create_ui()
    assert getattr(_by_id(demo, elem_id), attribute) == default
    assert _by_id(demo, "txt2img_batch_size").value == 4  # one bad entry does not stop the others
    err = capsys.readouterr().err
    assert f'"{key}"' in err and "ui-config.json" in err and "keeping the default" in err
    assert json.loads(config.read_text(encoding="utf-8"))[key] == value  # the person's entry is left for them


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2, 3]", b"\xff\xfe{}", b" " * (ui_config.MAX_BYTES + 1)],
                         ids=["not-json", "a-list", "not-utf8", "over-5-mb"])
def test_a_corrupt_file_is_moved_aside_and_the_page_has_its_defaults(config, capsys, content):
    config.write_bytes(content)
    demo = app.create_ui()
    assert _by_id(demo, "txt2img_steps").value == 20
    (moved,) = config.parent.glob("ui-config.json.bad-*")
    assert moved.read_bytes() == content
    err = capsys.readouterr().err
    assert str(config) in err and str(moved) in err
    assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Sampling steps/value"] == 20  # a fresh one


def test_the_ui_config_file_flag_points_elsewhere(config, tmp_path, monkeypatch):
    assert "--ui-config-file" in cmd_args.EFFECTIVE_FLAGS
    elsewhere = tmp_path / "mounted" / "my-ui.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text('{"txt2img/Sampling steps/value": 33}', encoding="utf-8")
    ns = cmd_args.parse_args(["--data-dir", str(config.parent), "--ui-config-file", str(elsewhere)], environ={})
    monkeypatch.setattr(shared, "cmd_opts", ns)
    demo = app.create_ui()
    assert _by_id(demo, "txt2img_steps").value == 33
    assert "txt2img/Width/value" in json.loads(elsewhere.read_text(encoding="utf-8"))
    assert not config.exists()


def test_an_extension_tab_is_keyed_by_its_id(config):
    def tabs():
        with gr.Blocks() as blocks:
            gr.Slider(label="Strength", minimum=0, maximum=1, value=0.8, elem_id="myext_strength")
            gr.Textbox(label="Note", value="hello", elem_id="myext_note")
        return [(blocks, "My extension", "myext")]

    config.write_text('{"myext/Strength/value": 0.3}', encoding="utf-8")
    script_callbacks.on_ui_tabs(tabs)
    try:
        demo = app.create_ui()
    finally:
        script_callbacks.remove_callbacks_for_function(tabs)
    assert _by_id(demo, "myext_strength").value == 0.3
    assert json.loads(config.read_text(encoding="utf-8"))["myext/Note/value"] == "hello"
