"""A1111's per-network sidecar `NAME.json` (the card's edit dialog writes it) and the `NAME.preview.*` picture.

The JSON is user-written and may be hostile: it is read only when small, only as an object, and only the keys
below with the types below are kept. Writing goes through a temp file and a rename, so a crash never leaves half
a file.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from modules.atomic_files import atomic_write_text

log = logging.getLogger(__name__)

MAX_BYTES = 256 * 1024
SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL")
# key -> type it must have; A1111's dialog writes these
FIELDS: dict[str, type] = {
    "description": str,
    "activation text": str,
    "preferred weight": float,
    "negative text": str,
    "sd version": str,
    "notes": str,
}
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
MAX_TEXT = 20_000  # characters per text field


def sidecar_path(filename: str) -> str:
    return os.path.splitext(filename)[0] + ".json"


def _clean(key: str, value: Any) -> Any:
    kind = FIELDS[key]
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{key!r} must be a number")
        number = float(value) if value != "" else 0.0
        if number != number or abs(number) > 100:
            raise ValueError(f"{key!r} must be a number between -100 and 100")
        return number
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be text")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{key!r} is longer than {MAX_TEXT} characters")
    if key == "sd version" and value not in SD_VERSIONS:
        raise ValueError(f"'sd version' must be one of {', '.join(SD_VERSIONS)}")
    return value


def read(filename: str) -> dict[str, Any]:
    """The sidecar of a network file; {} when there is none. A broken one is logged and ignored."""
    path = sidecar_path(filename)
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_BYTES:
            return {}
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", os.path.basename(path), e)
        return {}
    if not isinstance(data, dict):
        return {}
    kept: dict[str, Any] = {}
    for key in FIELDS:
        if key in data:
            try:
                kept[key] = _clean(key, data[key])
            except ValueError as e:
                log.warning("ignoring %s in %s: %s", key, os.path.basename(path), e)
    return kept


def write(filename: str, values: dict[str, Any]) -> dict[str, Any]:
    """Check every value, then write the sidecar (other keys already in the file are kept). Raises ValueError
    naming the bad field; nothing is written then."""
    cleaned = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise ValueError(f"unknown field {key!r}")
        cleaned[key] = _clean(key, value)
    path = sidecar_path(filename)
    existing: dict[str, Any] = {}
    try:
        if os.path.isfile(path) and os.path.getsize(path) <= MAX_BYTES:
            with open(path, encoding="utf-8") as file:
                loaded = json.load(file)
            existing = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        existing = {}
    existing.update(cleaned)
    atomic_write_text(path, json.dumps(existing, indent=4, ensure_ascii=False))
    return read(filename)


def find_preview(filename: str) -> str | None:
    """`NAME.preview.png` (or .jpg, .webp, ...) or `NAME.png` beside the file, as A1111 looks for them."""
    stem = os.path.splitext(filename)[0]
    for ext in PREVIEW_EXTENSIONS:
        for candidate in (f"{stem}.preview.{ext}", f"{stem}.{ext}"):
            if os.path.isfile(candidate):
                return candidate
    return None
