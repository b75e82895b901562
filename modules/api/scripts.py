"""Scripts as the API sees them: `/scripts`, `/script-info`, and the checks on `script_name`/`alwayson_scripts`.

The script system (A1111's `modules.scripts`) does not exist yet, so both lists are empty and any named script
is unknown: a 422 with A1111's message. When scripts land, these functions read their runners and the routes
and checks follow without other changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modules.api.errors import ApiError

KINDS = ("txt2img", "img2img")


def selectable_titles(kind: str) -> list[str]:
    """Titles of the scripts a request may name in `script_name` (none yet)."""
    return []


def alwayson_titles(kind: str) -> list[str]:
    """Titles of the always-on scripts `alwayson_scripts` may address (none yet)."""
    return []


def names(kind: str) -> list[str]:
    """What /sdapi/v1/scripts lists for a tab: lower-cased titles, as A1111's `script.name`."""
    return [t.lower() for t in selectable_titles(kind) + alwayson_titles(kind)]


def info() -> list[dict[str, Any]]:
    """/sdapi/v1/script-info: `[{name, is_alwayson, is_img2img, args: [...]}]` (empty until scripts exist)."""
    return []


def check_request(kind: str, script_name: str | None, alwayson_scripts: Mapping[str, Any] | None) -> None:
    """A1111's checks, with its 422 messages: the selectable script must exist (case-insensitive title), and
    every `alwayson_scripts` key must be an always-on script's lower-cased title."""
    if script_name:
        if script_name.lower() not in [t.lower() for t in selectable_titles(kind)]:
            raise ApiError(422, f"Script '{script_name}' not found", "script_name", as_validation=False)
    for name in alwayson_scripts or {}:
        if name.lower() not in [t.lower() for t in alwayson_titles(kind)]:
            if name.lower() in [t.lower() for t in selectable_titles(kind)]:
                raise ApiError(422, "Cannot have a selectable script in the always on scripts params",
                               ("alwayson_scripts", name), as_validation=False)
            raise ApiError(422, f"always on script {name} not found", ("alwayson_scripts", name), as_validation=False)
