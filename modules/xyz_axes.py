"""The X/Y/Z plot's axes and how an axis's values are read (A1111's `scripts/xyz_grid.py`, minus the UI).

An axis (`AxisOption`) has a label, a value type, `apply(p, value, all_values)` that changes one cell's
request, `format_value(p, axis, value)` for its grid label, an optional `confirm(p, values)` that refuses bad
values before anything is generated, a `cost` (slow axes, like the checkpoint, change least often) and optional
`choices()` for the values dropdown. `axis_options` is A1111's list object: extensions append to it.

Values are written as A1111 reads them: comma-separated (CSV quoting allowed), and for numbers the ranges
`1-5` (every integer), `1-5 (+2)` (a step), `1-10 [4]` (four values spread evenly) and also `[1..5]`
(an inclusive range; A1111 has no such form, so no A1111 input reads differently).

Sampler parameters that A1111 keeps in settings (sigma churn, schedule sigmas, UniPC order ...) are put in the
cell's `override_settings`; the plot hands those the settings registry does not know to the engine itself.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Callable, Iterable
from io import StringIO
from itertools import chain, permutations
from typing import Any

import numpy as np

from modules import sd_models, sd_samplers, sd_schedulers, shared
from modules.engine.sampling.schedules import find_scheduler
from modules.models import fp8_storage, vae_registry

ApplyFn = Callable[[Any, Any, list[Any]], None]
ConfirmFn = Callable[[Any, list[Any]], None]
FormatFn = Callable[[Any, "AxisOption", Any], Any]

MAX_RANGE_VALUES = 10_000  # one range may not expand to more values than this (a typo must not eat the RAM)


# --- applying a value to a cell's request ------------------------------------------------------------------


def apply_field(field: str) -> ApplyFn:
    def fun(p: Any, x: Any, xs: list[Any]) -> None:
        setattr(p, field, x)

    return fun


def apply_override(field: str, boolean: bool = False) -> ApplyFn:
    """Put the value in the cell's override_settings (a setting for that one generation)."""
    def fun(p: Any, x: Any, xs: list[Any]) -> None:
        if boolean:
            x = str(x).lower() == "true"
        p.override_settings[field] = x

    return fun


def apply_sampler_setting(field: str, infotext_key: str | None = None) -> ApplyFn:
    """A sampler parameter read from settings; written to the infotext when the engine does not write it."""
    def fun(p: Any, x: Any, xs: list[Any]) -> None:
        p.override_settings[field] = x
        if infotext_key:
            p.extra_generation_params[infotext_key] = x

    return fun


def _replace_in(text: str | list[str], old: str, new: str) -> str | list[str]:
    return [t.replace(old, new) for t in text] if isinstance(text, list) else text.replace(old, new)


def _contains(text: str | list[str], part: str) -> bool:
    return any(part in t for t in text) if isinstance(text, list) else part in text


def apply_prompt(p: Any, x: str, xs: list[str]) -> None:
    """Prompt S/R: the first value is searched for and replaced by this cell's value."""
    if not _contains(p.prompt, xs[0]) and not _contains(p.negative_prompt, xs[0]):
        raise ValueError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    p.prompt = _replace_in(p.prompt, xs[0], x)
    p.negative_prompt = _replace_in(p.negative_prompt, xs[0], x)


def confirm_prompt_sr(p: Any, xs: list[str]) -> None:
    if xs and not _contains(p.prompt, xs[0]) and not _contains(p.negative_prompt, xs[0]):
        raise ValueError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")


def apply_order(p: Any, x: tuple[str, ...], xs: list[Any]) -> None:
    """Prompt order: the listed words, where they stand in the prompt, put in this cell's order."""
    rest = p.prompt
    pieces = []
    for _, token in sorted((p.prompt.find(token), token) for token in x):
        at = rest.find(token)
        pieces.append(rest[:at])
        rest = rest[at + len(token):]
    p.prompt = "".join(piece + token for piece, token in zip(pieces, x, strict=True)) + rest


def confirm_prompt_order(p: Any, xs: list[tuple[str, ...]]) -> None:
    prompt = p.prompt if isinstance(p.prompt, str) else ""
    for token in xs[0] if xs else ():
        if token not in prompt:
            raise ValueError(f"Prompt order: {token!r} is not in the prompt")


def _sampler_name(x: str) -> str | None:
    """The sampler's real name for a name or alias; old combined names ("Euler a Karras") are accepted too."""
    name = sd_samplers.samplers_map.get(x.lower())
    if name is not None:
        return name
    for scheduler in sd_schedulers.schedulers:
        for suffix in [scheduler.label, *(scheduler.aliases or [])]:
            if x.endswith(" " + suffix) and sd_samplers.samplers_map.get(x[: -len(suffix) - 1].lower()):
                return x
    return None


def apply_sampler(p: Any, x: str, xs: list[str]) -> None:
    p.sampler_name = _sampler_name(x) or x


def confirm_samplers(p: Any, xs: list[str]) -> None:
    for x in xs:
        if _sampler_name(x) is None:
            raise ValueError(f"Unknown sampler: {x}")


def apply_scheduler(p: Any, x: str, xs: list[str]) -> None:
    found = find_scheduler(x)
    p.scheduler = found.label if found is not None else x


def confirm_schedulers(p: Any, xs: list[str]) -> None:
    for x in xs:
        if find_scheduler(x) is None:
            raise ValueError(f"Unknown schedule type: {x}")


def _needs_hires(label: str, p: Any) -> None:
    """A txt2img Hires. fix axis with Hires. fix off would draw identical cells: refused by name instead."""
    if p is not None and getattr(p, "kind", "txt2img") == "txt2img" and not getattr(p, "enable_hr", False):
        raise ValueError(f"{label}: turn on Hires. fix to plot this axis (without it every cell is the same)")


def confirm_hires_steps(p: Any, xs: list[int]) -> None:
    _needs_hires("Hires steps", p)
    for x in xs:
        if not 0 <= x <= 10_000:
            raise ValueError(f'Hires steps value "{x}" out of range [0, 10000] (0: the same as Steps)')


def apply_hires_sampler(p: Any, x: str, xs: list[str]) -> None:
    p.hr_sampler_name = _sampler_name(x) or x


def confirm_hires_samplers(p: Any, xs: list[str]) -> None:
    _needs_hires("Hires sampler", p)
    confirm_samplers(p, xs)


def hires_upscaler_names() -> list[str]:
    return [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]]


def confirm_hires_upscalers(p: Any, xs: list[str]) -> None:
    _needs_hires("Hires upscaler", p)
    known = hires_upscaler_names()
    for x in xs:
        if x not in known:
            raise ValueError(f"Unknown hires upscaler: {x}")


def confirm_denoising(p: Any, xs: list[float]) -> None:
    """img2img's strength, or in txt2img the hires pass's (A1111's one Denoising axis for both tabs)."""
    _needs_hires("Denoising", p)
    confirm_range(0, 1, "Denoising")(p, xs)


def apply_checkpoint(p: Any, x: str, xs: list[str]) -> None:
    info = sd_models.get_closet_checkpoint_match(x)
    if info is None:
        raise ValueError(f"Unknown checkpoint: {x}")
    p.override_settings["sd_model_checkpoint"] = info.title
    p.sd_model = None  # the cell's model is the one this override loads


def confirm_checkpoints(p: Any, xs: list[str]) -> None:
    for x in xs:
        if sd_models.get_closet_checkpoint_match(x) is None:
            raise ValueError(f"Unknown checkpoint: {x}")


def _is_none(x: Any) -> bool:
    return x in (None, "", "None", "none")


def apply_refiner(p: Any, x: str, xs: list[str]) -> None:
    if _is_none(x):
        p.refiner_checkpoint = None
        return
    info = sd_models.get_closet_checkpoint_match(x)
    p.refiner_checkpoint = info.title if info is not None else x


def confirm_checkpoints_or_none(p: Any, xs: list[str]) -> None:
    confirm_checkpoints(p, [x for x in xs if not _is_none(x)])


def find_vae(name: str) -> str | None:
    """The `sd_vae` setting's value for an axis value: Automatic, None or a VAE's name (case-insensitive)."""
    wanted = name.strip().lower()
    if wanted in ("auto", "automatic"):
        return vae_registry.AUTOMATIC
    if wanted == "none":
        return vae_registry.NONE
    return next((key for key in vae_registry.vae_dict if key.lower() == wanted), None)


def apply_vae(p: Any, x: str, xs: list[str]) -> None:
    p.override_settings["sd_vae"] = find_vae(x) or x


def confirm_vae(p: Any, xs: list[str]) -> None:
    for x in xs:
        if find_vae(x) is None:
            raise ValueError(f"Unknown VAE: {x}")


def _style_database() -> Any:
    from modules.ui import styles_store  # creates shared.prompt_styles from styles.csv when nobody has yet

    return styles_store.database()


def _split_styles(x: str) -> list[str]:
    return [name.strip() for name in x.split(",") if name.strip()]


def apply_styles(p: Any, x: str, xs: list[str]) -> None:
    p.styles.extend(_split_styles(x))


def confirm_styles(p: Any, xs: list[str]) -> None:
    known = _style_database().styles
    for x in xs:
        for name in _split_styles(x):
            if name not in known:
                raise ValueError(f"Unknown style: {name}")


def apply_size(p: Any, x: str, xs: list[str]) -> None:
    p.width, p.height = _parse_size(x)


def _parse_size(x: str) -> tuple[int, int]:
    width, sep, height = str(x).lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width.strip()), int(height.strip())
    except ValueError:
        raise ValueError(f"Size: {x!r} is not WIDTHxHEIGHT") from None


def confirm_size(p: Any, xs: list[str]) -> None:
    for x in xs:
        width, height = _parse_size(x)
        if width % 8 or height % 8 or width < 64 or height < 64:
            raise ValueError(f"Size: {x} must be multiples of 8 and at least 64x64")


def apply_uni_pc_order(p: Any, x: int, xs: list[int]) -> None:
    p.override_settings["uni_pc_order"] = min(x, p.steps - 1)


def confirm_range(min_val: float, max_val: float, axis_label: str) -> ConfirmFn:
    """A confirm function refusing values outside [min_val, max_val]."""
    def confirm_range_fun(p: Any, xs: list[Any]) -> None:
        for x in xs:
            if not (max_val >= x >= min_val):
                raise ValueError(f'{axis_label} value "{x}" out of range [{min_val}, {max_val}]')

    return confirm_range_fun


def confirm_setting(key: str) -> ConfirmFn:
    """A confirm function checking values against a registered setting's type, range and choices."""
    def fun(p: Any, xs: list[Any]) -> None:
        if key in shared.opts.data_labels:
            for x in xs:
                shared.opts.validate(key, x)

    return fun


def do_nothing(p: Any, x: Any, xs: list[Any]) -> None:
    pass


# --- grid labels --------------------------------------------------------------------------------------------


def format_value_add_label(p: Any, opt: AxisOption, x: Any) -> str:
    if type(x) is float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p: Any, opt: AxisOption, x: Any) -> Any:
    if type(x) is float:
        x = round(x, 8)
    return x


def format_value_join_list(p: Any, opt: AxisOption, x: Iterable[str]) -> str:
    return ", ".join(x)


def format_nothing(p: Any, opt: AxisOption, x: Any) -> str:
    return ""


def format_remove_path(p: Any, opt: AxisOption, x: str) -> str:
    return os.path.basename(x)


def str_permutations(x: Any) -> Any:
    """Marks an axis whose values are every ordering of the listed words (Prompt order)."""
    return x


def boolean_choice(reverse: bool = False) -> Callable[[], list[str]]:
    def choice() -> list[str]:
        return ["False", "True"] if reverse else ["True", "False"]

    return choice


def list_to_csv_string(data_list: Iterable[Any]) -> str:
    with StringIO() as out:
        csv.writer(out).writerow(list(data_list))
        return out.getvalue().strip()


def csv_string_to_list_strip(data_str: str) -> list[str]:
    return [x.strip() for x in chain.from_iterable(csv.reader(StringIO(data_str or ""), skipinitialspace=True))]


# --- the axes -----------------------------------------------------------------------------------------------


class AxisOption:
    is_img2img: bool | None = None  # None: both tabs

    def __init__(self, label: str, type: Callable[[Any], Any], apply: ApplyFn,
                 format_value: FormatFn = format_value_add_label, confirm: ConfirmFn | None = None,
                 cost: float = 0.0, choices: Callable[[], list[str]] | None = None,
                 prepare: Callable[[str], list[Any]] | None = None) -> None:
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.choices = choices
        self.prepare = prepare


class AxisOptionImg2Img(AxisOption):
    is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    is_img2img = False


def _sampler_axis(label: str, key: str, infotext_key: str | None = None) -> AxisOption:
    """A sampler parameter A1111 keeps in settings, checked against the setting's range when it is registered."""
    return AxisOption(label, float, apply_sampler_setting(key, infotext_key), confirm=confirm_setting(key))


def _checkpoint_choices() -> list[str]:
    return sorted(sd_models.checkpoints_list, key=str.casefold)


def _style_choices() -> list[str]:
    return list(_style_database().styles)


# A1111's axes, in A1111's order, for the features this program has. Left out: Image CFG Scale (instruct-pix2pix
# cannot generate here), Face restore, Extra noise, Cond. Image Mask Weight, Negative Guidance minimum sigma, SGM
# noise multiplier (none of them is implemented, so such an axis would draw identical cells).
axis_options: list[AxisOption] = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Var. seed", int, apply_field("subseed")),
    AxisOption("Var. strength", float, apply_field("subseed_strength")),
    AxisOption("Steps", int, apply_field("steps"), confirm=confirm_range(1, 10_000, "Steps")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps"), confirm=confirm_hires_steps),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value, confirm=confirm_prompt_sr),
    AxisOption("Prompt order", str_permutations, apply_order, format_value=format_value_join_list,
               confirm=confirm_prompt_order),
    AxisOption("Sampler", str, apply_sampler, format_value=format_value, confirm=confirm_samplers,
               choices=sd_samplers.visible_sampler_names),
    AxisOptionTxt2Img("Hires sampler", str, apply_hires_sampler, confirm=confirm_hires_samplers,
                      choices=sd_samplers.visible_sampler_names),
    AxisOption("Checkpoint name", str, apply_checkpoint, format_value=format_remove_path,
               confirm=confirm_checkpoints, cost=1.0, choices=_checkpoint_choices),
    _sampler_axis("Sigma Churn", "s_churn", "Sigma churn"),
    _sampler_axis("Sigma min", "s_tmin", "Sigma tmin"),
    _sampler_axis("Sigma max", "s_tmax", "Sigma tmax"),
    _sampler_axis("Sigma noise", "s_noise", "Sigma noise"),
    AxisOption("Schedule type", str, apply_scheduler, confirm=confirm_schedulers,
               choices=lambda: [x.label for x in sd_schedulers.schedulers]),
    _sampler_axis("Schedule min sigma", "sigma_min"),
    _sampler_axis("Schedule max sigma", "sigma_max"),
    _sampler_axis("Schedule rho", "rho"),
    _sampler_axis("Beta schedule alpha", "beta_dist_alpha"),
    _sampler_axis("Beta schedule beta", "beta_dist_beta"),
    AxisOption("Eta", float, apply_field("eta")),
    AxisOption("Clip skip", int, apply_override("CLIP_stop_at_last_layers"),
               confirm=confirm_setting("CLIP_stop_at_last_layers")),
    AxisOption("Denoising", float, apply_field("denoising_strength"), confirm=confirm_denoising),
    AxisOptionImg2Img("Initial noise multiplier", float, apply_field("initial_noise_multiplier")),
    AxisOptionTxt2Img("Hires upscaler", str, apply_field("hr_upscaler"), confirm=confirm_hires_upscalers,
                      choices=hires_upscaler_names),
    AxisOption("VAE", str, apply_vae, confirm=confirm_vae, cost=0.7,
               choices=lambda: [vae_registry.AUTOMATIC, vae_registry.NONE, *vae_registry.vae_dict]),
    AxisOption("Styles", str, apply_styles, confirm=confirm_styles, choices=_style_choices),
    AxisOption("UniPC Order", int, apply_uni_pc_order, confirm=confirm_setting("uni_pc_order"), cost=0.5),
    AxisOption("Token merging ratio", float, apply_override("token_merging_ratio"),
               confirm=confirm_range(0, 0.9, "Token merging ratio")),
    AxisOption("Token merging ratio high-res", float, apply_override("token_merging_ratio_hr"),
               confirm=confirm_range(0, 0.9, "Token merging ratio high-res")),
    AxisOption("Always discard next-to-last sigma", str,
               apply_override("always_discard_next_to_last_sigma", boolean=True), choices=boolean_choice(reverse=True)),
    AxisOption("Refiner checkpoint", str, apply_refiner, format_value=format_remove_path,
               confirm=confirm_checkpoints_or_none, cost=1.0, choices=lambda: ["None", *_checkpoint_choices()]),
    AxisOption("Refiner switch at", float, apply_field("refiner_switch_at")),
    AxisOption("RNG source", str, apply_override("randn_source"), confirm=confirm_setting("randn_source"),
               choices=lambda: ["GPU", "CPU", "NV"]),
    AxisOption("FP8 mode", str, apply_override("fp8_storage"), confirm=confirm_setting("fp8_storage"), cost=0.9,
               choices=lambda: list(fp8_storage.CHOICES)),
    AxisOption("Size", str, apply_size, confirm=confirm_size),
]


def axes_for(is_img2img: bool) -> list[AxisOption]:
    """The axes a tab offers (its dropdown's choices, in order; a type index from the API counts in this list)."""
    return [opt for opt in axis_options if getattr(opt, "is_img2img", None) in (None, is_img2img)]


def find_axis(axes: list[AxisOption], choice: int | str | None) -> AxisOption:
    """The axis a dropdown value names: its index (the page and A1111's API send that) or its label."""
    if choice is None or choice == "":
        return axes[0]
    if isinstance(choice, int | float) and not isinstance(choice, bool):
        index = int(choice)
        if 0 <= index < len(axes):
            return axes[index]
        raise ValueError(f"X/Y/Z plot: there is no axis type number {index} (0 to {len(axes) - 1})")
    for opt in axes:
        if opt.label.lower() == str(choice).lower():
            return opt
    raise ValueError(f"X/Y/Z plot: unknown axis type {choice!r}")


# --- reading values ------------------------------------------------------------------------------------------

_INT = r"([+-]?\s*\d+)"
_FLOAT = r"([+-]?\s*\d+(?:\.\d*)?)"
re_range = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
re_range_count = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\[(\d+)\s*\])?\s*")
re_range_count_float = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\[(\d+)\s*\])?\s*")
re_range_dots = re.compile(rf"\s*\[\s*{_INT}\s*\.\.\s*{_INT}\s*\]\s*")
re_range_dots_float = re.compile(r"\s*\[\s*([+-]?\s*\d+(?:\.\d+)?)\s*\.\.\s*([+-]?\s*\d+(?:\.\d+)?)\s*\]\s*")


def _num(text: str, kind: type) -> Any:
    return kind(text.replace(" ", ""))  # A1111's patterns allow "- 5"


def _check_count(count: int, text: str) -> None:
    if count > MAX_RANGE_VALUES:
        raise ValueError(f"{text.strip()!r} gives {count} values; at most {MAX_RANGE_VALUES} per range")
    if count <= 0:
        raise ValueError(f"{text.strip()!r} gives no values")


def _int_range(start: int, end: int, step: int, text: str) -> list[int]:
    if step == 0:
        raise ValueError(f"{text.strip()!r}: the step must not be 0")
    values = range(start, end, step)
    _check_count(len(values), text)
    return list(values)


def _spread(start: float, end: float, num: int, text: str) -> list[float]:
    _check_count(num, text)
    return np.linspace(start=start, stop=end, num=num).tolist()


def expand_int(value: str) -> list[Any]:
    """`1-5`, `1-5 (+2)`, `1-10 [4]` and `[1..5]` as the integers they stand for; anything else as it is."""
    if m := re_range.fullmatch(value):
        step = int(m.group(3)) if m.group(3) is not None else 1
        return _int_range(_num(m.group(1), int), _num(m.group(2), int) + 1, step, value)  # end included
    if m := re_range_count.fullmatch(value):
        num = int(m.group(3)) if m.group(3) is not None else 1
        return [int(x) for x in _spread(_num(m.group(1), int), _num(m.group(2), int), num, value)]
    if m := re_range_dots.fullmatch(value):
        start, end = _num(m.group(1), int), _num(m.group(2), int)
        return _int_range(start, end + (1 if end >= start else -1), 1 if end >= start else -1, value)
    return [value]


def expand_float(value: str) -> list[Any]:
    """The float forms of the ranges (`0.5-2 (+0.5)`, `1-2 [5]`, `[1..3]`); anything else as it is."""
    if m := re_range_float.fullmatch(value):
        start, end = _num(m.group(1), float), _num(m.group(2), float)
        step = float(m.group(3)) if m.group(3) is not None else 1.0
        if step == 0:
            raise ValueError(f"{value.strip()!r}: the step must not be 0")
        _check_count(int(np.ceil((end + step - start) / step)), value)
        return np.arange(start, end + step, step).tolist()
    if m := re_range_count_float.fullmatch(value):
        num = int(m.group(3)) if m.group(3) is not None else 1
        return _spread(_num(m.group(1), float), _num(m.group(2), float), num, value)
    if m := re_range_dots_float.fullmatch(value):
        start, end = _num(m.group(1), float), _num(m.group(2), float)
        step = 1.0 if end >= start else -1.0
        _check_count(int(abs(end - start)) + 1, value)
        return [start + step * i for i in range(int(abs(end - start)) + 1)]
    return [value]


_TYPE_NAMES = {int: "a whole number", float: "a number"}


def _convert(opt: AxisOption, value: Any) -> Any:
    try:
        return opt.type(value)
    except (TypeError, ValueError):
        kind = _TYPE_NAMES.get(opt.type, "a valid value")
        raise ValueError(f"{opt.label}: {value!r} is not {kind}") from None


def parse_axis_values(opt: AxisOption, text: str | None, dropdown: list[Any] | None, csv_mode: bool,
                      p: Any = None) -> list[Any]:
    """An axis's values: read from the dropdown (axes with choices) or the text, ranges expanded, converted to
    the axis's type and confirmed. Raises ValueError naming the bad value; nothing has been generated then."""
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and not csv_mode and dropdown:
        values: list[Any] = list(dropdown)
    elif opt.prepare is not None:
        values = list(opt.prepare(text or ""))
    else:
        # A dropdown axis sent without its dropdown (an API client that only fills the text) reads the text.
        values = csv_string_to_list_strip(text or "")
    if opt.type in (int, float):
        expand = expand_int if opt.type is int else expand_float
        values = [v for value in values if str(value).strip() != "" for v in expand(str(value))]
    elif opt.type is str_permutations:
        values = list(permutations(values))
    values = [_convert(opt, v) for v in values]
    if not values:
        raise ValueError(f"{opt.label}: no values given")
    if opt.confirm is not None:
        opt.confirm(p, values)
    return values


def fix_axis_seeds(opt: AxisOption, values: list[Any]) -> list[Any]:
    """Seed axes: -1 (or nothing) becomes one random seed, so a cell's seed is known and written."""
    if opt.label not in ("Seed", "Var. seed"):
        return values
    return [random.randrange(4294967294) if v is None or v == "" or v == -1 else v for v in values]


def loop_order(x_cost: float, y_cost: float, z_cost: float) -> tuple[int, int, int]:
    """Axes (0 = x, 1 = y, 2 = z) from the outermost loop to the innermost: the costliest axis changes least
    often. Ties keep A1111's order: z outermost, then y, x innermost."""
    costs = (x_cost, y_cost, z_cost)
    first, second = 2, 1
    for axis in (0, 1, 2):
        others = [a for a in (0, 1, 2) if a != axis]
        if all(costs[axis] > costs[o] for o in others):
            a, b = others
            first, second = axis, (a if costs[a] > costs[b] else b)
            break
    inner = ({0, 1, 2} - {first, second}).pop()
    return first, second, inner
