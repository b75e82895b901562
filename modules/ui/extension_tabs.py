"""Tabs that extensions add (A1111's `on_ui_tabs`): each callback returns `[(gr.Blocks, title, elem_id)]`, made
with the Gradio 3 mapping; they go before Settings with elem_id `tab_<id>`. A tab whose code fails is left out
and reported by extension name; the page is built without it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import script_callbacks
from modules.ui import component_hooks


def collect() -> list[Any]:
    """The extensions' tabs, made outside the page's Blocks (a Blocks made inside another renders in place)."""
    with component_hooks.extension_ui():
        return script_callbacks.ui_tabs_callback()


def build(tabs: list[Any]) -> None:
    """Render the collected tabs inside the page's Tabs (call within `gr.Tabs()`)."""
    for entry in tabs:
        try:
            blocks, title, elem_id = entry[0], str(entry[1]), str(entry[2])
        except (TypeError, IndexError):
            script_callbacks.errors.append(f"Error in ui_tabs callback: a tab must be (blocks, title, id), got {entry!r}")
            continue
        with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
            blocks.render()
