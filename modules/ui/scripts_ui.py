"""The scripts of a tab on the page: always-visible scripts' controls, and the "Script" dropdown whose choice
shows that script's controls. Their values follow the tab's own fields into the Generate event."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import scripts
from modules.ui import component_hooks


def build(runner: scripts.ScriptRunner) -> list[Any]:
    """Make the controls; returns the runner's inputs ([the dropdown, *every script's controls])."""
    runner.inputs = [None]
    for script in runner.alwayson_scripts:
        with gr.Group(elem_id=script.elem_id("group")) as group:
            with component_hooks.extension_ui():
                runner.create_script_ui(script)
        script.group = group
    titles = ["None"] + runner.titles
    dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=titles, value="None", type="index")
    runner.inputs[0] = dropdown
    groups = []
    for script in runner.selectable_scripts:
        with gr.Group(visible=False) as group:
            with component_hooks.extension_ui():
                runner.create_script_ui(script)
        script.group = group
        groups.append(group)

    def show(index: int | None) -> list[Any]:
        return [gr.Group(visible=(index or 0) - 1 == i) for i in range(len(groups))]

    def init_field(title: str) -> None:  # A1111's hook: a Script choice from ui-config.json shows its controls
        if title in runner.titles:
            groups[runner.titles.index(title)].visible = True

    dropdown.init_field = init_field  # type: ignore[attr-defined]
    if groups:
        dropdown.change(show, inputs=[dropdown], outputs=groups, show_progress="hidden", queue=False)
    return list(runner.inputs)


def attach(p: Any, runner: scripts.ScriptRunner, values: list[Any]) -> Any:
    """Give the request its scripts and their values from the page (what `scripts.process_request` reads)."""
    p.scripts = runner
    p.script_args = tuple(values)
    return p
