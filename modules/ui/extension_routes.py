"""Routes the browser side of extensions uses.

`GET /file=<path>`: A1111's `file=` URLs for the files of enabled extensions (`extensions/<name>/...`,
`extensions-builtin/<name>/...`) and the data dir's `user.css` / `user.js`, nothing else. A path with `..`,
`.`, a hidden part (`.git`), a backslash or an absolute path is refused, so is a file whose real path (after
symlinks) leaves its extension's folder, and a file type that is not a web asset (`.py`, `.ini`, ...).

`GET /internal/opts`: the settings as A1111's page has them (`opts.dumpjson()`), for the JS global `opts`.

Both need the UI login when there is one.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable
from urllib.parse import quote

import fastapi
from starlette.responses import FileResponse, Response

from modules import extensions, paths, shared

# What extensions' pages load: scripts, styles, pictures, fonts, sounds and the data files scripts fetch.
ASSET_SUFFIXES = frozenset({
    ".js", ".mjs", ".css", ".map", ".json", ".txt", ".csv", ".yaml", ".yml", ".md",
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".svg", ".ico", ".bmp",
    ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".wav", ".ogg", ".mp4", ".webm",
})
USER_FILES = ("user.css", "user.js")
ROOTS = {"extensions": False, "extensions-builtin": True}  # URL prefix -> is_builtin

_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".map": "application/json"}


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _within(root: str, target: str) -> bool:
    try:
        return os.path.commonpath([root, target]) == root
    except ValueError:  # different drives on Windows
        return False


def resolve(relative: str) -> str:
    """The file a `file=` path names, or Refused (403: not allowed, 404: no such file)."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/") \
            or os.path.isabs(relative) or ":" in relative.split("/", 1)[0]:
        raise Refused(403, "not a path inside an extension")
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise Refused(403, "'..', '.' and hidden names are not served")
    if len(parts) == 1 and parts[0] in USER_FILES:
        target = paths.data_file(parts[0])
        if os.path.islink(target) or not os.path.isfile(target):
            raise Refused(404, "no such file")
        return target
    if len(parts) < 3 or parts[0] not in ROOTS:
        raise Refused(403, "only files of enabled extensions are served")
    if os.path.splitext(parts[-1])[1].lower() not in ASSET_SUFFIXES:
        raise Refused(403, "this type of file is not served")
    builtin = ROOTS[parts[0]]
    ext = next((e for e in extensions.active() if e.name == parts[1] and e.is_builtin == builtin), None)
    if ext is None:
        raise Refused(404, "no such extension")
    root = os.path.realpath(ext.path)
    target = os.path.realpath(os.path.join(root, *parts[2:]))
    if not _within(root, target) or target == root:
        raise Refused(403, "outside the extension's folder")
    if not os.path.isfile(target):
        raise Refused(404, "no such file")
    return target


def url_for(path: str) -> str | None:
    """The relative `file=` URL of a file of an enabled extension or of the data dir's user files, with its
    modification time appended so browsers fetch it again after it changed (as in A1111); None when none."""
    path = os.path.abspath(path)
    relative = None
    if os.path.dirname(path) == os.path.abspath(paths.data_path) and os.path.basename(path) in USER_FILES:
        relative = os.path.basename(path)
    for ext in extensions.active():
        ext_root = os.path.abspath(ext.path)
        real_root = os.path.realpath(ext_root)
        if _within(ext_root, path) and path != ext_root and _within(real_root, os.path.realpath(path)):
            prefix = "extensions-builtin" if ext.is_builtin else "extensions"
            inner = os.path.relpath(path, ext_root).replace(os.sep, "/")
            relative = f"{prefix}/{ext.name}/{inner}"
            break
    if relative is None:
        return None
    try:
        mtime = int(os.path.getmtime(path))
    except OSError:
        return None
    return f"file={quote(relative)}?{mtime}"


def routes(allowed: Callable[[fastapi.Request], bool]) -> list[fastapi.routing.APIRoute]:
    """The routes, each checking `allowed(request)` (the UI login) first."""

    async def file_route(path: str, request: fastapi.Request) -> Response:
        if not allowed(request):
            raise fastapi.HTTPException(status_code=401, detail="Not authenticated")
        try:
            target = resolve(path)
        except Refused as e:
            raise fastapi.HTTPException(status_code=e.status, detail=str(e)) from None
        suffix = os.path.splitext(target)[1].lower()
        media_type = _TYPES.get(suffix) or mimetypes.guess_type(target)[0] or "application/octet-stream"
        headers = {"Cache-Control": "no-cache"}
        if suffix == ".svg":  # the one served type a browser runs scripts in when opened on its own
            headers["Content-Security-Policy"] = "script-src 'none'"
        return FileResponse(target, media_type=media_type, headers=headers)

    async def opts_route(request: fastapi.Request) -> Response:
        if not allowed(request):
            raise fastapi.HTTPException(status_code=401, detail="Not authenticated")
        return Response(shared.opts.dumpjson(), media_type="application/json", headers={"Cache-Control": "no-store"})

    return [
        # the page's files, not API: left out of the schema (GET and HEAD would share one operation id there)
        fastapi.routing.APIRoute("/file={path:path}", file_route, methods=["GET", "HEAD"], include_in_schema=False),
        fastapi.routing.APIRoute("/internal/opts", opts_route, methods=["GET"]),
    ]
