"""Settings' "Defaults" sub-tab (A1111's): the values now on the other tabs (txt2img, img2img, ...) as the page's
defaults in ui-config.json. "View changes" lists those that differ from the file; "Apply" writes them
(modules/ui/ui_config.py: only the keys it tracked, checked as the file is read); they apply from the next start."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.ui import common, ui_config


@dataclass
class DefaultsTab:
    view: gr.Button
    apply: gr.Button
    result: gr.HTML


def build() -> DefaultsTab:
    """Inside the settings' gr.Tabs; `wire` gives it its events once ui_config has walked the page."""
    with gr.Tab("Defaults", id="defaults", elem_id="settings_tab_defaults"):
        gr.Markdown("Change values on the other tabs, press **View changes** to see which differ from "
                    f"`{os.path.basename(ui_config.filename())}`, then **Apply** to save them there as the page's "
                    "defaults. They apply after the server restarts.")
        with gr.Row():
            view = gr.Button("View changes", elem_id="ui_defaults_view")
            apply = gr.Button("Apply", variant="primary", elem_id="ui_defaults_apply")
        result = gr.HTML("", elem_id="ui_defaults_review", padding=False)
    return DefaultsTab(view, apply, result)


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _table(changes: list[tuple[str, Any, Any]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(_shown(old))}</td>"
                   f"<td>{html.escape(_shown(new))}</td></tr>" for key, old, new in changes)
    return ("<table class='ui-defaults'><thead><tr><th>Key</th><th>Old value</th><th>New value</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _refused(found: ui_config.Review, what: str) -> str:
    return "".join(common.error_html(f"{line}: {what}") for line in found.refused)


def _unreadable(found: ui_config.Review) -> str:
    if found.readable:
        return ""
    return common.error_html(f"{os.path.basename(ui_config.filename())} could not be read and was moved aside "
                             "(the server's log says where): every value is compared with an empty file.")


def view(tracked: dict[str, Any], values: list[Any]) -> str:
    found = ui_config.review(tracked, values)
    shown = _table(found.changes) if found.changes else common.notice_html("No changes.")
    return _unreadable(found) + shown + _refused(found, "it will not be saved")


def apply(tracked: dict[str, Any], values: list[Any]) -> str:
    try:
        found = ui_config.save(tracked, values)
    except ui_config.Refused as e:
        return common.error_html(str(e))
    n = len(found.changes)
    name = os.path.basename(ui_config.filename())
    saved = (f"Saved {n} default{'s' if n != 1 else ''} to {name}; they apply after the server restarts."
             if n else "No changes to save.")
    return _unreadable(found) + common.notice_html(saved) + _refused(found, "not saved")


def wire(tab: DefaultsTab, tracked: dict[str, Any]) -> None:
    """The page's values of `tracked` (ui_config.apply's) are the events' inputs: the keys are fixed here."""
    tracked = dict(tracked)

    def view_changes(*values: Any) -> str:
        return view(tracked, list(values))

    def apply_defaults(*values: Any) -> str:
        return apply(tracked, list(values))

    inputs = list(tracked.values())
    tab.view.click(view_changes, inputs=inputs, outputs=[tab.result], show_progress="hidden")
    tab.apply.click(apply_defaults, inputs=inputs, outputs=[tab.result], show_progress="hidden")
