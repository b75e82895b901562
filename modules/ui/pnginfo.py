"""PNG Info: drop an image, read its generation parameters, send them to txt2img / img2img / inpaint."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass

import gradio as gr
from PIL import Image, UnidentifiedImageError

from modules import images
from modules.ui import common, uploads


@dataclass
class PngInfoTab:
    image: gr.Image
    html: gr.HTML
    infotext: gr.Textbox
    send_to_txt2img: gr.Button
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    send_to_extras: gr.Button | None = None


def build() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            # type="filepath": the file as uploaded, so metadata chunks survive (a re-encode would drop them).
            image = uploads.checked_image(label="Source", elem_id="pnginfo_image", type="filepath", image_mode=None,
                             sources=["upload", "clipboard"], height=480)
        with gr.Column():
            info_html = gr.HTML(elem_id="pnginfo_html_info", elem_classes=["infotext"])
            infotext = gr.Textbox(visible=False, elem_id="pnginfo_generation_info")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
                to_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_to_inpaint")
                to_extras = gr.Button("Send to extras", elem_id="pnginfo_send_to_extras")
    image.change(read, inputs=[image], outputs=[info_html, infotext], show_progress="hidden")
    return PngInfoTab(image, info_html, infotext, to_txt2img, to_img2img, to_inpaint, to_extras)


def read(path: str | uploads.UnreadableUpload | None) -> tuple[str, str]:
    """(HTML for the page, the infotext) of an image file; a readable note when it has none."""
    if not path:
        return "", ""
    if isinstance(path, uploads.UnreadableUpload):
        return common.error_html(path.message), ""
    try:
        with Image.open(path) as im:
            geninfo, items = images.read_info_from_image(im)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        name = os.path.basename(path)
        return common.error_html(uploads.UnreadableUpload(name, uploads.reason(e)).message), ""
    parts = []
    if geninfo:
        parts.append(f"<div class='infotext-text'><p><b>parameters</b></p><p>{common.escape_multiline(geninfo)}</p></div>")
    for key, value in items.items():
        if isinstance(value, bytes | bytearray):
            continue  # binary chunks (ICC profiles...) are not text to show
        parts.append(f"<div><p><b>{html.escape(str(key))}</b></p><p>{common.escape_multiline(str(value))}</p></div>")
    if not parts:
        return common.notice_html("No generation parameters found in this image."), ""
    return "".join(parts), geninfo or ""
