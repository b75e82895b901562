"""A page's edit dialog (A1111's user-metadata editor): the card's edit button opens it, Save writes the
sidecar `NAME.json` through `modules.networks.user_metadata` (which refuses bad values with the reason, shown in
the dialog), Cancel closes it.

The card's button cannot call the server by itself: javascript/extra_networks.js puts the item's name into the
hidden `{id}_name` box and clicks the hidden `{id}_button`, as A1111 does, with `{id}` =
`{tabname}_{page}_edit_user_metadata`.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.networks import user_metadata
from modules.ui import common
from modules.ui_extra_networks import ExtraNetworksPage

LABELS = {
    "description": "Description",
    "activation text": "Activation text",
    "preferred weight": "Preferred weight",
    "negative text": "Negative prompt",
    "sd version": "Stable Diffusion version",
    "notes": "Notes",
}


@dataclass
class Editor:
    box: gr.Column
    target: gr.Textbox
    open: gr.Button
    title: gr.HTML
    fields: dict[str, Any]  # sidecar key -> its input
    status: gr.HTML
    save: gr.Button
    cancel: gr.Button


def _id(key: str) -> str:
    return key.replace(" ", "_")


def _field(key: str, id_part: str) -> Any:
    elem_id = f"{id_part}_{_id(key)}"
    if key == "preferred weight":
        # a free number box: a value out of range is refused with the reason instead of silently clamped
        return gr.Number(label=LABELS[key], value=0, elem_id=elem_id,
                         info="0 uses the setting's default multiplier")
    if key == "sd version":
        return gr.Radio(label=LABELS[key], choices=list(user_metadata.SD_VERSIONS), value="Unknown",
                        elem_id=elem_id)
    lines = 4 if key in ("description", "notes") else 2
    return gr.Textbox(label=LABELS.get(key, key.capitalize()), lines=lines, max_lines=12, elem_id=elem_id)


def build(tabname: str, page: ExtraNetworksPage) -> Editor:
    id_part = f"{tabname}_{page.extra_networks_tabname}_edit_user_metadata"
    # kept in the page but never shown: the card script fills and clicks them
    target = gr.Textbox(visible="hidden", elem_id=f"{id_part}_name", show_label=False)
    opener = gr.Button("Edit user metadata", visible="hidden", elem_id=f"{id_part}_button")
    with gr.Column(visible=False, elem_id=id_part, elem_classes=["extra-network-edit"], variant="panel") as box:
        title = gr.HTML("", elem_id=f"{id_part}_title", padding=False)
        fields = {key: _field(key, id_part) for key in page.editable_fields}
        status = gr.HTML("", elem_id=f"{id_part}_status", padding=False)
        with gr.Row():
            cancel = gr.Button("Cancel", elem_id=f"{id_part}_cancel")
            save = gr.Button("Save", variant="primary", elem_id=f"{id_part}_save")
    return Editor(box, target, opener, title, fields, status, save, cancel)


def _title_html(page: ExtraNetworksPage, name: str) -> str:
    item = page.items.get(name) or {}
    lines = [f"<h3>{html.escape(name)}</h3>"]
    filename = item.get("filename")
    if isinstance(filename, str) and filename:
        lines.append(f"<div class='extra-network-edit-file'>{html.escape(filename.rsplit('/', 1)[-1])}</div>")
    if item.get("sd_version"):
        lines.append(f"<div>Found in the file: {html.escape(str(item['sd_version']))}</div>")
    return "".join(lines)


def open_values(page: ExtraNetworksPage, name: str) -> list[Any]:
    """The dialog's content for an item: title, each field's stored value, status; then the box shown."""
    defaults: dict[str, Any] = {"preferred weight": 0.0, "sd version": "Unknown"}
    if name not in page.items:
        return ["", *[gr.skip() for _ in page.editable_fields],
                common.error_html(f"{name!r} is not in the list any more; press refresh."), gr.Column(visible=True)]
    stored = page.user_metadata_for(name)
    values = [stored.get(key, defaults.get(key, "")) for key in page.editable_fields]
    return [_title_html(page, name), *values, "", gr.Column(visible=True)]


def save_values(page: ExtraNetworksPage, name: str, values: list[Any]) -> str | None:
    """Write the sidecar; the reason it was refused, or None when it was written."""
    fields = dict(zip(page.editable_fields, values, strict=True))
    if "preferred weight" in fields and fields["preferred weight"] is None:
        fields["preferred weight"] = 0.0  # an emptied number box: back to the default multiplier
    try:
        page.save_user_metadata(name, fields)
    except ValueError as e:
        return f"Not saved: {e}"
    except OSError as e:  # a read-only folder, a full disk
        return f"Not saved: could not write the file ({e.strerror or e})"
    return None


def wire(editor: Editor, page: ExtraNetworksPage, cards: gr.HTML, view_inputs: list[Any],
         render: Callable[..., str]) -> None:
    """Open, Save (then the page's cards show the new values) and Cancel. `render(*view values)` gives the
    page's cards HTML from a fresh listing."""
    field_inputs = list(editor.fields.values())

    def open_dialog(name: str) -> list[Any]:
        return open_values(page, name or "")

    editor.open.click(open_dialog, inputs=[editor.target],
                      outputs=[editor.title, *field_inputs, editor.status, editor.box],
                      show_progress="hidden", queue=False)

    def save(name: str, *values: Any) -> tuple[Any, Any, Any]:
        count = len(field_inputs)
        refused = save_values(page, name or "", list(values[:count]))
        if refused:
            return common.error_html(refused), gr.skip(), gr.skip()
        return "", gr.Column(visible=False), render(*values[count:])

    editor.save.click(save, inputs=[editor.target, *field_inputs, *view_inputs],
                      outputs=[editor.status, editor.box, cards], show_progress="hidden", queue=False)
    editor.cancel.click(lambda: ("", gr.Column(visible=False)), outputs=[editor.status, editor.box],
                        show_progress="hidden", queue=False)
