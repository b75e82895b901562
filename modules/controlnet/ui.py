"""The ControlNet accordion of txt2img and img2img (being built; see scripts/controlnet.py for the arguments)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import shared


def unit_count() -> int:
    try:
        return max(1, min(10, int(shared.opts.data.get("control_net_unit_count", 3))))
    except (TypeError, ValueError):
        return 3


def build(script: Any, is_img2img: bool) -> list[Any]:
    """One gr.State per unit holding its ControlNetUnit (None = empty), the script's arguments."""
    return [gr.State(value=None) for _ in range(unit_count())]
