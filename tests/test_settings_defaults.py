"""Settings > Defaults (A1111's): "View changes" lists the tracked components whose page value differs from
ui-config.json, "Apply" writes those (and only tracked keys) into it, checked as the file is read, keeping the
file's other keys; --freeze-settings refuses, and a bad file is handled as at start."""

from __future__ import annotations

import html
import json
import os

import gradio as gr
import pytest

from modules import cmd_args, shared
from modules.ui import app, settings_defaults, ui_config

FILE = {
    "txt2img/Steps/value": 20,
    "txt2img/Steps/minimum": 1,
    "txt2img/Tiling/value": False,
    "txt2img/Sampler/value": "Euler",
    "txt2img/Mode/value": "Crop",
    "txt2img/Note/value": 42,  # a number for a textbox: shown as "42"
    "someone/else's/key": "kept",  # no component has it
}


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps(FILE), encoding="utf-8")
    monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse_args(["--ui-config-file", str(path)], environ={}))
    return path


@pytest.fixture
def tracked(config):
    """A small page walked by ui_config.apply, as the real one is."""
    with gr.Blocks(), gr.Tabs() as tabs, gr.Tab("txt2img", id="txt2img"):
        gr.Slider(label="Steps", minimum=1, maximum=150, step=1, value=20)
        gr.Checkbox(label="Tiling", value=False)
        gr.Dropdown(label="Sampler", choices=["Euler", "DPM++ 2M"], value="Euler")
        gr.Radio(label="Mode", choices=["Crop", "Fill"], value="Crop", type="index")
        gr.Textbox(label="Note", value="")
        gr.Textbox(label="Prompt", value="")  # the file lacks its key: added by apply as ""
        gr.Button("Go")  # a button has no value key
    return ui_config.apply(tabs)


def _values(tracked, **changed):
    """The page's values: the components' own, with `changed` (by label) as the page would send them."""
    return [changed.get(x.label, x.value) for x in tracked.values()]


def test_apply_tracks_each_value_key_once(tracked):
    assert list(tracked) == ["txt2img/Steps/value", "txt2img/Tiling/value", "txt2img/Sampler/value",
                             "txt2img/Mode/value", "txt2img/Note/value", "txt2img/Prompt/value"]
    assert tracked["txt2img/Note/value"].value == "42"  # applied as before


def test_view_lists_only_the_changed_keys(config, tracked):
    assert "No changes" in settings_defaults.view(tracked, _values(tracked, Mode=0))  # index 0: "Crop"
    shown = settings_defaults.view(tracked, _values(tracked, Steps=33, Mode=1, Note="42"))
    assert "<td>txt2img/Steps/value</td><td>20</td><td>33</td>" in shown
    assert "<td>txt2img/Mode/value</td><td>Crop</td><td>Fill</td>" in shown  # the choice, not the index
    assert "Note" not in shown and "Tiling" not in shown and "Sampler" not in shown
    assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Steps/value"] == 20  # viewing writes nothing


def test_apply_writes_the_changes_and_keeps_the_other_keys(config, tracked):
    shown = settings_defaults.apply(tracked, _values(tracked, Steps=33, Tiling=True, Prompt="a cat"))
    assert "Saved 3 defaults to ui-config.json" in shown and "restarts" in shown
    saved = json.loads(config.read_text(encoding="utf-8"))
    assert saved["txt2img/Steps/value"] == 33 and saved["txt2img/Tiling/value"] is True
    assert saved["txt2img/Prompt/value"] == "a cat"
    assert saved["someone/else's/key"] == "kept" and saved["txt2img/Steps/minimum"] == 1
    assert saved["txt2img/Sampler/value"] == "Euler"
    assert not [p for p in os.listdir(config.parent) if p.endswith(".tmp")]  # written through a temp file
    assert "No changes to save" in settings_defaults.apply(tracked, _values(tracked, Steps=33, Tiling=True,
                                                                             Prompt="a cat"))


def test_values_that_do_not_fit_are_refused_by_name(config, tracked):
    text = html.unescape(settings_defaults.apply(tracked, _values(tracked, Steps=500, Tiling="yes",
                                                                  Sampler="No such sampler", Note="fits")))
    assert '"txt2img/Steps/value": 500 is outside 1..150: not saved' in text
    assert "\"txt2img/Tiling/value\": 'yes' is not true or false: not saved" in text
    assert "\"txt2img/Sampler/value\": 'No such sampler' is not one of the choices" in text
    assert "Saved 1 default to" in text  # the one that fits
    saved = json.loads(config.read_text(encoding="utf-8"))
    assert saved["txt2img/Note/value"] == "fits"
    assert saved["txt2img/Steps/value"] == 20 and saved["txt2img/Tiling/value"] is False
    assert "it will not be saved" in settings_defaults.view(tracked, _values(tracked, Steps=500))


def test_only_tracked_keys_can_be_written(config, tracked):
    before = config.read_bytes()
    with pytest.raises(ValueError):  # a value without a component: no key to write it under
        ui_config.save(tracked, [*_values(tracked, Steps=33), "smuggled"])
    assert config.read_bytes() == before
    keys = set(json.loads(before))  # every key of the page (the build added the missing ones) and the file's own
    settings_defaults.apply(tracked, _values(tracked, Steps=33))
    assert set(json.loads(config.read_text(encoding="utf-8"))) == keys


def test_frozen_settings_refuse(config, tracked, monkeypatch):
    before = config.read_bytes()
    monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse_args(["--ui-config-file", str(config),
                                                                 "--freeze-settings"], environ={}))
    shown = settings_defaults.apply(tracked, _values(tracked, Steps=33))
    assert "frozen" in shown and "Saved" not in shown
    assert config.read_bytes() == before
    assert "<td>33</td>" in settings_defaults.view(tracked, _values(tracked, Steps=33))  # viewing still works


def test_a_bad_file_is_moved_aside_or_left_alone(config, tracked, monkeypatch):
    config.write_bytes(b"{not json")
    shown = settings_defaults.apply(tracked, _values(tracked, Steps=33))
    assert "moved aside" in shown and "Saved" in shown
    (moved,) = config.parent.glob("ui-config.json.bad-*")
    assert moved.read_bytes() == b"{not json"
    assert json.loads(config.read_text(encoding="utf-8"))["txt2img/Steps/value"] == 33

    config.write_bytes(b"{not json")

    def cannot_move(*args):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(os, "replace", cannot_move)
    shown = settings_defaults.apply(tracked, _values(tracked, Steps=34))
    assert "could not be moved aside: nothing was saved" in shown
    assert config.read_bytes() == b"{not json"  # its owner's to fix


def test_the_real_page_wires_its_tracked_components(tmp_path, monkeypatch, isolated_data_dir):
    with isolated_data_dir(tmp_path / "data"):
        demo = app.create_ui()
        (view,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "ui_defaults_view"]
        (fn,) = [f for f in demo.fns.values() if (view._id, "click") in [tuple(t) for t in f.targets]]
        ids = [getattr(x, "elem_id", None) for x in fn.inputs]
        assert "txt2img_steps" in ids and "img2img_denoising_strength" in ids
        assert not [i for i in ids if i and i.startswith("setting_")]  # settings are not page defaults
        values = [x.value for x in fn.inputs]
        assert "No changes" in fn.fn(*values)
        values[ids.index("txt2img_steps")] = 33
        assert "<td>txt2img/Sampling steps/value</td><td>20</td><td>33</td>" in fn.fn(*values)
