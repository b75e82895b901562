"""`GET /sd_extra_networks/preview?page=lora&item=NAME`: a card's preview picture.

The URL names a page and an item, never a path: the file is the one the page found beside that item, and it is
served only when its real path (after symlinks) lies inside one of the page's folders and it is a picture type
(no SVG). A1111's `/sd_extra_networks/thumb?filename=` took a path and checked it lexically, so
`models/Lora/../../x.png` passed; there is no such route here. The route needs the UI login when there is one.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable

import fastapi
from starlette.responses import FileResponse, Response

from modules import ui_extra_networks


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _inside(root: str, target: str) -> bool:
    try:
        return os.path.commonpath([root, target]) == root and target != root
    except ValueError:  # another drive on Windows
        return False


def preview_file(page_id: str, item: str) -> str:
    """The real path of the preview of `item` on page `page_id`, or Refused (404 unknown, 403 not allowed)."""
    page = ui_extra_networks.find_page(page_id or "")
    if page is None:
        raise Refused(404, "no such page")
    path = page.preview_file(item or "")
    if not path:
        raise Refused(404, "no preview for this item")
    target = os.path.realpath(path)
    if os.path.splitext(target)[1].lower().lstrip(".") not in ui_extra_networks.allowed_preview_extensions():
        raise Refused(403, "not a picture")
    roots = [os.path.realpath(d) for d in page.allowed_directories_for_previews()]
    if not any(_inside(root, target) for root in roots):
        raise Refused(403, "outside the page's folders")
    if not os.path.isfile(target):
        raise Refused(404, "no such file")
    return target


def routes(allowed: Callable[[fastapi.Request], bool]) -> list[fastapi.routing.APIRoute]:
    """The route, checking `allowed(request)` (the UI login) first."""

    def preview_route(request: fastapi.Request, page: str = "", item: str = "") -> Response:
        if not allowed(request):
            raise fastapi.HTTPException(status_code=401, detail="Not authenticated")
        try:
            target = preview_file(page, item)
        except Refused as e:
            raise fastapi.HTTPException(status_code=e.status, detail=str(e)) from None
        media_type = mimetypes.guess_type(target)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media_type, headers={"Cache-Control": "no-cache"})

    # the page's own route, not API: left out of the schema (GET and HEAD would share one operation id there)
    return [fastapi.routing.APIRoute("/sd_extra_networks/preview", preview_route, methods=["GET", "HEAD"],
                                     include_in_schema=False)]
