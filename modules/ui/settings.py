"""The Settings tab: one widget per registered setting (`opts.data_labels`), grouped by section.

Apply settings checks every value (`Options.validate`: type, range, choices); if one is refused, the page
shows why and nothing is saved. Otherwise it sets each changed value through `opts.set` (so onchange callbacks
run) and saves config.json atomically (`Options.save`). Reload UI reloads the page, which reads every value afresh. The quicksettings
(checkpoint, VAE, Clip skip) live in the bar at the top and are left out here, so two widgets never fight
over one setting.

Search (javascript/settings_search.js) filters in the page: each setting's widget is marked `settings-item` and
each section's tab `settings-section`, so the script finds them and shows the matching ones of all sections together.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import shared
from modules.options import OptionHTML, OptionInfo, SettingValueError, choice_values
from modules.ui import common, downloads, settings_actions, settings_defaults
from modules.ui.page_load import PageLoad

QUICKSETTINGS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
_TAGS = re.compile(r"<[^>]+>")


@dataclass
class SettingsPage:
    keys: list[str] = field(default_factory=list)
    components: list[Any] = field(default_factory=list)
    apply: gr.Button | None = None
    reload: gr.Button | None = None
    result: gr.HTML | None = None
    download: Any = None  # modules.ui.downloads.DownloadBox
    defaults: settings_defaults.DefaultsTab | None = None


def _plain(text: str) -> str:
    """A setting's HTML comment as plain text for the widget's info line."""
    return html.unescape(_TAGS.sub("", text or "")).strip()


def _args(info: OptionInfo) -> dict[str, Any]:
    args = info.component_args() if callable(info.component_args) else info.component_args
    return dict(args or {})


def _frozen(key: str, info: OptionInfo) -> bool:
    opts = shared.cmd_opts
    if getattr(opts, "freeze_settings", False):
        return True
    if key in shared.opts.restricted_opts and getattr(opts, "hide_ui_dir_config", False):
        return True
    sections = {s.strip() for s in (getattr(opts, "freeze_settings_in_sections", None) or "").split(",") if s.strip()}
    specific = {s.strip() for s in (getattr(opts, "freeze_specific_settings", None) or "").split(",") if s.strip()}
    return key in specific or bool(info.section and info.section[0] in sections)


def component_for(key: str, info: OptionInfo) -> Any:
    """A widget that fits the setting: checkbox, dropdown, slider, number or text, as A1111 picks them."""
    args = _args(info)
    args.pop("visible", None)
    label = info.label or key
    note = _plain(info.comment_after) or None
    common_kwargs = dict(label=label, info=note, elem_id=f"setting_{key}", elem_classes=["settings-item"],
                         interactive=not _frozen(key, info))
    default = info.default
    # Built with the saved value, not the default: the page's load event refreshes it anyway, but a page whose
    # load has not arrived yet must not hold defaults that an Apply would save over the person's settings.
    value = shared.opts.data.get(key, default)
    if "choices" in args:
        choices = _listed(list(args.pop("choices")), value)
        multiselect = isinstance(default, list)
        # A list read from folders (upscalers, face restorers) may no longer hold the saved value; gradio would
        # refuse the whole page's Apply with a message that names no setting. Our check (`apply`) names it, and
        # keeps a value nobody changed, as start-up does.
        return gr.Dropdown(choices=choices, value=value, multiselect=multiselect,
                           allow_custom_value=_dynamic(info), **common_kwargs)
    if isinstance(default, bool):
        return gr.Checkbox(value=value, **common_kwargs)
    if isinstance(default, int | float) and "minimum" in args and "maximum" in args:
        return gr.Slider(minimum=args["minimum"], maximum=args["maximum"], step=args.get("step", 1),
                         value=value, **common_kwargs)
    if isinstance(default, int | float):
        precision = args.get("precision", 0 if isinstance(default, int) else None)
        return gr.Number(value=value, precision=precision, **common_kwargs)
    if isinstance(default, list):
        value = value if isinstance(value, list) else default
        return gr.Dropdown(choices=[str(x) for x in value], value=value, multiselect=True,
                           allow_custom_value=True, **common_kwargs)
    return gr.Textbox(value="" if value is None else str(value), lines=1, **common_kwargs)


def _dynamic(info: OptionInfo) -> bool:
    """Choices read at the time (model and upscaler folders), not fixed."""
    return callable(info.component_args) or callable(info.choices)


def _listed(choices: list[Any], value: Any) -> list[Any]:
    """The choices, and the saved value(s) no longer among them (an upscaler deleted since), marked as not found:
    a value the list lacks was replaced by the list's first entry on the page's next Apply in most tries."""
    values = choice_values(choices)
    saved = value if isinstance(value, list) else [value]
    return choices + [(f"{v} (not found)", v) for v in saved if v not in (None, "") and v not in values]


def _loaded(info: OptionInfo | None, value: Any) -> Any:
    """What a page load puts in a setting's widget: the value, and a list read from folders read again (what was
    added or deleted since the page was built shows)."""
    if info is None or not _dynamic(info):
        return value
    args = _args(info)
    return gr.Dropdown(choices=_listed(list(args["choices"]), value), value=value) if "choices" in args else value


def _sections() -> dict[tuple[str, str], list[tuple[str, OptionInfo]]]:
    grouped: dict[tuple[str, str], list[tuple[str, OptionInfo]]] = {}
    for key, info in shared.opts.data_labels.items():
        if key in QUICKSETTINGS or not info.section or info.section[0] is None:
            continue
        grouped.setdefault((str(info.section[0]), str(info.section[1])), []).append((key, info))
    return grouped


def build() -> SettingsPage:
    page = SettingsPage()
    with gr.Row(elem_id="settings_top"):
        # Off until the page's load event has given every widget its current value (see `wire`).
        page.apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", interactive=False)
        page.reload = gr.Button("Reload UI", elem_id="settings_restart_gradio")
    page.result = gr.HTML(elem_id="settings_result")
    gr.Markdown("Checkpoint, VAE and Clip skip are in the bar at the top of the page. "
                f"Settings are saved to `{_display_config()}`.")
    page.download = downloads.build()  # the "Download model" box (modules/ui/downloads.py)
    gr.Textbox(value="", placeholder="Search...", show_label=False, max_lines=1, elem_id="settings_search")
    gr.HTML("<p>No setting matches.</p>", elem_id="settings_search_none", padding=False)  # shown by the script
    with gr.Tabs(elem_id="settings"):
        for (section_id, section_label), options in _sections().items():
            with gr.Tab(section_label, id=section_id, elem_id=f"settings_{section_id}",
                        elem_classes=["settings-section"]):
                for key, info in options:
                    if isinstance(info, OptionHTML):
                        # registered by our code or an extension: trusted markup; hidden while searching
                        gr.HTML(info.default, elem_classes=["settings-note"])
                        continue
                    page.keys.append(key)
                    page.components.append(component_for(key, info))
        page.defaults = settings_defaults.build()
        settings_actions.build()
    return page


def _display_config() -> str:
    return os.path.basename(shared.config_filename)


def current_values(keys: list[str]) -> list[Any]:
    values = []
    for key in keys:
        value = shared.opts.data.get(key, shared.opts.get_default(key))
        values.append("" if value is None and not isinstance(shared.opts.get_default(key), bool | int | float)
                      else value)
    return values


def _checked_changes(keys: list[str], values: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """(settings whose checked value differs from the current one, error lines for values refused)."""
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in zip(keys, values, strict=True):
        info = shared.opts.data_labels.get(key)
        if info is None or _frozen(key, info):
            continue
        if value == "" and info.default is None:
            value = None
        if value == shared.opts.data.get(key, info.default):
            continue  # unchanged: a saved choice that is missing from today's list stays, as at start-up
        try:
            value = shared.opts.validate(key, value)
        except SettingValueError as e:
            problems.append(f"{info.label or key} ({e.key}): {e.reason}")
            continue
        if shared.opts.data.get(key, info.default) != value:
            changes[key] = value
    return changes, problems


def apply(keys: list[str], values: list[Any]) -> str:
    """Set the changed settings and save; an HTML summary, or a readable error.

    All values are checked first: if any is refused, nothing is set or saved, so a page with one bad box
    never leaves config.json half-updated."""
    if getattr(shared.cmd_opts, "freeze_settings", False):
        return common.error_html("Settings are frozen on this server (--freeze-settings).")
    changes, problems = _checked_changes(keys, values)
    if problems:
        return "".join(common.error_html(p) for p in problems) + common.notice_html(
            "Nothing was saved: correct the value" + ("s" if len(problems) > 1 else "") + " above and apply again.")
    changed = []
    for key, value in changes.items():
        label = shared.opts.data_labels[key].label or key
        if shared.opts.set(key, value):
            changed.append(label)
        else:
            problems.append(f"{label}: the new value was refused")
    try:
        shared.opts.save(shared.config_filename)
    except OSError as e:
        return common.error_html(f"Could not save settings to {shared.config_filename}: {e.strerror or e}")
    parts = []
    if changed:
        parts.append(common.notice_html(f"{len(changed)} setting{'s' if len(changed) != 1 else ''} changed: "
                                        + ", ".join(changed) + "."))
    else:
        parts.append(common.notice_html("No settings changed."))
    parts += [common.error_html(p) for p in problems]
    return "".join(parts)


def wire(loads: PageLoad, page: SettingsPage) -> None:
    keys = list(page.keys)

    def on_apply(*values: Any) -> str:
        return apply(keys, list(values))

    def on_load() -> list[Any]:
        return [_loaded(shared.opts.data_labels.get(key), value)
                for key, value in zip(keys, current_values(keys), strict=True)] + [gr.Button(interactive=True)]

    page.apply.click(on_apply, inputs=page.components, outputs=[page.result], show_progress="hidden")
    page.reload.click(None, js="() => { window.location.reload(); }")
    # Apply turns on with the values, in the same event: pressed earlier, it would send the values the page was
    # built with, and a setting changed since (by another tab, the API) would be set back.
    loads.add(on_load, [*page.components, page.apply])
