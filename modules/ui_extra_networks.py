"""A1111's `modules.ui_extra_networks`: the pages of the Extra Networks panel (the card tabs beside "Generation").

Extensions subclass `ExtraNetworksPage` and call `register_page(page)` (A1111 does this in `on_before_ui`). A page
lists its items as A1111-shaped dicts (`name`, `filename`, `description`, `prompt`, `negative_prompt`,
`search_terms`, `sort_keys`, `user_metadata`, ...); `modules/ui/extra_networks_cards.py` turns them into cards.

Differences from A1111, on purpose:
- `prompt` / `negative_prompt` are read as A1111 writes them (`quote_js(...)` pieces joined with ` + `, and
  `opts.<setting>`), but never run as JavaScript: anything else gives a card that inserts nothing.
- Previews are local files beside the item (or the item's `local_preview` / `preview` when that is a file); the
  browser fetches them by page and item name (`/sd_extra_networks/preview`), never by path, and only from inside
  `allowed_directories_for_previews()`.
- `find_preview(path)` returns that local file, not a URL.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from modules.networks import user_metadata

log = logging.getLogger(__name__)

# The sidecar fields a page's edit dialog offers unless the page says otherwise (A1111's generic editor).
DEFAULT_EDITABLE_FIELDS: tuple[str, ...] = ("description", "notes")
TEXT_SUFFIXES = (".description.txt", ".txt")  # A1111's plain-text description beside a network file
MAX_DESCRIPTION_BYTES = 64 * 1024


def quote_js(s: str) -> str:
    """A JavaScript string literal of `s` (A1111's helper; pages build their `prompt` with it)."""
    return json.dumps(str(s), ensure_ascii=False)


class ExtraNetworksPage:
    """One tab of cards. Subclasses override `refresh`, `list_items` and `allowed_directories_for_previews`."""

    def __init__(self, title: str):
        self.title = title
        self.name = title.lower()
        # elem_id part of the tab (`txt2img_lora`) and the page key of the preview route
        self.extra_networks_tabname = self.name.replace(" ", "_")
        self.id_page = self.extra_networks_tabname
        self.allow_prompt = True
        self.allow_negative_prompt = False  # True: a click inserts into whichever prompt box had the focus last
        self.editable_fields: tuple[str, ...] = DEFAULT_EDITABLE_FIELDS
        self.items: dict[str, dict[str, Any]] = {}  # name -> item, as last listed

    # --- what a page provides ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the disk (the panel's refresh button)."""

    def list_items(self) -> Iterable[dict[str, Any]]:
        return []

    def allowed_directories_for_previews(self) -> list[str]:
        return []

    # --- shared behaviour -------------------------------------------------------------------------------------

    def read_items(self) -> list[dict[str, Any]]:
        """List the items and remember them by name (the preview route and the edit dialog look them up)."""
        items: list[dict[str, Any]] = []
        for index, item in enumerate(self.list_items()):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                continue
            item.setdefault("sort_keys", {}).setdefault("default", index)
            items.append(item)
        self.items = {item["name"]: item for item in items}
        return items

    def find_preview(self, path: str) -> str | None:
        """`NAME.preview.png`, `NAME.png`, ... beside `path` (A1111's name; a local file here, not a URL)."""
        return user_metadata.find_preview(path)

    def link_preview(self, filename: str) -> str:
        """A1111 returns a `thumb?filename=` URL; here the file itself, which the card serves by item name."""
        return filename

    def search_terms_from_path(self, filename: str, possible_directories: list[str] | None = None) -> str:
        """The path below the page's folder that holds it, which the search box matches (A1111's name)."""
        absolute = os.path.abspath(filename)
        for parent in possible_directories or self.allowed_directories_for_previews():
            parent = os.path.abspath(parent)
            if absolute.startswith(parent.rstrip(os.sep) + os.sep):
                return absolute[len(parent):].replace(os.sep, "/")
        return filename

    def find_description(self, path: str) -> str | None:
        """`NAME.description.txt` or `NAME.txt` beside `path`, as A1111 reads them (only when small)."""
        stem = os.path.splitext(path)[0]
        for suffix in TEXT_SUFFIXES:
            candidate = stem + suffix
            try:
                if os.path.isfile(candidate) and os.path.getsize(candidate) <= MAX_DESCRIPTION_BYTES:
                    with open(candidate, encoding="utf8", errors="replace") as file:
                        return file.read()
            except OSError:
                continue
        return None

    def get_sort_keys(self, path: str) -> dict[str, Any]:
        """A1111's sort keys of a file: created and modified times, name and path."""
        try:
            st = os.stat(path)
            created, modified = getattr(st, "st_birthtime", st.st_ctime), st.st_mtime
        except OSError:
            created = modified = 0.0
        return {"date_created": created, "date_modified": modified,
                "name": os.path.basename(path).lower(), "path": path.lower()}

    def preview_file(self, name: str) -> str | None:
        """The local preview of the item listed under `name`, or None. The route checks where it lies."""
        item = self.items.get(name)
        if item is None:
            return None
        for key in ("local_preview", "preview"):
            candidate = item.get(key)
            if isinstance(candidate, str) and os.path.isfile(candidate):
                return candidate
        filename = item.get("filename")
        return self.find_preview(filename) if isinstance(filename, str) and filename else None

    def user_metadata_for(self, name: str) -> dict[str, Any]:
        item = self.items.get(name)
        filename = item.get("filename") if item else None
        return user_metadata.read(filename) if isinstance(filename, str) and filename else {}

    def save_user_metadata(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Write the edit dialog's values to the item's sidecar `NAME.json`. Raises ValueError with the reason
        (unknown item, a field this page does not edit, a bad value); nothing is written then."""
        item = self.items.get(name)
        filename = item.get("filename") if item else None
        if not isinstance(filename, str) or not filename:
            raise ValueError(f"{name!r} is not in the list any more; press refresh")
        unknown = sorted(set(values) - set(self.editable_fields))
        if unknown:
            raise ValueError(f"this page does not edit {', '.join(unknown)}")
        return user_metadata.write(filename, values)


extra_pages: list[ExtraNetworksPage] = []


def register_page(page: ExtraNetworksPage) -> None:
    """Add a page (A1111's API). A page with the same tab name replaces the earlier one (scripts reloaded)."""
    extra_pages[:] = [p for p in extra_pages if p.extra_networks_tabname != page.extra_networks_tabname]
    extra_pages.append(page)


def initialize() -> None:
    extra_pages.clear()


def find_page(id_page: str) -> ExtraNetworksPage | None:
    return next((p for p in extra_pages if p.extra_networks_tabname == id_page), None)


def allowed_preview_extensions() -> tuple[str, ...]:
    """A1111's function: picture types a preview may be (never SVG: a browser runs scripts in those)."""
    return user_metadata.PREVIEW_EXTENSIONS
