"""Scripts as the API sees them: `/scripts`, `/script-info`, and the checks on `script_name`/`alwayson_scripts`.

The lists come from the script runners of `modules.scripts` (built-in scripts and extensions alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modules import scripts as script_api
from modules.api.errors import ApiError

KINDS = ("txt2img", "img2img")


def runner(kind: str) -> script_api.ScriptRunner:
    return script_api.scripts_img2img if kind == "img2img" else script_api.scripts_txt2img


def selectable_titles(kind: str) -> list[str]:
    """Titles of the scripts a request may name in `script_name`."""
    return [s.title() for s in runner(kind).selectable_scripts]


def alwayson_titles(kind: str) -> list[str]:
    """Titles of the always-on scripts `alwayson_scripts` may address."""
    return [s.title() for s in runner(kind).alwayson_scripts]


def names(kind: str) -> list[str]:
    """What /sdapi/v1/scripts lists for a tab: lower-cased titles, as A1111's `script.name`."""
    return [t.lower() for t in selectable_titles(kind) + alwayson_titles(kind)]


def _arg_info(component: Any) -> dict[str, Any]:
    choices = getattr(component, "choices", None)
    return {
        "label": getattr(component, "label", None), "value": getattr(component, "value", None),
        "minimum": getattr(component, "minimum", None), "maximum": getattr(component, "maximum", None),
        "step": getattr(component, "step", None),
        "choices": [c[1] if isinstance(c, list | tuple) else c for c in choices] if choices else None,
    }


def info() -> list[dict[str, Any]]:
    """/sdapi/v1/script-info: `[{name, is_alwayson, is_img2img, args: [...]}]`, as A1111."""
    out = []
    for kind in KINDS:
        r = runner(kind)
        r.ensure_inputs()
        for script in r.scripts:
            controls = r.inputs[script.args_from:script.args_to] if script.args_from is not None else []
            out.append({"name": script.title().lower(), "is_alwayson": script.alwayson,
                        "is_img2img": kind == "img2img", "args": [_arg_info(c) for c in controls]})
    return out


def script_args(kind: str, script_name: str | None, args: list[Any] | None,
                alwayson: Mapping[str, Any] | None) -> list[Any]:
    return runner(kind).args_for_api(script_name, args, dict(alwayson or {}))


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
    read_alwayson_args(kind, alwayson_scripts)


def read_alwayson_args(kind: str, alwayson_scripts: Mapping[str, Any] | None) -> None:
    """Always-on scripts that read their API arguments themselves (`Script.api_args`, e.g. ControlNet's units)
    do it here, before the job is queued: a bad argument is a 422 naming it, and the request keeps what they
    read. Base64 images are checked now and decoded when the job runs."""
    from modules.api import images

    for name, entry in (alwayson_scripts or {}).items():
        script = runner(kind).script(name)
        read = getattr(script, "api_args", None)
        if read is None or not isinstance(entry, dict):
            continue
        given = entry.get("args") or []
        if not isinstance(given, list):
            raise ApiError(422, "expected a list", ("alwayson_scripts", name, "args"))

        def decode(text: str, field: tuple, name: str = name) -> Any:
            return images.check_base64_image(text, ("alwayson_scripts", name, "args", *field))

        try:
            entry["args"] = read(list(given), decode)
        except ApiError:
            raise
        except ValueError as e:
            raise ApiError(422, str(e), ("alwayson_scripts", name, "args")) from None
