"""Image inputs that turn an unreadable upload into a readable message instead of a failed event.

Gradio decodes an uploaded picture before our function runs; a corrupt or non-image file then fails the whole
event with a toast that says only "Error", and the person never learns why. `checked_image` catches that and
passes an `UnreadableUpload` on, which the tab reports in its own message line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class UnreadableUpload:
    """An upload that is not a picture we can read; only the file's own name is kept (never a server path)."""

    name: str
    reason: str

    @property
    def message(self) -> str:
        return f"Could not read the uploaded image '{self.name}': {self.reason}."


def reason(error: Exception) -> str:
    if isinstance(error, Image.DecompressionBombError):
        return "it has more pixels than this server accepts"
    if isinstance(error, UnidentifiedImageError):
        return "it is not a picture in a format this server reads (PNG, JPEG, WebP, ...)"
    if isinstance(error, OSError):
        return "the file is damaged or cut short"
    return "the file could not be decoded"


def checked_image(**kwargs: Any) -> gr.Image:
    """gr.Image whose value is an `UnreadableUpload` (not an exception) when the upload cannot be decoded.

    The check wraps this one component's decoding; a subclass would make gradio write a stub file beside this
    module at import."""
    image = gr.Image(**kwargs)
    decode = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return decode(payload)
        except Exception as e:  # anything the decoder raises on hostile bytes
            name = os.path.basename(getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "image")
            return UnreadableUpload(name, reason(e))

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def readable(value: Any) -> Any:
    """value itself; an unreadable upload raises ValueError with the message a person should see."""
    if isinstance(value, UnreadableUpload):
        raise ValueError(value.message)
    return value
