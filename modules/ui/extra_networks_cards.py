"""Cards of the Extra Networks panel: page items -> cards, search / folder filter / sort, and the cards' HTML.

Every text on a card comes from file names, sidecars or model metadata, all of which anyone who can drop a file
may write: each is HTML-escaped (A1111 #13241, CVE-2026-111984), descriptions are plain text, and the preview is
fetched by page and item name (modules/ui/extra_networks_routes.py), never by a path.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from modules import shared
from modules.ui_extra_networks import ExtraNetworksPage

ALL_FOLDERS = "All"
SORT_FIELDS = {"Path": "path", "Name": "name", "Date Created": "date_created", "Date Modified": "date_modified"}
ORDERS = ("Ascending", "Descending")
EDIT_SYMBOL = "\U0001f6e0\ufe0f"  # 🛠️, A1111's edit-metadata button
PREVIEW_ROUTE = "sd_extra_networks/preview"  # relative: works under --subpath too


@dataclass
class Card:
    page: str  # the page's tab name ("lora")
    name: str  # the item's key in the page
    filename: str
    folder: str  # "" at the top of a network folder, else "sub/dir" (prefixed by the root's name with several)
    description: str
    prompt: str  # text a click inserts into the prompt
    negative_prompt: str  # text a click inserts into the negative prompt
    allow_negative: bool
    search_text: str  # lower-case text the search box matches
    sort_keys: dict[str, Any]
    preview_url: str | None
    dimmed: bool
    dimmed_reason: str
    editable: bool


_JS_PIECE = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|opts\.([A-Za-z_][A-Za-z0-9_]*))\s*(?:\+|$)')


def js_text(expression: Any) -> str:
    """A1111 items carry `prompt` as JavaScript: `quote_js` literals and `opts.<key>` joined with ` + `. Read that
    form without running anything; "" for anything else (such a card inserts nothing)."""
    if not isinstance(expression, str) or not expression.strip():
        return ""
    pieces: list[str] = []
    position = 0
    while position < len(expression):
        match = _JS_PIECE.match(expression, position)
        if match is None or match.end() == position:
            return ""
        literal, option = match.groups()
        if literal is not None:
            try:
                pieces.append(str(json.loads(literal)))
            except ValueError:
                return ""
        else:
            value = getattr(shared.opts, option, "")
            pieces.append(str(value) if not isinstance(value, float) else f"{value:g}")
        position = match.end()
    return "".join(pieces)


def folder_of(filename: str, roots: list[str]) -> str:
    """The sub-folder of `filename` below the network folder that holds it ("" at its top). With several
    folders (Lora and LyCORIS) the folder's own name comes first, so their sub-folders stay apart."""
    directory = os.path.dirname(os.path.abspath(filename))
    existing = [r for r in roots if os.path.isdir(r)]
    for root in roots:
        root = os.path.abspath(root)
        try:
            if os.path.commonpath([root, directory]) != root:
                continue
        except ValueError:
            continue
        relative = os.path.relpath(directory, root).replace(os.sep, "/")
        relative = "" if relative == "." else relative
        if len(existing) > 1:
            return f"{os.path.basename(root)}/{relative}".rstrip("/")
        return relative
    return ""


def _preview_url(page: ExtraNetworksPage, name: str) -> str | None:
    path = page.preview_file(name)
    if not path:
        return None
    try:
        mtime = int(os.path.getmtime(path))
    except OSError:
        return None
    # the modification time makes the browser fetch the picture again after it changed
    return f"{PREVIEW_ROUTE}?{urlencode({'page': page.extra_networks_tabname, 'item': name, 'mtime': mtime})}"


def card_from_item(page: ExtraNetworksPage, item: dict[str, Any], roots: list[str]) -> Card:
    name = str(item["name"])
    filename = str(item.get("filename") or "")
    terms = [name, str(item.get("description") or "")]
    terms += [str(t) for t in item.get("search_terms") or [] if t]
    folder = folder_of(filename, roots) if filename else ""
    terms.append(folder)
    sort_keys = dict(item.get("sort_keys") or {})
    sort_keys.setdefault("name", name.lower())
    sort_keys.setdefault("path", filename.lower())
    return Card(
        page=page.extra_networks_tabname, name=name, filename=filename, folder=folder,
        description=str(item.get("description") or ""),
        prompt=js_text(item.get("prompt")) if page.allow_prompt else "",
        negative_prompt=js_text(item.get("negative_prompt")),
        allow_negative=bool(page.allow_negative_prompt),
        search_text=" ".join(terms).lower(),
        sort_keys=sort_keys,
        preview_url=_preview_url(page, name),
        dimmed=bool(item.get("dimmed")),
        dimmed_reason=str(item.get("dimmed_reason") or ""),
        editable=bool(filename) and bool(page.editable_fields),
    )


def collect(page: ExtraNetworksPage) -> list[Card]:
    """Every card of the page, from a fresh listing (sidecars and the loaded model read now)."""
    roots = page.allowed_directories_for_previews()
    return [card_from_item(page, item, roots) for item in page.read_items()]


def folder_choices(cards: list[Card]) -> list[str]:
    """"All", then every sub-folder that holds a card (and the folders above it), naturally sorted."""
    folders: set[str] = set()
    for card in cards:
        parts = card.folder.split("/") if card.folder else []
        folders.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return [ALL_FOLDERS] + sorted(folders, key=shared.natural_sort_key)


def filter_cards(cards: list[Card], search: str | None, folder: str | None) -> list[Card]:
    """Cards in `folder` (or below it) whose text holds every word of `search`, case-insensitively."""
    words = (search or "").lower().split()
    chosen = folder if folder and folder != ALL_FOLDERS else None
    return [c for c in cards
            if (chosen is None or c.folder == chosen or c.folder.startswith(chosen + "/"))
            and all(w in c.search_text for w in words)]


def _sort_value(card: Card, field: str) -> Any:
    value = card.sort_keys.get(field)
    if field in ("date_created", "date_modified"):
        return (0, float(value)) if isinstance(value, int | float) else (0, 0.0)
    return (0, shared.natural_sort_key(str(value if value is not None else card.name)))


def sort_cards(cards: list[Card], sort: str | None, order: str | None) -> list[Card]:
    """By Path, Name, Date Created or Date Modified; ties by name, so the order never jumps."""
    field = SORT_FIELDS.get(sort or "", "path")
    by_name = sorted(cards, key=lambda c: shared.natural_sort_key(c.name))
    return sorted(by_name, key=lambda c: _sort_value(c, field), reverse=order == "Descending")


def card_html(card: Card) -> str:
    e = html.escape
    classes = "card dimmed" if card.dimmed else "card"
    title = card.name + (f" ({card.dimmed_reason})" if card.dimmed and card.dimmed_reason else "")
    preview = (f'<img class="preview" src="{e(card.preview_url)}" loading="lazy" alt="">' if card.preview_url
               else '<div class="preview no-preview"></div>')
    edit = (f'<button type="button" class="edit-button card-button" title="Edit metadata">{EDIT_SYMBOL}</button>'
            if card.editable else "")
    return (
        f'<div class="{classes}" data-name="{e(card.name)}" data-item="{e(card.name)}" '
        f'data-prompt="{e(card.prompt)}" data-neg="{e(card.negative_prompt)}" '
        f'data-allow-neg="{"true" if card.allow_negative else "false"}" title="{e(title)}">'
        f'{preview}<div class="button-row">{edit}</div>'
        f'<div class="actions"><span class="name">{e(card.name)}</span>'
        f'<span class="description">{e(card.description)}</span></div></div>'
    )


def cards_html(tabname: str, page_id: str, cards: list[Card], total: int, empty: str = "") -> str:
    """The page's cards in one container the page script (javascript/extra_networks.js) handles clicks in."""
    e = html.escape
    body = "".join(card_html(c) for c in cards)
    if not cards:
        message = empty if total == 0 else "No card matches the search or folder."
        body = f'<div class="nocards">{e(message)}</div>'
    return (f'<div class="extra-network-cards" id="{e(tabname)}_{e(page_id)}_cards" data-tabname="{e(tabname)}" '
            f'data-page="{e(page_id)}" data-total="{total}" data-shown="{len(cards)}">{body}</div>')


def view(tabname: str, page: ExtraNetworksPage, cards: list[Card], search: str | None, folder: str | None,
         sort: str | None, order: str | None) -> str:
    """The HTML for the current search, folder and sort."""
    shown = sort_cards(filter_cards(cards, search, folder), sort, order)
    empty = f"Nothing here yet: put files into {', '.join(_short_dirs(page))} and press refresh."
    return cards_html(tabname, page.extra_networks_tabname, shown, len(cards), empty)


def _short_dirs(page: ExtraNetworksPage) -> list[str]:
    dirs = page.allowed_directories_for_previews()
    return [os.path.basename(d.rstrip(os.sep)) or d for d in dirs] or ["its folder"]
