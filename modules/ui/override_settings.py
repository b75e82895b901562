"""A1111's "Override settings" box of txt2img / img2img: the settings a pasted infotext sets to other values than
the current ones ("Clip skip: 2"). The entries left in it apply to that tab's jobs only (processing's
override_settings, restored after each job); a paste replaces them, the person may remove any."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import gradio as gr

from modules import infotext_utils, request_validation


def build(tab: str) -> gr.Dropdown:
    with gr.Row(elem_id=f"{tab}_override_settings_row"):
        box = gr.Dropdown([], value=[], label="Override settings", multiselect=True, visible=False,
                          elem_id=f"{tab}_override_settings")
    box.do_not_save_to_config = True  # its entries come from each paste: no default to keep in ui-config.json
    # shown only while it has entries: removing the last one hides it, as in A1111
    box.change(lambda entries: gr.Dropdown(visible=bool(entries)), inputs=[box], outputs=[box],
               show_progress="hidden", queue=False)
    return box


def entries(params: dict[str, Any], skip_fields: Iterable[str] = ()) -> list[str]:
    """'Clip skip: 2' for each setting the parsed infotext sets to a value other than the current one; keys the
    tab's paste fields take (`skip_fields`) are theirs, as in A1111."""
    return [f"{key}: {value}" for key, _, value in infotext_utils.get_override_settings(params, skip_fields=skip_fields)]


def update(params: dict[str, Any], skip_fields: Iterable[str] = ()) -> gr.Dropdown:
    """The box after a paste: exactly the pasted entries (none: empty and hidden)."""
    found = entries(params, skip_fields)
    return gr.Dropdown(choices=found, value=found, visible=bool(found), multiselect=True)


def checked(selected: Iterable[str] | None) -> dict[str, Any]:
    """The selected entries as override_settings, each checked as the API checks its override_settings (type,
    range, choices, models that exist). ValueError naming the entry for one that is not a setting or is refused."""
    settings: dict[str, Any] = {}
    for entry in selected or ():
        found = infotext_utils.create_override_settings_dict([entry])
        if not found:
            raise ValueError(f"Override settings: {entry!r} is not a setting here; remove it")
        try:
            settings.update(request_validation.check_override_settings(found))
        except request_validation.RequestError as e:
            raise ValueError(f"Override settings: {entry!r} refused: {e.reason}") from None
    return settings
