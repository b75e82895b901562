"""Infotext -> widget values: what "send to txt2img / img2img / inpaint" and PNG Info fill in.

The fields of each tab are registered in `modules.infotext_utils.paste_fields` (A1111's registry, which
extensions read and extend); a value that does not fit its widget (an unknown sampler, a malformed number) is
left as it was rather than breaking the paste.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import gradio as gr

from modules import extra_networks, infotext_utils, paths, script_callbacks, shared
from modules.networks import extra_network_lora
from modules.ui import common, override_settings, styles_store

Field = tuple[Any, str | Callable[[dict[str, Any]], Any]]
# params.txt holds one infotext (a few KB); a bigger file was edited or replaced by hand and is not parsed.
MAX_PARAMS_BYTES = 256 * 1024


def common_fields(toprow: Any, sampler: Any, size: Any, batch: Any, seeds: Any, tiling: Any, refiner: Any) -> list[Field]:
    return [
        (toprow.prompt, "Prompt"),
        (toprow.negative_prompt, "Negative prompt"),
        (toprow.styles, lambda d: d.get("Styles array", [])),
        (sampler.steps, "Steps"),
        (sampler.sampler, "Sampler"),
        (sampler.scheduler, "Schedule type"),
        (size.width, "Size-1"),
        (size.height, "Size-2"),
        (batch.batch_size, "Batch size"),
        (batch.cfg_scale, "CFG scale"),
        (seeds.seed, "Seed"),
        (seeds.extra, lambda d: "Variation seed" in d or "Seed resize from-1" in d),
        (seeds.subseed, "Variation seed"),
        (seeds.subseed_strength, "Variation seed strength"),
        (seeds.seed_resize_from_w, "Seed resize from-1"),
        (seeds.seed_resize_from_h, "Seed resize from-2"),
        (tiling, lambda d: "Tiling" in d),
        (refiner.enabled, lambda d: "Refiner" in d),
        (refiner.checkpoint, "Refiner"),
        (refiner.switch_at, "Refiner switch at"),
    ]


def parse(text: str) -> dict[str, Any]:
    db = styles_store.database()
    params = infotext_utils.parse_generation_parameters(text or "", extract_styles=db.extract_styles_from_prompt)
    extra_network_lora.ensure_registered()
    extra_networks.infotext_pasted(text or "", params)  # a renamed LoRA is found by its hash
    script_callbacks.infotext_pasted_callback(text or "", params)  # extensions may add or change fields
    return params


def _choices(component: Any) -> list[Any]:
    return [c[1] if isinstance(c, list | tuple) else c for c in (getattr(component, "choices", None) or [])]


def _fit(component: Any, value: Any) -> Any:
    """value converted for component, or gr.skip() when it does not fit."""
    try:
        if isinstance(component, gr.Checkbox):
            return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
        if isinstance(component, gr.Slider | gr.Number):
            number = float(value)
            step = getattr(component, "step", None)
            whole = getattr(component, "precision", None) == 0 or (isinstance(step, int | float) and float(step).is_integer())
            return int(number) if whole else number
        # A radio of type="index" still takes its *choice* as a value; only what it passes to a function is an index.
        if isinstance(component, gr.Dropdown | gr.Radio):
            if getattr(component, "multiselect", False):
                return list(value) if isinstance(value, list | tuple) else [value]
            choices = _choices(component)
            if value in choices or getattr(component, "allow_custom_value", False):
                return value
            return gr.skip()
        return str(value)
    except (TypeError, ValueError):
        return gr.skip()


def values_for(fields: list[Field], params: dict[str, Any]) -> list[Any]:
    out = []
    for component, target in fields:
        value = target(params) if callable(target) else params.get(target)
        out.append(gr.skip() if value is None else _fit(component, value))
    return out


def last_generation() -> str:
    """The infotext in params.txt (the last generation, written by modules.processing), or ValueError saying
    why it cannot be used."""
    if getattr(shared.cmd_opts, "no_prompt_history", False):
        raise ValueError("The last generation is not kept on this server (--no-prompt-history).")
    if getattr(shared.cmd_opts, "hide_ui_dir_config", False):  # as A1111: on a shared server it is someone else's
        raise ValueError("Reading the last generation is turned off on this server (--hide-ui-dir-config).")
    try:
        # non-blocking open, then a check of what was opened: a FIFO or device put there would hang the read
        fd = os.open(paths.data_file("params.txt"), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ValueError("There is no last generation yet (no params.txt): generate an image first, or paste "
                         "generation parameters into the prompt.") from None
    except OSError as e:
        raise ValueError(f"Could not read params.txt: {e.strerror or e}.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("params.txt is not a regular file: not read.")
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_PARAMS_BYTES + 1)
    if len(data) > MAX_PARAMS_BYTES:
        raise ValueError(f"params.txt is larger than {MAX_PARAMS_BYTES // 1024} KB: not read.")
    try:
        text = data.decode("utf-8-sig")  # a BOM from an editor is not prompt text
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise ValueError("params.txt does not hold text: not read.")
    if not text.strip():
        raise ValueError("params.txt is empty: there is nothing to read.")
    return text


def field_keys(fields: list[Field]) -> list[str]:
    """The infotext keys the fields take: those are not offered again as override settings (A1111)."""
    return [target for _, target in fields if isinstance(target, str)]


def with_overrides(fields: list[Field], params: dict[str, Any]) -> list[Any]:
    """values_for, then the tab's Override settings box (modules.ui.override_settings)."""
    return values_for(fields, params) + [override_settings.update(params, field_keys(fields))]


def from_prompt(fields: list[Field], text: str, overrides: bool = False) -> list[Any]:
    """The ↙️ button: values for `fields` from the infotext in the prompt box, or from params.txt when the box is
    empty, [the Override settings box, when `overrides`,] then the message line (empty, or why nothing changed)."""
    try:
        source = text if (text or "").strip() else last_generation()
    except ValueError as e:
        return [gr.skip()] * (len(fields) + overrides) + [common.error_html(str(e))]
    params = parse(source)
    return (with_overrides(fields, params) if overrides else values_for(fields, params)) + [""]
