"""A1111's ui-config.json (`--ui-config-file`): the page's defaults and limits, which people edit by hand.

Keys are `<tab id>/<label>/<field>` (a labelless button: its text), `<tab id>/Tabs@<elem_id>/selected` for a
gr.Tabs, and `customscript/<script file>/<tab id>/<label>/<field>` for the controls a script's ui() returned.
A key the file has is applied to its components before the page's config is made; a key it lacks gets the
component's default, and the file is written back when keys were added (on the first start: all of them).
Components sharing a label in one tab share a key, as in A1111.

The file is hand-edited: a value that does not fit its component is skipped with a warning naming the key, and
a file that cannot be read as a JSON object is moved aside; the page is built with its own defaults either way.

Settings > Defaults (A1111's) saves the page's current values: `apply` returns the components it keyed (value
fields only, the first component of a shared key), `review` compares what the page sends for them with the file,
and `save` writes the changes that fit, by the rules the file is read with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr

from modules import atomic_files, options, paths, scripts, shared

MAX_BYTES = 5 * 1024 * 1024  # A1111's file is ~100 KB; anything far larger is not one
SKIPPED_TABS = {"settings", "extensions"}  # their components are settings and extension state, not defaults
_UNSET = object()
_VISIBLE_TYPES = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown, gr.Button)


def filename() -> str:
    return getattr(shared.cmd_opts, "ui_config_file", None) or paths.data_file("ui-config.json")


def apply(tabs: gr.Tabs) -> dict[str, Any]:
    """Apply the file to the page's tabs (the top gr.Tabs) and record missing keys. Call before the page's
    config is made (inside its gr.Blocks). Returns the components of the `.../value` keys, keyed, in page order."""
    path = filename()
    loaded, readable = _read(path)
    walker = _Walker(path, loaded, _script_sources())
    for tab in tabs.children:
        tab_id = getattr(tab, "id", None)
        if isinstance(tab, gr.Tab) and tab_id is not None and str(tab_id) not in SKIPPED_TABS:
            walker.block(tab, str(tab_id))
    # a bad file that could not be moved aside is left for its owner to fix, not overwritten
    if walker.added and (readable or not os.path.lexists(path)):
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            atomic_files.atomic_write_text(path, json.dumps(walker.out, indent=4, ensure_ascii=False))
        except (OSError, ValueError) as e:
            print(f'Warning: could not write "{path}": {e}', file=sys.stderr)
    return walker.tracked


def _read(path: str) -> tuple[dict[str, Any], bool]:
    """The file's object and whether it was usable; a missing file is an empty one."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES // (1024 * 1024)} MB")
        loaded = json.loads(data.decode("utf-8-sig"))  # utf-8-sig: a BOM from a Windows editor is fine
        if not isinstance(loaded, dict):
            raise ValueError(f"expected a JSON object, found {type(loaded).__name__}")
        return loaded, True
    except FileNotFoundError:
        return {}, True
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        options.move_aside(path, e, what="UI defaults", fallback="the page's own defaults")
        return {}, False


def _script_sources() -> dict[int, str]:
    """id(control) -> the file name of the script whose ui() returned it (A1111's `custom_script_source`)."""
    sources: dict[int, str] = {}
    for runner in (scripts.scripts_txt2img, scripts.scripts_img2img):
        for script in runner.scripts:
            for control in script.controls or []:
                if script.filename:
                    sources[id(control)] = os.path.basename(script.filename)
    return sources


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # typed: 1 is not True, so a 1 for a checkbox is still checked


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _unfit(x: Any, value: Any) -> str:
    """Why `value` cannot be the component's value ("" when it can)."""
    if isinstance(x, gr.Checkbox):
        return "" if isinstance(value, bool) else "is not true or false"
    if isinstance(x, gr.Textbox):
        return "" if isinstance(value, str) or _real(value) else "is not text"
    if isinstance(x, gr.Number | gr.Slider):  # a slider: the page's value (a file's is checked in _slider)
        if not _real(value):
            return "is not a number"
        low = x.minimum if x.minimum is not None else -math.inf
        high = x.maximum if x.maximum is not None else math.inf
        return "" if low <= value <= high else f"is outside {low}..{high}"
    choices = options.choice_values(x.choices)
    custom = isinstance(x, gr.Dropdown) and x.allow_custom_value

    def fits(v: Any) -> bool:
        return v in choices or (custom and isinstance(v, str))

    if isinstance(x, gr.Dropdown) and x.multiselect:
        ok = isinstance(value, list) and all(fits(v) for v in value)
        return "" if ok else f"is not a list of choices ({choices})"
    return "" if fits(value) else f"is not one of the choices {choices}"


class _Walker:
    def __init__(self, path: str, loaded: dict[str, Any], sources: dict[int, str]) -> None:
        self.path = path
        self.loaded = loaded
        self.out: dict[str, Any] = dict(loaded)  # keys no component has (a disabled extension's) are kept
        self.added = False
        self.sources = sources
        self.uses: dict[str, int] = {}  # key -> components looked it up: a shared key's value was made for the first
        self.tracked: dict[str, Any] = {}  # `.../value` key -> its first component (Settings > Defaults reads it)

    def block(self, block: Any, path: str) -> None:
        children = getattr(block, "children", None)
        if children is not None:
            if isinstance(block, gr.Tabs) and block.elem_id:
                self._guarded(self._tabs, block, f"{path}/Tabs@{block.elem_id}")
            for child in children:
                self.block(child, path)
            return
        if getattr(block, "do_not_save_to_config", False):  # A1111's opt-out (Override settings: per paste)
            return
        label = getattr(block, "label", None)
        if not label and isinstance(block, gr.Button) and isinstance(block.value, str):
            label = block.value  # A1111 keys a labelless button by its text
        if not label:
            return
        prefix = f"{path}/{label}"
        if id(block) in self.sources:
            prefix = f"customscript/{self.sources[id(block)]}/{prefix}"
        self._guarded(self._component, block, prefix)

    def _guarded(self, method: Any, block: Any, prefix: str) -> None:
        try:
            method(block, prefix)
        except Exception:  # never let one component (an extension's odd one) stop the page
            print(f"Warning: {self.path}: could not apply the keys of {prefix!r}:\n{traceback.format_exc()}",
                  file=sys.stderr)

    def _lookup(self, key: str, default: Any) -> Any:
        """The file's value for `key`, or _UNSET; a key it lacks (or holds as null, A1111's "not set") records
        `default`, the first component's for a shared key."""
        self.uses[key] = self.uses.get(key, 0) + 1
        value = self.loaded.get(key)
        if value is not None:
            return value
        if (key not in self.out or (self.out[key] is None and default is not None)) and _jsonable(default):
            self.out[key] = default
            self.added = True
        return _UNSET

    def _warn(self, key: str, value: Any, reason: str) -> None:
        if self.uses.get(key, 0) > 1:  # a later component sharing the key: the value is applied "where it fits"
            return
        print(f'Warning: {self.path}: "{key}": {value!r} {reason}; keeping the default', file=sys.stderr)

    def _component(self, x: Any, prefix: str) -> None:
        if isinstance(x, _VISIBLE_TYPES) and x.visible is True:
            key = f"{prefix}/visible"
            value = self._lookup(key, True)
            if value is not _UNSET:
                if isinstance(value, bool):
                    x.visible = value
                else:
                    self._warn(key, value, "is not true or false")
        if isinstance(x, gr.Slider):
            self._slider(x, prefix)
        elif isinstance(x, gr.Number | gr.Checkbox | gr.Textbox | gr.Radio | gr.Dropdown):
            key = f"{prefix}/value"
            self.tracked.setdefault(key, x)
            value = self._lookup(key, x.value)
            if value is _UNSET or _same(value, x.value):
                return
            reason = _unfit(x, value)
            if reason:
                self._warn(key, value, reason)
                return
            if isinstance(x, gr.Textbox):
                value = str(value)
            elif isinstance(x, gr.Dropdown) and x.multiselect:
                value = list(value)
            x.value = x.postprocess(value)  # what the constructor stores (Number: rounded to its precision)
            accordion = getattr(x, "accordion", None)  # an InputAccordion: the accordion shows its value
            if isinstance(x, gr.Checkbox) and isinstance(accordion, gr.Accordion):
                accordion.open = value
            init_field = getattr(x, "init_field", None)  # A1111's hook (the Script dropdown shows its script)
            if callable(init_field):
                init_field(value)

    def _slider(self, x: gr.Slider, prefix: str) -> None:
        # looked up in A1111's order (the file's order on a first start), applied limits first: the value must
        # fit the limits as changed
        self.tracked.setdefault(f"{prefix}/value", x)
        saved = {field: self._lookup(f"{prefix}/{field}", getattr(x, field))
                 for field in ("value", "minimum", "maximum", "step")}
        limits = {"minimum": x.minimum, "maximum": x.maximum, "step": x.step}
        for field in limits:
            value = saved[field]
            if value is _UNSET or _same(value, limits[field]):
                continue
            if not _real(value) or (field == "step" and value <= 0):
                self._warn(f"{prefix}/{field}", value, "is not a positive number" if field == "step"
                           else "is not a number")
            else:
                limits[field] = value
        if limits["minimum"] > limits["maximum"]:
            self._warn(f"{prefix}/minimum", limits["minimum"], f"is above the maximum {limits['maximum']}")
            limits["minimum"], limits["maximum"] = x.minimum, x.maximum
        low, high = limits["minimum"], limits["maximum"]
        value = x.value
        if saved["value"] is not _UNSET and not _same(saved["value"], value):
            if not _real(saved["value"]):
                self._warn(f"{prefix}/value", saved["value"], "is not a number")
            elif not low <= saved["value"] <= high:
                self._warn(f"{prefix}/value", saved["value"], f"is outside {low}..{high}")
            else:
                value = saved["value"]
        if _real(value) and not low <= value <= high:  # new limits that shut out the value left: keep the old
            field = "maximum" if high != x.maximum else "minimum"
            self._warn(f"{prefix}/{field}", limits[field], f"would leave out the value {value}")
            limits["minimum"], limits["maximum"] = x.minimum, x.maximum
        x.minimum, x.maximum, x.step = limits["minimum"], limits["maximum"], limits["step"]
        x.value = x.postprocess(value)

    def _tabs(self, x: gr.Tabs, prefix: str) -> None:
        key = f"{prefix}/selected"
        value = self._lookup(key, x.selected)
        if value is _UNSET or _same(value, x.selected):
            return
        ids = [child.id for child in x.children if isinstance(child, gr.Tab) and child.id is not None]
        if value in ids and not isinstance(value, bool):
            x.selected = value
        else:
            self._warn(key, value, f"is not one of the tabs {ids}")


# Settings > Defaults: the page's values for the tracked keys against the file's


class Refused(Exception):
    """Why Settings > Defaults wrote nothing (a readable line for the page)."""


@dataclasses.dataclass
class Review:
    changes: list[tuple[str, Any, Any]] = dataclasses.field(default_factory=list)  # key, the file's value, the page's
    refused: list[str] = dataclasses.field(default_factory=list)  # a line per value that does not fit, naming its key
    readable: bool = True  # False: the file was bad (moved aside, or left where it could not be moved)
    loaded: dict[str, Any] = dataclasses.field(default_factory=dict)  # the file as read


_save_lock = threading.Lock()  # one Apply at a time: the second reads what the first wrote, and keeps it


def _from_page(x: Any, value: Any) -> Any:
    """The page's value as the file holds it: a radio or dropdown of type="index" passes an index, not the choice."""
    if getattr(x, "type", None) != "index" or not isinstance(x, gr.Radio | gr.Dropdown):
        return value
    choices = options.choice_values(x.choices)

    def choice(i: Any) -> Any:
        return choices[i] if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(choices) else i

    return [choice(i) for i in value] if isinstance(value, list) else choice(value)


def _differs(x: Any, old: Any, new: Any) -> bool:
    if old is None:  # a key the file lacks (or holds as null): an empty box is no change, as in A1111
        return new not in (None, "", [])
    if isinstance(x, gr.Textbox) and _real(old):  # a number for a textbox shows as its text
        old = str(old)
    return not (old == new and isinstance(old, bool) == isinstance(new, bool))  # 1 is no checked box


def review(tracked: Mapping[str, Any], values: Sequence[Any]) -> Review:
    """The tracked keys whose page value (`values`, in `tracked`'s order) differs from the file's. The file is read
    as at start: a bad one is moved aside, so every value differs from it."""
    loaded, readable = _read(filename())
    found = Review(readable=readable, loaded=loaded)
    for (key, x), value in zip(tracked.items(), values, strict=True):
        new = _from_page(x, value)
        if not _differs(x, loaded.get(key), new):
            continue
        reason = _unfit(x, new) or ("" if _jsonable(new) else "is not JSON")
        if reason:
            found.refused.append(f'"{key}": {new!r} {reason}')
        else:
            found.changes.append((key, loaded.get(key), new))
    return found


def save(tracked: Mapping[str, Any], values: Sequence[Any]) -> Review:
    """Write the fitting changes into the file, keeping its other keys; only `tracked` keys are written."""
    if getattr(shared.cmd_opts, "freeze_settings", False):
        raise Refused("Settings are frozen on this server (--freeze-settings): the defaults were not saved.")
    path = filename()
    with _save_lock:
        found = review(tracked, values)
        if not found.readable and os.path.lexists(path):  # as at start: a bad file is its owner's to fix
            raise Refused(f"{os.path.basename(path)} cannot be read and could not be moved aside: nothing was "
                          "saved (the server's log says why).")
        if found.changes:
            out = dict(found.loaded)
            out.update({key: new for key, _, new in found.changes})
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                atomic_files.atomic_write_text(path, json.dumps(out, indent=4, ensure_ascii=False))
            except OSError as e:
                raise Refused(f"Could not write {os.path.basename(path)}: {e.strerror or e}") from e
    return found
