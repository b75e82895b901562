"""The page's own CSS (style.css) and scripts (javascript/*.js), read from the repository."""

from __future__ import annotations

import json
import os

from modules import paths
from modules.ui import common


def css() -> str:
    path = os.path.join(paths.script_path, "style.css")
    try:
        with open(path, encoding="utf8") as file:
            return file.read()
    except OSError:
        return ""


def head() -> str:
    """<script> tags for javascript/*.js (sorted), preceded by the button hints."""
    folder = os.path.join(paths.script_path, "javascript")
    # json.dumps escapes "<" only when asked: keep "</script>" in a hint from closing the tag early.
    hints = json.dumps(common.TOOLTIPS).replace("<", "\\u003c")
    parts = [f"<script>window.studioHints = {hints};</script>"]
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".js"):
            with open(os.path.join(folder, name), encoding="utf8") as file:
                parts.append(f"<script>\n{file.read()}\n</script>")
    return "\n".join(parts)
