"""Gradio 3.41 calls from extension code build under Gradio 6 inside `gradio3_compat()`, with one warning."""

from __future__ import annotations

import logging
import uuid

import gradio as gr
import pytest

from modules.gradio_compat import gradio3_compat


def owner() -> str:
    return f"ext-{uuid.uuid4().hex[:8]}"  # warnings are once per owner: each test its own


def compat_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "modules.gradio_compat"]


def build_gradio3_ui() -> dict:
    """What A1111-era extension UIs do (Gradio 3.41 style)."""
    made = {}
    made["sketch"] = gr.Image(source="upload", tool="sketch", type="pil", label="Sketch", brush_radius=8)
    made["button"] = gr.Button("Go").style(full_width=True)
    made["update"] = gr.update(visible=False)
    made["dropdown"] = gr.Dropdown(choices=["a", "b"], value="a", label="Pick").style(container=False)
    made["textbox"] = gr.Textbox(lines=2, label="Notes").style(container=False)
    return made


def test_gradio3_calls_build_and_warn_once(caplog):
    name = owner()
    caplog.set_level(logging.WARNING, logger="modules.gradio_compat")
    with gr.Blocks() as demo:
        with gradio3_compat(name):
            made = build_gradio3_ui()
            build_gradio3_ui()  # the same calls again: no more warnings
    demo.get_config_file()  # the page config builds
    assert made["sketch"].sources == ["upload"] and made["sketch"].type == "pil"
    assert made["button"].scale == 1
    assert made["update"] == {"__type__": "update", "visible": False}
    assert made["dropdown"].container is False and made["textbox"].container is False
    assert made["textbox"].lines == 2

    messages = compat_warnings(caplog)
    assert len(messages) == 1 and messages[0].startswith(f"{name} uses Gradio 3 arguments")
    for what in ("gr.Image(source=...)", "gr.Image(tool=...)", "gr.Image(brush_radius=...)",
                 ".style(full_width=...)", ".style(container=...)"):
        assert messages[0].count(what) == 1, what

    with gr.Blocks(), gradio3_compat(name):
        build_gradio3_ui()
    assert len(compat_warnings(caplog)) == 1  # this owner was told already


def test_outside_the_block_gradio_6_is_untouched():
    with gr.Blocks(), gradio3_compat(owner()):
        pass
    with pytest.raises(TypeError):
        gr.Image(source="upload")
    assert not hasattr(gr.Button, "style") and not hasattr(gr, "Box")


def test_patches_are_undone_after_an_error_and_blocks_nest():
    with pytest.raises(RuntimeError), gr.Blocks():
        with gradio3_compat(owner()):
            with gradio3_compat(owner()):
                gr.Textbox(show_copy_button=True)
            gr.Textbox(show_copy_button=True)  # still adapted: the outer block is open
            raise RuntimeError("extension ui() failed")
    assert not hasattr(gr.Button, "style")
    with pytest.raises(TypeError):
        gr.Textbox(show_copy_button=True)


def test_event_and_layout_arguments(caplog):
    name = owner()
    caplog.set_level(logging.WARNING, logger="modules.gradio_compat")
    with gr.Blocks() as demo:
        with gradio3_compat(name):
            text = gr.Textbox(show_copy_button=True)
            with gr.Box():
                files = gr.File(type="file")
            with gr.Row().style(equal_height=True) as row:
                gallery = gr.Gallery().style(grid=[2, 4], height="auto", rounded=False)
            button = gr.Button()
            button.click(fn=lambda: "x", inputs=[], outputs=[text], _js="(x) => x", show_progress=False
                         ).then(fn=None, _js="() => 1", every=1.0)
    assert text.buttons == ["copy"] and files.type == "filepath"
    assert row.equal_height is True and gallery.columns == 4 and gallery.height == "auto"
    deps = demo.get_config_file()["dependencies"]
    assert [d["js"] for d in deps] == ["(x) => x", "() => 1"] and deps[0]["show_progress"] == "hidden"
    message = compat_warnings(caplog)[0]
    for what in ("gr.Box", "gr.File(type='file')", ".click(_js=...)", ".then(every=...)", ".style(rounded=...)"):
        assert what in message


def test_component_update_classmethods_work_when_handlers_run():
    with gr.Blocks(), gradio3_compat(owner()):
        pass
    # Event handlers run after the UI is built, outside the block.
    assert gr.Dropdown.update(choices=["a"], value="a") == {"__type__": "update", "choices": ["a"], "value": "a"}
    assert gr.Textbox.update(visible=False) == gr.update(visible=False)


def test_ui_components_take_gradio3_arguments_inside():
    from modules import ui_components

    with gr.Blocks() as demo, gradio3_compat(owner()):
        button = ui_components.ToolButton(value="x", elem_id="compat_tool", tooltip="hint").style(size="sm")
        ui_components.FormRow().style(equal_height=True)
    assert button.size == "sm" and demo.get_config_file()
