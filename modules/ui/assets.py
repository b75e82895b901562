"""The page's CSS and scripts: ours (style.css, javascript/*.js, read from the repository), then, as in A1111,
each enabled extension's `javascript/*.js` / `*.mjs` (sorted) and `style.css`, then the data dir's `user.js` and
`user.css`. Ours are inlined; extensions' and the user's files are linked through A1111's `file=` URLs
(modules/ui/extension_routes.py), so a script can find its own URL and extension CSS can use relative ones."""

from __future__ import annotations

import html
import json
import os

from modules import extensions, paths
from modules.ui import common, extension_routes


def css() -> str:
    path = os.path.join(paths.script_path, "style.css")
    try:
        with open(path, encoding="utf8") as file:
            return file.read()
    except OSError:
        return ""


def head() -> str:
    """<script> tags for javascript/*.js (sorted), preceded by the button hints; then extensions' and the
    user's scripts and styles. javascript/a1111_api.js sorts first: the globals extensions use exist before
    their scripts run."""
    folder = os.path.join(paths.script_path, "javascript")
    # json.dumps escapes "<" only when asked: keep "</script>" in a hint from closing the tag early.
    hints = json.dumps(common.TOOLTIPS).replace("<", "\\u003c")
    parts = [f"<script>window.studioHints = {hints};</script>"]
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".js"):
            with open(os.path.join(folder, name), encoding="utf8") as file:
                parts.append(f"<script>\n{file.read()}\n</script>")
    parts += extension_tags()
    return "\n".join(parts)


def _script(path: str, module: bool = False) -> str | None:
    url = extension_routes.url_for(path)
    kind = ' type="module"' if module else ""
    return f'<script{kind} src="{html.escape(url)}"></script>' if url else None


def _stylesheet(path: str) -> str | None:
    url = extension_routes.url_for(path)
    return f'<link rel="stylesheet" property="stylesheet" href="{html.escape(url)}">' if url else None


def extension_tags() -> list[str]:
    """Tags for enabled extensions' scripts and styles and the user's user.js / user.css, in A1111's order."""
    tags: list[str | None] = []
    for ext in extensions.active():
        tags += [_script(f.path) for f in ext.list_files("javascript", ".js")]
        tags += [_script(f.path, module=True) for f in ext.list_files("javascript", ".mjs")]
    user_js = paths.data_file("user.js")
    if os.path.isfile(user_js):
        tags.append(_script(user_js))
    for ext in extensions.active():
        style = os.path.join(ext.path, "style.css")
        if os.path.isfile(style):
            tags.append(_stylesheet(style))
    user_css = paths.data_file("user.css")
    if os.path.isfile(user_css):
        tags.append(_stylesheet(user_css))
    return [tag for tag in tags if tag]
