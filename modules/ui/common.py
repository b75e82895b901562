"""Small helpers every tab uses: tool buttons, readable error boxes, safe HTML."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

# A1111's button symbols, so people recognise the buttons.
RANDOM_SEED = "\U0001f3b2\ufe0f"  # 🎲
REUSE_SEED = "\u267b\ufe0f"  # ♻️
SWITCH_SIZE = "\u21c5"  # ⇅
REFRESH = "\U0001f504"  # 🔄
SAVE_STYLE = "\U0001f4be"  # 💾
SEND_IMG2IMG = "\U0001f5bc\ufe0f"  # 🖼️
SEND_INPAINT = "\U0001f3a8\ufe0f"  # 🎨
DETECT_SIZE = "\U0001f4d0"  # 📐
PASTE = "\u2199\ufe0f"  # ↙️
CLEAR_PROMPT = "\U0001f5d1\ufe0f"  # 🗑️
APPLY_STYLES = "\U0001f4cb"  # 📋
EDIT_STYLES = "\U0001f58c\ufe0f"  # 🖌️


# elem_id -> hover text; javascript/ui.js puts them into `title` attributes (gradio buttons have no tooltip).
TOOLTIPS: dict[str, str] = {}


def tool_button(value: str, elem_id: str, tooltip: str, elem_classes: list[str] | None = None,
                **kwargs: Any) -> gr.Button:
    """A square icon button (A1111's ToolButton); `elem_classes` are added to its `tool` class."""
    TOOLTIPS[elem_id] = tooltip
    return gr.Button(value=value, elem_id=elem_id, elem_classes=["tool", *(elem_classes or [])], size="sm",
                     min_width=40, scale=0, **kwargs)


def error_html(message: str) -> str:
    """A readable error box; the message is escaped so text from files or prompts cannot inject markup."""
    return f"<div class='error'>{html.escape(message)}</div>"


def notice_html(message: str) -> str:
    return f"<div class='notice'>{html.escape(message)}</div>"


def escape_multiline(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")
