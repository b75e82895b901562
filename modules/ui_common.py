"""A1111's `modules.ui_common`: the UI helpers extensions call (refresh buttons, text as HTML, saving results).

    create_refresh_button(component(s), refresh_method, refreshed_args, elem_id) -> ToolButton
    plaintext_to_html(text, classname=None) -> "<p>...</p>", escaped
    save_files(js_data, images, do_make_zip, index) -> (gr.update for a File, HTML), A1111's "Save" button
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import types
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gradio as gr
from PIL import Image

from modules import images as images_module
from modules import infotext_utils, paths, shared
from modules.ui.common import REFRESH
from modules.ui_components import ToolButton

refresh_symbol = REFRESH
LOG_FIELDS = ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
              "sd_model_name", "sd_model_hash"]  # A1111's log.csv columns


def plaintext_to_html(text: str, classname: str | None = None) -> str:
    content = "<br>\n".join(html.escape(line) for line in text.split("\n"))
    return f"<p class='{html.escape(classname, quote=True)}'>{content}</p>" if classname else f"<p>{content}</p>"


def create_refresh_button(
    refresh_component: Any,
    refresh_method: Callable[[], Any],
    refreshed_args: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    elem_id: str,
) -> ToolButton:
    """A 🔄 button that calls `refresh_method`, then updates the component(s) with `refreshed_args` (a dict of
    component properties, or a function returning one), e.g. {"choices": names()}."""
    components = refresh_component if isinstance(refresh_component, list) else [refresh_component]
    label = next((c.label for c in components if getattr(c, "label", None)), None)

    def refresh() -> Any:
        refresh_method()
        args = dict(refreshed_args() if callable(refreshed_args) else refreshed_args)
        # Only the page is updated: A1111 also set the values on the server's components (for Gradio 3's config
        # reloads); Gradio 6 normalises properties such as choices in the constructor, so raw values would not fit.
        updates = [gr.update(**args) for _ in components]
        return updates if len(updates) > 1 else updates[0]

    button = ToolButton(value=refresh_symbol, elem_id=elem_id, tooltip=f"{label}: refresh" if label else "Refresh")
    button.click(fn=refresh, inputs=[], outputs=components, show_progress="hidden")
    return button


def _image(item: Any) -> Image.Image:
    """One gallery entry as a PIL image: an image, a file path, a (path, caption) pair, a file dict or a data URL."""
    if isinstance(item, list | tuple):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("image", item)
        item = item.get("path") or item.get("name") if isinstance(item, dict) else item
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, str) and item.startswith("data:image/"):
        return Image.open(io.BytesIO(base64.b64decode(item.split(",", 1)[1])))
    if isinstance(item, str | os.PathLike):
        with Image.open(item) as im:
            return im.copy()  # loaded, and usable after the file closes
    raise ValueError(f"not an image: {type(item).__name__}")


def _opt(name: str, default: Any) -> Any:
    return shared.opts.data.get(name, default)


def _save_folder() -> str:
    folder = str(_opt("outdir_save", "log/images"))
    return folder if os.path.isabs(folder) else os.path.join(paths.data_path, folder)


def save_files(js_data: str, images: Sequence[Any], do_make_zip: bool, index: int) -> tuple[Any, str]:
    """Save the result's images (only image `index` with the "save_selected_only" setting) to the "outdir_save"
    folder with their infotext, add a line to its log.csv, optionally zip them; A1111's return values."""
    data = json.loads(js_data)
    p = types.SimpleNamespace(**data)
    infotexts = list(data.get("infotexts") or [])
    first_image = int(data.get("index_of_first_image", 0))
    items = list(images)
    start = 0
    if index > -1 and _opt("save_selected_only", True) and index >= first_image:
        items, start = [items[index]], index
    path = _save_folder()
    os.makedirs(path, exist_ok=True)

    filenames: list[str] = []
    fullfns: list[str] = []
    parsed: list[dict[str, Any]] = []
    for image_index, item in enumerate(items, start):
        info = infotexts[image_index] if image_index < len(infotexts) else ""
        params = infotext_utils.parse_generation_parameters(info, [])
        parsed.append(params)
        p.batch_index = image_index - 1
        fullfn, txt_fullfn = images_module.save_image(
            _image(item), path, "", seed=params.get("Seed"), prompt=params.get("Prompt"),
            extension=_opt("samples_format", "png"), info=info, grid=image_index < first_image, p=p,
            save_to_dirs=bool(_opt("use_save_to_dirs_for_ui", False)))
        filenames.append(os.path.relpath(fullfn, path))
        fullfns.append(fullfn)
        if txt_fullfn:
            filenames.append(os.path.basename(txt_fullfn))
            fullfns.append(txt_fullfn)
    if not filenames:
        return gr.update(value=None, visible=False), plaintext_to_html("Nothing to save")

    logfile = os.path.join(path, "log.csv")
    with open(logfile, "a", encoding="utf8", newline="") as file:
        writer = csv.writer(file)
        if file.tell() == 0:
            writer.writerow(LOG_FIELDS)
        first = parsed[0]
        writer.writerow([first.get("Prompt", ""), first.get("Seed", ""), data.get("width"), data.get("height"),
                         data.get("sampler_name"), data.get("cfg_scale"), data.get("steps"), filenames[0],
                         first.get("Negative prompt", ""), data.get("sd_model_name"), data.get("sd_model_hash")])

    if do_make_zip:
        zip_path = os.path.join(path, f"{os.path.splitext(os.path.basename(fullfns[0]))[0]}.zip")
        with zipfile.ZipFile(zip_path, "w") as archive:
            for name, full in zip(filenames, fullfns, strict=True):
                archive.write(full, arcname=name)
        fullfns.insert(0, zip_path)

    return gr.update(value=fullfns, visible=True), plaintext_to_html(f"Saved: {filenames[0]}")


__all__ = ["create_refresh_button", "plaintext_to_html", "refresh_symbol", "save_files"]
