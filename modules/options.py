"""Settings (A1111's `shared.opts`): a registry of `OptionInfo` templates plus the values in config.json.

Built-ins and extensions register options the same way (`opts.add_option`). Saving is atomic, and a corrupt
config.json is moved aside instead of stopping start-up (A1111 #9163, #8836).

Every write through `opts.set`, the Settings page or the API goes through `Options.validate`: the value must
have the setting's type, lie in its range (Slider `minimum`/`maximum`, or OptionInfo's own bounds) and be one
of its choices (Radio/Dropdown). Values in config.json that fail it fall back to the default with a warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modules import atomic_files


def choice_values(choices: Iterable[Any]) -> list[Any]:
    """The values of a dropdown's or radio's choices: gradio also takes (label, value) pairs."""
    return [c[1] if isinstance(c, tuple | list) and len(c) == 2 else c for c in choices]


class OptionInfo:
    """One setting's template: default, label, UI component and where it shows in the settings page."""

    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: dict | Callable[[], dict] | None = None,
        onchange: Callable[[], None] | None = None,
        section: tuple[str | None, str] | None = None,
        refresh: Callable[[], None] | None = None,
        comment_before: str = "",
        comment_after: str = "",
        infotext: str | None = None,
        restrict_api: bool = False,
        category_id: str | None = None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.infotext = infotext  # name of the infotext field that carries this setting, e.g. "Clip skip"
        self.restrict_api = restrict_api  # True: the API may not change it (paths, security-relevant switches)
        # Limits checked on every write but not shown as a slider (a Number box has no range of its own);
        # without them, the range and choices come from component_args.
        self.minimum = minimum
        self.maximum = maximum
        self.choices = choices

    # Chainable helpers, as A1111 extensions write them: OptionInfo(...).info("...").needs_reload_ui()
    def link(self, label: str, url: str) -> OptionInfo:
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label: str, js_func: str) -> OptionInfo:
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info: str) -> OptionInfo:
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html: str) -> OptionInfo:
        self.comment_after += html
        return self

    def needs_restart(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self) -> OptionInfo:
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self

    # What values the setting takes (see validate_value).
    def _component_args(self, dynamic: bool) -> dict[str, Any]:
        args = self.component_args
        if callable(args):
            if not dynamic:
                return {}
            try:
                args = args()
            except Exception:  # an extension's broken callable must not block saving: no limits known from it
                return {}
        return args if isinstance(args, dict) else {}

    def bounds(self, dynamic: bool = True) -> tuple[float | None, float | None]:
        """(minimum, maximum) a number may take; None where unbounded."""
        args = self._component_args(dynamic)
        low = self.minimum if self.minimum is not None else args.get("minimum")
        high = self.maximum if self.maximum is not None else args.get("maximum")
        return low, high

    def allowed_choices(self, dynamic: bool = True) -> list[Any] | None:
        """The values a Radio/Dropdown setting may take; None when any value of its type will do.

        dynamic=False leaves out choices made by a callable: at start-up the lists they read (models, files)
        may not be filled yet, and a value that is only missing for now must not be reset."""
        choices = self.choices
        if choices is None:
            args = self._component_args(dynamic)
            if args.get("allow_custom_value"):
                return None
            choices = args.get("choices")
        if callable(choices):
            if not dynamic:
                return None
            try:
                choices = choices()
            except Exception:  # as in _component_args
                return None
        if choices is None:
            return None
        return choice_values(choices)


class OptionHTML(OptionInfo):
    """A block of explanatory HTML on the settings page; it has no value and is never saved."""

    def __init__(self, text: str) -> None:
        super().__init__(str(text).strip(), label="")
        self.do_not_save = True


def options_section(section_identifier: tuple, options_dict: dict[str, OptionInfo]) -> dict[str, OptionInfo]:
    """Put options into a settings section: (id, label) or (id, label, category_id)."""
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


@dataclass
class OptionsCategory:
    id: str
    label: str


class OptionsCategories:
    """Groups of sections on the settings page ("Stable Diffusion", "User interface", ...)."""

    def __init__(self) -> None:
        self.mapping: dict[str, OptionsCategory] = {}

    def register_category(self, category_id: str, label: str) -> str:
        self.mapping.setdefault(category_id, OptionsCategory(category_id, label))
        return category_id


categories = OptionsCategories()


class SettingValueError(ValueError):
    """A value a setting cannot take. str() is "key: reason", the line the UI and the API show."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


_BUILTIN_FIELDS = {"data", "data_labels", "restricted_opts", "typemap", "_save_lock"}
_FALSE_WORDS = {"false", "0", "no", "off"}
_TRUE_WORDS = {"true", "1", "yes", "on"}


class Options:
    """Setting values by key, readable and writable as attributes: `opts.sd_vae`."""

    typemap = {int: float}  # an int setting may hold a float and vice versa (sliders send either)

    def __init__(self, data_labels: dict[str, OptionInfo] | None = None, restricted_opts: set[str] | None = None):
        object.__setattr__(self, "data_labels", data_labels if data_labels is not None else {})
        object.__setattr__(self, "restricted_opts", restricted_opts if restricted_opts is not None else set())
        object.__setattr__(self, "data", self._defaults())
        object.__setattr__(self, "_save_lock", threading.Lock())

    def _defaults(self) -> dict[str, Any]:
        return {k: v.default for k, v in self.data_labels.items() if not v.do_not_save}

    def __getattr__(self, item: str) -> Any:
        # Only called when normal lookup fails, i.e. for setting keys.
        if item in _BUILTIN_FIELDS:
            raise AttributeError(item)
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(f"no setting named {item!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _BUILTIN_FIELDS:
            object.__setattr__(self, key, value)
            return
        if key not in self.data_labels and key not in self.data:
            raise AttributeError(f"no setting named {key!r}; register it first with opts.add_option()")
        info = self.data_labels.get(key)
        if info is not None and info.do_not_save:
            return
        args = info.component_args if info is not None else None
        if isinstance(args, dict) and args.get("visible", True) is False:
            raise RuntimeError(f"setting {key!r} is restricted and cannot be changed")
        self.data[key] = value

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        """Set a value and run its onchange callback; True if the value changed.

        A value the setting cannot take raises SettingValueError and changes nothing. A failing callback is
        reported and the old value restored, so one broken extension cannot leave a setting half-applied.
        """
        if key not in self.data_labels:
            raise KeyError(f"no setting named {key!r}")
        option = self.data_labels[key]
        if option.do_not_save or (is_api and option.restrict_api):
            return False
        value = self.validate(key, value)
        old = self.data.get(key, option.default)
        if old == value:
            return False
        try:
            setattr(self, key, value)
        except RuntimeError:
            return False
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception:
                print(f"Error changing setting {key} to {value!r}:\n{traceback.format_exc()}", file=sys.stderr)
                setattr(self, key, old)
                return False
        return True

    def validate(self, key: str, value: Any) -> Any:
        """The value as setting `key` stores it (cast to its type), or SettingValueError naming the key.

        The one check behind the Settings page, POST /sdapi/v1/options, override_settings and set()."""
        info = self.data_labels.get(key)
        if info is None:
            raise SettingValueError(key, "no setting by this name")
        return validate_value(key, info, value, self.data.get(key))

    def get_default(self, key: str) -> Any:
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        if info.do_not_save:
            return
        if key not in self.data:
            self.data[key] = info.default
        else:  # read from config.json before an extension registered it: check it now
            self.data[key] = _loaded_or_default(key, info, self.data[key])

    def onchange(self, key: str, func: Callable[[], None], call: bool = True) -> None:
        """Run func (no arguments) whenever the setting changes through set(); call it once now if call."""
        if key not in self.data_labels:
            raise KeyError(f"no setting named {key!r}")
        self.data_labels[key].onchange = func
        if call:
            func()

    def same_type(self, x: Any, y: Any) -> bool:
        if x is None or y is None:
            return True
        return self.typemap.get(type(x), type(x)) == self.typemap.get(type(y), type(y))

    def cast_value(self, key: str, value: Any) -> Any:
        """Convert value (often a string from the API or infotext) to the type of the setting's default.

        Raises ValueError naming the key when the value does not fit. Settings whose default is None and that
        have no value yet carry no type, so the value is returned as given.
        """
        if key not in self.data_labels:
            raise KeyError(f"no setting named {key!r}")
        if value is None:
            return None
        reference = self.data_labels[key].default
        if reference is None:
            reference = self.data.get(key)
        if reference is None:
            return value
        try:
            return _cast(value, type(reference))
        except (TypeError, ValueError) as e:
            raise ValueError(f"setting {key!r}: cannot use {value!r} as {type(reference).__name__} ({e})") from None

    def save(self, filename: str) -> None:
        """Write the values as JSON, atomically: a crash leaves either the old file or the new one."""
        data = self._serializable(dict(self.data))
        text = json.dumps(data, indent=4, ensure_ascii=False)
        with self._save_lock:
            os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
            atomic_files.atomic_write_text(filename, text)

    def _serializable(self, data: dict[str, Any]) -> dict[str, Any]:
        # One unserializable value (an extension storing an object) drops that key, not the whole save.
        try:
            json.dumps(data)
            return data
        except (TypeError, ValueError):
            pass
        kept = {}
        for key, value in data.items():
            try:
                json.dumps(value)
                kept[key] = value
            except (TypeError, ValueError):
                print(f"Warning: setting {key!r} not saved: {type(value).__name__} is not JSON", file=sys.stderr)
        return kept

    def load(self, filename: str) -> None:
        """Read values from a JSON file. Missing file: defaults. Corrupt file: moved aside, defaults, a warning."""
        loaded: dict[str, Any] = {}
        try:
            with open(filename, encoding="utf8") as file:
                loaded = json.load(file)
            if not isinstance(loaded, dict):
                raise ValueError(f"expected a JSON object, found {type(loaded).__name__}")
        except FileNotFoundError:
            loaded = {}
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            move_aside(filename, e)
            loaded = {}

        data = self._defaults()
        data.update(loaded)
        self._replace_invalid(data, loaded)
        _migrate(data, loaded)
        object.__setattr__(self, "data", data)

    def _replace_invalid(self, data: dict[str, Any], loaded: dict[str, Any]) -> None:
        """Hand-edited values a setting cannot take become its default (with a warning), so start-up goes on."""
        for key, value in loaded.items():
            info = self.data_labels.get(key)
            if info is not None and not info.do_not_save:
                data[key] = _loaded_or_default(key, info, value)

    def dumpjson(self) -> str:
        """All values plus the comments and category headings the settings page needs."""
        d: dict[str, Any] = {k: self.data.get(k, v.default) for k, v in self.data_labels.items()}
        d["_comments_before"] = {k: v.comment_before for k, v in self.data_labels.items() if v.comment_before}
        d["_comments_after"] = {k: v.comment_after for k, v in self.data_labels.items() if v.comment_after}

        # [section label, category label] for the first section of each category: the page puts a heading there.
        first_section: dict[str, str] = {}
        for info in self.data_labels.values():
            if not info.section or info.section[0] is None:
                continue
            category = categories.mapping.get(info.category_id or "")
            first_section.setdefault(category.label if category is not None else "Uncategorized", info.section[1])
        d["_categories"] = [[section, cat] for cat, section in first_section.items()] + [["Defaults", "Other"]]
        return json.dumps(d, default=str)

    def reorder(self) -> None:
        """Sort settings by category (registration order), then by section label, as the settings page shows them."""
        order = {cat_id: i for i, cat_id in enumerate(categories.mapping)}

        def rank(item: tuple[str, OptionInfo]) -> tuple[int, str]:
            info = item[1]
            section_label = info.section[1] if info.section else ""
            return order.get(info.category_id or "", len(order)), section_label or ""

        ordered = dict(sorted(self.data_labels.items(), key=rank))
        self.data_labels.clear()  # in place: shared.options_templates is the same dict
        self.data_labels.update(ordered)


def validate_value(key: str, info: OptionInfo, value: Any, current: Any = None, dynamic: bool = True) -> Any:
    """`value` cast to the setting's type and checked against its range and choices.

    The type is that of the default, or of `current` when the default is None. dynamic=False skips limits that
    come from callables (see OptionInfo.allowed_choices). Raises SettingValueError with a readable reason.
    """
    if value is None or (value == "" and info.default is None):  # an empty dropdown sends "" for "none chosen"
        if info.default is None:
            return None
        raise SettingValueError(key, f"a value is required ({_type_name(info.default)})")
    reference = info.default if info.default is not None else current
    if reference is not None:
        value = _typed(key, value, type(reference))
    elif isinstance(value, float) and not math.isfinite(value):
        raise SettingValueError(key, f"{value} is not a finite number")
    _check_range(key, info, value, dynamic)
    _check_choices(key, info, value, dynamic)
    return value


def _type_name(value: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
        type(value), type(value).__name__)


def _typed(key: str, value: Any, expected: type) -> Any:
    # Text settings take text (or a number, as infotext gives it); a list or true/false there is a client's bug.
    if expected is str and isinstance(value, bool | list | tuple | dict):
        raise SettingValueError(key, f"{value!r} is not text")
    try:
        return _cast(value, expected)
    except (TypeError, ValueError, OverflowError) as e:
        raise SettingValueError(key, f"cannot use {value!r} as {expected.__name__} ({e})") from None


def _check_range(key: str, info: OptionInfo, value: Any, dynamic: bool) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low, high = info.bounds(dynamic)
    if (low is None or value >= low) and (high is None or value <= high):
        return
    if low is not None and high is not None:
        allowed = f"{_number(low)} to {_number(high)}"
    else:
        allowed = f"at least {_number(low)}" if low is not None else f"at most {_number(high)}"
    raise SettingValueError(key, f"{_number(value)} is out of range ({allowed})")


def _number(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _check_choices(key: str, info: OptionInfo, value: Any, dynamic: bool) -> None:
    choices = info.allowed_choices(dynamic)
    if choices is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if item not in choices:
            shown = ", ".join(str(c) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
            raise SettingValueError(key, f"{item!r} is not one of: {shown}")


def _loaded_or_default(key: str, info: OptionInfo, value: Any) -> Any:
    try:
        return validate_value(key, info, value, dynamic=False)
    except SettingValueError as e:
        print(f"Warning: bad value in the config file: {e}; using the default {info.default!r}", file=sys.stderr)
        return info.default


def _cast(value: Any, expected: type) -> Any:
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    if expected is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise ValueError("expected true/false")
    if expected is int:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = _float(value) if isinstance(value, str) and not value.strip().lstrip("+-").isdigit() else value
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError("expected a finite number")
        if isinstance(number, float) and not number.is_integer():
            raise ValueError("expected a whole number")
        return int(number)
    if expected is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = _float(value) if isinstance(value, str) else float(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if expected is str:
        return str(value)
    if expected in (list, tuple) and isinstance(value, list | tuple):
        return expected(value)
    if expected in (list, dict) and isinstance(value, str):
        parsed = json.loads(value)
        if isinstance(parsed, expected):
            return parsed
    raise ValueError(f"expected {expected.__name__}")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number") from None


def _migrate(data: dict[str, Any], loaded: dict[str, Any]) -> None:
    """Carry old keys over to their new names, as A1111 does when reading an older config.json."""
    # 1.6.0: sd_vae_as_default became sd_vae_overrides_per_model_preferences (with the opposite meaning)
    if loaded.get("sd_vae_as_default") is not None and "sd_vae_overrides_per_model_preferences" not in loaded:
        data["sd_vae_overrides_per_model_preferences"] = not loaded["sd_vae_as_default"]


def move_aside(filename: str, error: Exception, what: str = "settings", fallback: str = "default settings") -> None:
    """Rename a file that cannot be loaded to `<name>.bad-<time>` (kept for its owner), with a warning."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{filename}.bad-{stamp}"
    n = 1
    while os.path.exists(target):
        target = f"{filename}.bad-{stamp}-{n}"
        n += 1
    try:
        os.replace(filename, target)
        where = f'it was moved to "{target}"'
    except OSError as move_error:
        where = f"it could not be moved aside ({move_error})"
    print(f'Warning: could not load {what} from "{filename}" ({type(error).__name__}: {error}); '
          f"{where}; using {fallback}", file=sys.stderr)
