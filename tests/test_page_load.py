"""The page's refresh on open: one event for every tab's part, and one broken part does not blank the others."""

from __future__ import annotations

import gradio as gr

from modules.ui.page_load import PageLoad


def _load_events(demo: gr.Blocks) -> list:
    return [fn for fn in demo.fns.values() if any(target[1] == "load" for target in fn.targets)]


def test_parts_arrive_in_order_and_a_broken_part_leaves_only_its_own_outputs(caplog):
    with gr.Blocks() as demo:
        a, b, c, d = gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox()
    loads = PageLoad()
    loads.add(lambda: "first", [a])

    def broken():
        raise OSError("styles.csv is unreadable")

    loads.add(broken, [b, c])
    loads.add(lambda: ("x", "y"), [c, d])
    values = loads.values()
    assert values[0] == "first" and values[3:] == ["x", "y"]
    assert all(isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1 for v in values[1:3]), values
    assert "broken" in caplog.text and "styles.csv is unreadable" in caplog.text

    with demo:
        loads.wire(demo)
    (event,) = _load_events(demo)
    assert not event.queue and event.show_progress == "hidden"


def test_the_whole_page_refreshes_in_one_load_event_besides_the_start_up_notices():
    """Each load event costs the browser a walk over every component (about 5.5 s to open the page on a 2-core
    machine with seven of them, 3.7 s with two); the page keeps to one plus the notices, which wait for the first
    model load in the queue."""
    from modules.ui import app

    demo = app.create_ui()
    events = _load_events(demo)
    assert len(events) == 2, [fn.name for fn in events]
    (refresh,) = [fn for fn in events if not fn.queue]
    ids = {getattr(block, "elem_id", None) for block in refresh.outputs}
    # the quicksettings, the Settings tab, the styles and the Extensions tab all refresh in it
    assert {"setting_sd_model_checkpoint", "setting_ESRGAN_tile", "txt2img_styles", "img2img_styles",
            "extensions_installed_html", "extensions_errors", "extensions_disable_all"} <= ids, ids


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_values_the_page_already_has_are_not_sent_again_and_changed_ones_are():
    """Opening the page applies every output the load sends (a re-render each); most settings are as the page's
    config has them, so only what changed since the config was built is sent."""
    with gr.Blocks() as demo:
        steps = gr.Slider(1, 150, value=20)
        name = gr.Textbox(value="tiny")
        flag = gr.Checkbox(value=False)
        choice = gr.Dropdown(choices=["a", "b"], value="a")
    current = {"steps": 20, "name": "tiny", "flag": False}
    loads = PageLoad()
    loads.add(lambda: (current["steps"], current["name"], current["flag"]), [steps, name, flag])
    loads.add(lambda: gr.Dropdown(choices=["a", "b", "c"], value="a"), [choice])  # new choices: always sent
    with demo:
        loads.wire(demo)
    demo.config = None  # no config served (not launched): everything is sent
    assert loads.values()[:3] == [20, "tiny", False]

    demo.config = demo.get_config_file()  # what gradio serves, built at launch
    values = loads.values()
    assert all(_is_skip(v) for v in values[:3]), values
    assert not _is_skip(values[3]) and values[3].choices == [("a", "a"), ("b", "b"), ("c", "c")]

    current.update(steps=30, flag=True)  # applied in another tab since the page was built
    values = loads.values()
    assert values[0] == 30 and _is_skip(values[1]) and values[2] is True

    name.value = "other"
    demo.config = demo.get_config_file()  # a config built again is the one compared with
    assert loads.values()[1] == "tiny"


def test_a_value_equal_in_python_but_of_another_type_is_still_sent():
    with gr.Blocks() as demo:
        box = gr.Number(value=1)
    loads = PageLoad()
    loads.add(lambda: True, [box])
    with demo:
        loads.wire(demo)
    demo.config = demo.get_config_file()
    assert loads.values() == [True]
