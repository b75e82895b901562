"""The results column: progress with live preview, gallery, infotext under it, save and send-to buttons, output
path."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import paths, results_save
from modules.ui import common, tasks

SAVE = "\U0001f4be"  # 💾
SAVE_ZIP = "\U0001f5c3\ufe0f"  # 🗃️


@dataclass
class Results:
    tabname: str
    progress: gr.HTML
    gallery: gr.Gallery
    generation_info: gr.Textbox
    html_info: gr.HTML
    html_log: gr.HTML
    selected_index: gr.State
    save: gr.Button
    save_zip: gr.Button
    download_files: gr.File
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    send_to_extras: gr.Button | None = None

    @property
    def outputs(self) -> list[Any]:
        """What a Generate event writes, in the order `finished()` / `in_progress()` return values."""
        return [self.gallery, self.generation_info, self.html_info, self.html_log, self.progress]


def build(tabname: str) -> Results:
    with gr.Column(elem_id=f"{tabname}_results", elem_classes=["results"]):
        progress = gr.HTML("", elem_id=f"{tabname}_progress", elem_classes=["progress-area"], padding=False)
        gallery = gr.Gallery(label="Output", elem_id=f"{tabname}_gallery", show_label=False, columns=4,
                             format="png", type="filepath", interactive=False, height="auto", object_fit="contain")
        with gr.Row(elem_id=f"image_buttons_{tabname}", elem_classes=["image-buttons"]):
            save = common.tool_button(SAVE, f"save_{tabname}",
                                      "Save the image to a dedicated directory (log/images)")
            save_zip = common.tool_button(SAVE_ZIP, f"save_zip_{tabname}",
                                          "Save zip archive with images to a dedicated directory (log/images)")
            send_img2img = common.tool_button(common.SEND_IMG2IMG, f"{tabname}_send_to_img2img",
                                              "Send the image and its parameters to the img2img tab")
            send_inpaint = common.tool_button(common.SEND_INPAINT, f"{tabname}_send_to_inpaint",
                                              "Send the image and its parameters to the inpaint tab")
            send_extras = None if tabname == "extras" else common.tool_button(
                "\U0001f4d0", f"{tabname}_send_to_extras", "Send the image to the Extras tab")
        generation_info = gr.Textbox(visible=False, elem_id=f"generation_info_{tabname}")
        html_info = gr.HTML("", elem_id=f"html_info_{tabname}", elem_classes=["infotext"])
        html_log = gr.HTML("", elem_id=f"html_log_{tabname}", elem_classes=["html-log"])
        download_files = gr.File(None, file_count="multiple", interactive=False, show_label=False, visible=False,
                                 elem_id=f"download_files_{tabname}")
        selected_index = gr.State(0)

    def select(info_json: str, event: gr.SelectData):
        index = int(event.index or 0)
        return info_html(info_json, index), index

    gallery.select(select, inputs=[generation_info], outputs=[html_info, selected_index], show_progress="hidden")
    for button, make_zip in ((save, False), (save_zip, True)):
        button.click(lambda info_json, items, index, z=make_zip: save_clicked(info_json, items, index, z),
                     inputs=[generation_info, gallery, selected_index], outputs=[download_files, html_log],
                     show_progress="hidden")
    return Results(tabname, progress, gallery, generation_info, html_info, html_log, selected_index, save, save_zip,
                   download_files, send_img2img, send_inpaint, send_extras)


def save_clicked(info_json: str, gallery: Any, index: int | None, make_zip: bool) -> tuple[Any, str]:
    """💾 / 🗃️: copies into log/images; the files offered for download and a line saying where they went."""
    if not gallery:
        return gr.File(value=None, visible=False), common.notice_html("Nothing to save: the gallery is empty.")
    try:
        saved = results_save.save_files(info_json, gallery, index, make_zip)
    except (OSError, ValueError) as e:
        return gr.File(value=None, visible=False), common.error_html(f"Could not save: {e}")
    log = ""
    if saved.refused:
        log += common.error_html(f"Refused (not a picture from this server's outputs): {', '.join(saved.refused)}")
    written = [saved.zip_file] if saved.zip_file else []
    written += saved.files
    if written:
        names = ", ".join(_display_path(p) for p in written)
        log += f"<p class='saved-files'>Saved: <code>{common.escape_multiline(names)}</code></p>"
    # the download comes from gradio's cache: the data dir may lie where gradio serves nothing from
    from gradio import processing_utils, utils

    offered = [processing_utils.save_file_to_cache(p, utils.get_upload_folder()) for p in written]
    return gr.File(value=offered or None, visible=bool(offered)), log


def info_html(info_json: str, index: int = 0) -> str:
    """The infotext of image `index` of a result (as A1111 shows it under the gallery), escaped."""
    try:
        info = json.loads(info_json or "{}")
    except ValueError:
        return ""
    infotexts = info.get("infotexts") or []
    if not infotexts:
        return ""
    text = infotexts[index] if 0 <= index < len(infotexts) else infotexts[0]
    saved = info.get("saved_files") or []
    saved_text = saved[index] if 0 <= index < len(saved) and saved[index] else ""
    where = f"<p class='output-path'>Saved to: <code>{common.escape_multiline(saved_text)}</code></p>" if saved_text \
        else ""
    return f"<div class='infotext-text'><p>{common.escape_multiline(text)}</p></div>{where}"


def _display_path(path: str) -> str:
    # Relative to the data dir where possible: shorter, and it hides nothing a user could not see anyway.
    try:
        rel = os.path.relpath(path, paths.data_path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def finished(processed: Any, started: float) -> tuple[Any, ...]:
    """Outputs for a finished job: images, generation info JSON, infotext, timing, cleared progress."""
    images = list(getattr(processed, "images", []) or [])
    info = json.loads(processed.js())
    info["saved_files"] = [_display_path(p) if (p := getattr(im, "already_saved_as", None)) else "" for im in images]
    info_json = json.dumps(info)
    comment = getattr(processed, "comments", "") or ""
    log = f"<p class='time'>Time taken: {time.perf_counter() - started:.1f} sec.</p>"
    if comment:
        log = common.notice_html(comment) + log
    if not images:
        log = common.notice_html("No images: the job was interrupted before the first image finished.") + log
    return images, info_json, info_html(info_json, 0), log, ""


def starting() -> tuple[Any, ...]:
    return gr.skip(), gr.skip(), gr.skip(), "", tasks.progress_html({"queued": True}, None)


def in_progress(progress_html: str) -> tuple[Any, ...]:
    return gr.skip(), gr.skip(), gr.skip(), gr.skip(), progress_html


def failed(message: str) -> tuple[Any, ...]:
    return gr.skip(), gr.skip(), gr.skip(), common.error_html(message), ""


def image_at(gallery_value: Any, index: int | None) -> str | None:
    """The file of image `index` (the first when out of range) of a gallery's value."""
    items = list(gallery_value or [])
    if not items:
        return None
    item = items[index] if index is not None and 0 <= index < len(items) else items[0]
    return item[0] if isinstance(item, list | tuple) else item


def infotext_at(info_json: str, index: int | None) -> str:
    try:
        info = json.loads(info_json or "{}")
    except ValueError:
        return ""
    texts = info.get("infotexts") or []
    if not texts:
        return ""
    return texts[index] if index is not None and 0 <= index < len(texts) else texts[0]
