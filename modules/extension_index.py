"""The extension index behind the Extensions tab's "Available" sub-tab (A1111's): fetched only when the person
presses "Load from:", then filtered, ordered and shown as a table with an Install button per row.

The index is hostile. It is fetched through download_guard (https only; plain http, and this machine or the local
network, only with --allow-private-downloads; the connection pinned to the checked address), with a timeout per
read, a size cap and an overall deadline. It is parsed defensively: an entry without a usable name and git URL is
skipped and counted, other fields of a wrong type are dropped. Every text is HTML-escaped when shown, and a link
is only ever an http(s) URL that install_from_url would clone into a plain folder name.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modules import download_guard, extension_manager, extensions, shared
from modules.download_guard import DownloadRefused, Policy

DEFAULT_URL = "https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/master/index.json"
ENV_VAR = "WEBUI_EXTENSIONS_INDEX"
MAX_BYTES = 5 * 1024 * 1024  # A1111's index is about 1 MB
TIMEOUT_S = 20.0  # connect and each read
DEADLINE_S = 60.0  # the whole body: a server that trickles bytes fails, not hangs
MAX_TAGS = 200  # choices in "Hide extensions with tags": a hostile index must not flood the page
TEXT_LIMITS = {"name": 200, "description": 2000, "tag": 40, "tag description": 300}

# A1111's choices, in its order ("newest first" / "oldest first" are by the date added)
ORDERS = ("newest first", "oldest first", "a-z", "z-a", "internal order", "update time", "create time", "stars")
INSTALLED_TAG = "installed"
DEFAULT_HIDDEN = ("ads", "localization", INSTALLED_TAG)
INITIAL_TAGS = ("script", "ads", "localization", INSTALLED_TAG)  # the choices before an index is loaded

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class IndexFailure(ValueError):
    """The index could not be read; the message is one line for the person."""


def index_url() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_URL


def policy_from_cmd_opts() -> Policy:
    allow = bool(getattr(shared.cmd_opts, "allow_private_downloads", False))
    return Policy(allow_private=allow, max_bytes=MAX_BYTES, timeout_s=TIMEOUT_S)


# --- fetching ------------------------------------------------------------------------------------------------------

def _read(resp: Any, limit: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise DownloadRefused(f"the index did not arrive within {DEADLINE_S:g} s")
        try:
            chunk = resp.read(64 * 1024)
        except TimeoutError:
            raise DownloadRefused("the server stopped sending the index") from None
        except (OSError, http.client.HTTPException) as e:  # a reset connection, a body cut short
            raise DownloadRefused(f"the index arrived incomplete: {e}") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise DownloadRefused(f"the index is larger than {limit // (1024 * 1024)} MB; not read")
        chunks.append(chunk)


def fetch(url: str, policy: Policy | None = None) -> bytes:
    """The index's bytes; every hop (redirects too) checked by download_guard. Raises DownloadRefused."""
    policy = policy or policy_from_cmd_opts()
    deadline = time.monotonic() + DEADLINE_S
    for _hop in range(policy.max_redirects + 1):
        target = download_guard.check_url(url, policy)
        conn, resp = download_guard.request(target, policy, {"Accept": "application/json"})
        try:
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise DownloadRefused(f"{target.host} redirected without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            if resp.status != 200:
                raise DownloadRefused(f"the server answered {resp.status} {resp.reason}".strip())
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > policy.max_bytes:
                raise DownloadRefused(f"the index is larger than {policy.max_bytes // (1024 * 1024)} MB; not read")
            return _read(resp, policy.max_bytes, deadline)
        finally:
            conn.close()
    raise DownloadRefused(f"more than {policy.max_redirects} redirects")


# --- parsing -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    description: str = ""
    tags: tuple[str, ...] = ()
    added: str = ""  # YYYY-MM-DD, as the index writes it
    created: str = ""  # YYYY-MM-DD of created_at
    updated: str = ""  # YYYY-MM-DD of commit_time (A1111's "update time")
    stars: int = 0


@dataclass
class Index:
    url: str = ""
    tags: dict[str, str] = field(default_factory=dict)  # tag -> description
    entries: list[Entry] = field(default_factory=list)  # in the index's own order
    skipped: int = 0  # malformed entries
    installed_names: frozenset[str] = frozenset()  # folder names under extensions/
    installed_urls: frozenset[str] = frozenset()  # their remotes, normalized

    def is_installed(self, entry: Entry) -> bool:
        """A1111's rule: the folder name the URL would get exists, or an extension has this remote."""
        return (extension_manager.dirname_from_url(entry.url) in self.installed_names
                or extension_manager.normalize_git_url(entry.url) in self.installed_urls)

    def tags_of(self, entry: Entry) -> tuple[str, ...]:
        return (*entry.tags, INSTALLED_TAG) if self.is_installed(entry) else entry.tags

    def tag_choices(self, keep: Iterable[str] = ()) -> list[str]:
        """The index's tags, then tags only entries use, then "installed" and `keep` (the boxes ticked now)."""
        found = dict.fromkeys(self.tags)
        for entry in self.entries:
            found.update(dict.fromkeys(entry.tags))
        choices = list(found)[:MAX_TAGS]
        return choices + [t for t in dict.fromkeys([INSTALLED_TAG, *keep]) if t not in choices]


def _text(value: Any, limit: int) -> str | None:
    """A one-line string of at most `limit` characters, or None when `value` is not a string."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())  # newlines and control whitespace: one line
    text = "".join(c for c in text if c.isprintable())
    return text[:limit]


def _tag(value: Any) -> str | None:
    text = _text(value, TEXT_LIMITS["tag"])
    return text or None


def _date(value: Any) -> str:
    """YYYY-MM-DD from "2023-01-31" or "2023-01-31T12:00:00Z"; "" for anything else."""
    return value[:10] if isinstance(value, str) and _DATE.match(value) else ""


def link_refusal(url: Any, allow_http: bool = False) -> str | None:
    """Why `url` is not a link the table may show and install (None when it is): an http(s) URL (http only with
    `allow_http`) with a host, no user name or password, no spaces, whose last part is a plain folder name."""
    if not isinstance(url, str) or not url or len(url) > 500:
        return "no URL"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "spaces or control characters in the URL"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in (("https", "http") if allow_http else ("https",)):
        return "not an https URL"
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return "no host, or a user name in the URL"
    return extension_manager.dirname_refusal(extension_manager.dirname_from_url(url))


def _entry(item: Any, allow_http: bool) -> Entry | None:
    if not isinstance(item, dict):
        return None
    name = _text(item.get("name"), TEXT_LIMITS["name"])
    url = item.get("url")
    if not name or link_refusal(url, allow_http):
        return None
    raw_tags = item.get("tags")
    tags = tuple(dict.fromkeys(t for t in map(_tag, raw_tags if isinstance(raw_tags, list) else []) if t))
    stars = item.get("stars")
    return Entry(
        name=name, url=url, description=_text(item.get("description"), TEXT_LIMITS["description"]) or "",
        tags=tags[:20], added=_date(item.get("added")), created=_date(item.get("created_at")),
        updated=_date(item.get("commit_time")),
        stars=max(stars, 0) if isinstance(stars, int) and not isinstance(stars, bool) else 0,
    )


def parse(data: bytes | str, url: str = "", allow_http: bool = False) -> Index:
    """The index from its JSON text: `{"tags": {tag: description}, "extensions": [{name, url, ...}]}`. Raises
    IndexFailure when it is not that shape at all; a malformed entry is skipped and counted."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deep enough to exhaust the parser
        raise IndexFailure(f"the index is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("extensions"), list):
        raise IndexFailure('the index has no list of extensions (expected {"extensions": [...]})')
    index = Index(url=url)
    raw_tags = document.get("tags")
    for key, description in (raw_tags.items() if isinstance(raw_tags, dict) else []):
        tag = _tag(key)
        if tag and len(index.tags) < MAX_TAGS:
            index.tags[tag] = _text(description, TEXT_LIMITS["tag description"]) or ""
    for item in document["extensions"]:
        entry = _entry(item, allow_http)
        if entry is None:
            index.skipped += 1
        else:
            index.entries.append(entry)
    return index


def with_installed(index: Index) -> Index:
    """The index marked with what is installed now (names and remotes under extensions/)."""
    found = [ext for ext in extensions.scan() if not ext.is_builtin]
    index.installed_names = frozenset(ext.name for ext in found)
    index.installed_urls = frozenset(extension_manager.normalize_git_url(ext.remote) for ext in found if ext.remote)
    return index


def load(url: str) -> Index:
    """Fetch and parse the index at `url` (refused where managing extensions is). Raises IndexFailure."""
    try:
        extension_manager.check_access()  # a server others reach must not fetch URLs for them
    except extension_manager.ExtensionError as e:
        raise IndexFailure(str(e)) from None
    url = (url or "").strip()
    if not url:
        raise IndexFailure("No index URL given")
    policy = policy_from_cmd_opts()
    try:
        data = fetch(url, policy)
    except DownloadRefused as e:
        raise IndexFailure(f"Could not load the index: {e}") from None
    return with_installed(parse(data, url, allow_http=policy.allow_private))


def summary(index: Index) -> str:
    skipped = f"; {index.skipped} malformed entr{'y' if index.skipped == 1 else 'ies'} skipped" if index.skipped else ""
    return f"Loaded {len(index.entries)} extensions from {index.url}{skipped}."


# --- showing -------------------------------------------------------------------------------------------------------

def _ordered(entries: list[Entry], order: str) -> list[Entry]:
    """Sorted as A1111 does; entries without the value sorted on (no date) come last, in index order."""
    keys: dict[str, tuple[Any, bool]] = {
        "newest first": (lambda e: e.added, True), "oldest first": (lambda e: e.added, False),
        "a-z": (lambda e: e.name.lower(), False), "z-a": (lambda e: e.name.lower(), True),
        "update time": (lambda e: e.updated, True), "create time": (lambda e: e.created, True),
        "stars": (lambda e: e.stars, True),
    }
    if order == "internal order":
        return list(entries)
    key, reverse = keys.get(order, keys["newest first"])
    having = [e for e in entries if key(e) != ""]
    return sorted(having, key=key, reverse=reverse) + [e for e in entries if key(e) == ""]


def visible(index: Index, hide_tags: Iterable[str], order: str, search: str) -> tuple[list[Entry], int]:
    """(the entries to show, in order; how many the tags and the search hid)."""
    hidden_tags = set(hide_tags or [])
    needle = (search or "").strip().lower()
    shown = [e for e in index.entries
             if not hidden_tags.intersection(index.tags_of(e))
             and (not needle or needle in e.name.lower() or needle in e.description.lower())]
    return _ordered(shown, order), len(index.entries) - len(shown)


def table_html(index: Index | None, hide_tags: Iterable[str], order: str, search: str) -> str:
    if index is None:
        return ""
    shown, hidden = visible(index, hide_tags, order, search)
    rows = []
    for entry in shown:
        url = html.escape(entry.url)
        tags = ", ".join(f"<span class='extension-tag' title='{html.escape(index.tags.get(t, t))}'>{html.escape(t)}"
                         "</span>" for t in index.tags_of(entry))
        if index.is_installed(entry):
            action = "<span class='extension-installed'>Installed</span>"
        else:
            action = (f"<button type='button' class='lg secondary gradio-button extension-install' data-url='{url}'"
                      f" aria-label='Install {html.escape(entry.name)}'>Install</button>")
        rows.append(
            "<tr>"
            f"<td class='extension-name'><a href='{url}' target='_blank' rel='noopener noreferrer'>"
            f"{html.escape(entry.name)}</a></td>"
            f"<td>{html.escape(entry.description)}</td>"
            f"<td>{tags}</td>"
            f"<td>{html.escape(entry.added)}</td>"
            f"<td>{entry.stars}</td>"
            f"<td>{action}</td>"
            "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("Extension", "Description", "Tags", "Added", "Stars", "Action"))
    footer = f"<p class='extensions-hidden'>Extensions hidden: {hidden}</p>" if hidden else ""
    return (f"<table id='available_extensions'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"{footer}")
