"""The one check of a generation request, whichever door it came through.

The UI and scripts build a `StableDiffusionProcessing` (checked by `processing.process_images`); the API checks
its pydantic request before queueing it (through `modules.api.validation`), and the job it queues is checked
again by `process_images`. Both carry A1111's field names, so every check here reads fields by name and either
passes or raises a `RequestError` naming the field: a ValueError whose text the UI shows as is and that the API
turns into a 422 (413 for too much work). A field a request may carry either takes effect or is refused here by
name; none is accepted and silently ignored.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from modules import prompt_parser, shared
from modules.engine.sampling import registry as sampler_registry
from modules.engine.sampling.sampler import DDIM_DISCRETIZE
from modules.engine.sampling.schedules import find_scheduler, schedulers
from modules.options import SettingValueError

log = logging.getLogger(__name__)

Field = str | tuple[str | int, ...]


class RequestError(ValueError):
    """A request refused: the field at fault (None for the request as a whole), why, and the HTTP status the
    API answers with. str() is "field: reason", the line the UI shows."""

    def __init__(self, field: Field | None, reason: str, status: int = 422) -> None:
        self.field = field
        self.reason = reason
        self.status = status
        super().__init__(f"{field_text(field)}: {reason}" if field is not None else reason)


def field_text(field: Field) -> str:
    return field if isinstance(field, str) else ".".join(str(part) for part in field)


def validate(req: Any, *, is_api: bool = False) -> tuple[str, str | None]:
    """Every check that applies to a request from any door; (sampler name, scheduler) to run with.

    `is_api`: the request came over the HTTP API, so settings marked restrict_api may not be overridden."""
    check_shape(req)
    check_prompts(req)
    check_fields(req)
    names = check_sampler(req)
    check_refiner(req)
    check_override_settings(getattr(req, "override_settings", None), is_api=is_api)
    return names


# --- size and counts ------------------------------------------------------------------------------------------


def _value(req: Any, field: str) -> Any:
    return getattr(req, field, None)  # None: the field's default (the API's explicit null means that too)


def check_shape(req: Any) -> None:
    for field in ("width", "height"):
        value = _value(req, field)
        if value is not None and (value % 8 or value < 64):
            raise RequestError(field, f"{value} is not allowed: width and height must be multiples of 8 and at "
                                      "least 64")
    for field in ("steps", "batch_size", "n_iter"):
        value = _value(req, field)
        if value is not None and value < 1:
            raise RequestError(field, f"must be at least 1, got {value}")


# API limits: the api_max_* settings (restrict_api: a client cannot raise them).
LIMIT_DEFAULTS = {
    "api_max_width": 4096, "api_max_height": 4096, "api_max_steps": 500, "api_max_batch_size": 16,
    "api_max_n_iter": 100, "api_max_init_images": 16, "api_max_work": 2000, "api_max_prompt_chars": 20000,
}  # fmt: skip
_LIMITED_FIELDS = (("width", "api_max_width"), ("height", "api_max_height"), ("steps", "api_max_steps"),
                   ("batch_size", "api_max_batch_size"), ("n_iter", "api_max_n_iter"),
                   ("seed_resize_from_w", "api_max_width"), ("seed_resize_from_h", "api_max_height"))
_WORK_FIELDS = ("batch_size", "n_iter", "steps", "width", "height")


def limit(name: str) -> int:
    return int(getattr(shared.opts, name, LIMIT_DEFAULTS[name]))


def check_api_limits(req: Any) -> None:
    for field, setting in _LIMITED_FIELDS:
        value = _value(req, field)
        if value is not None and value > limit(setting):
            raise RequestError(field, f"{value} is more than the limit {limit(setting)} (setting {setting})")
    if _value(req, "enable_hr"):
        check_hires_size(req, limit("api_max_width"), limit("api_max_height"))
        steps = _value(req, "hr_second_pass_steps")
        if steps and steps > limit("api_max_steps"):
            raise RequestError("hr_second_pass_steps", f"{steps} is more than the limit {limit('api_max_steps')} "
                                                       "(setting api_max_steps)")


def _value_or_default(req: Any, field: str) -> int:
    value = _value(req, field)
    if value is not None:
        return int(value)
    fields = getattr(type(req), "model_fields", None)  # a pydantic request knows its defaults
    return int(fields[field].default) if fields else 1


def work_of(req: Any) -> float:
    """Megapixel-steps: batch_size × n_iter × steps × width × height / 1e6, what one request costs the GPU
    (roughly proportional to its run time), plus Hires. fix's second pass. img2img's steps are counted in full:
    an upper bound."""
    work = 1.0
    for field in _WORK_FIELDS:
        work *= _value_or_default(req, field)
    return work / 1e6 + hires_work_of(req)


def hires_work_of(req: Any) -> float:
    """The hires pass's megapixel-steps: batch_size × n_iter × its steps (hr_second_pass_steps, 0: the first
    pass's) × the width × height it draws at / 1e6; 0 without enable_hr."""
    if not _value(req, "enable_hr"):
        return 0.0
    width, height = _hires_target(req)
    steps = _value(req, "hr_second_pass_steps") or _value_or_default(req, "steps")
    return _value_or_default(req, "batch_size") * _value_or_default(req, "n_iter") * steps * width * height / 1e6


def check_work(req: Any) -> None:
    """413 for a request that would hold the queue too long, though each field is within its own limit."""
    work, most = work_of(req), limit("api_max_work")
    if work > most:
        amount = f"{work:.2f}" if work < 100 else f"{work:,.0f}"  # 1.02 over a limit of 1 must not read "1"
        hires = ", hires pass included" if hires_work_of(req) else ""  # the API keeps 200 characters of a reason
        raise RequestError(None, f"This request asks for {amount} megapixel-steps (batch_size × n_iter × steps × "
                                 f"width × height / 1,000,000{hires}), more than the limit of {most:,} (setting "
                                 "api_max_work)", status=413)


# --- prompts --------------------------------------------------------------------------------------------------


_PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


def _texts(req: Any, field: str) -> list[str]:
    value = _value(req, field) or ""
    return [text or "" for text in value] if isinstance(value, list) else [value]  # scripts may give a list


def check_prompt_length(req: Any) -> None:
    """The API's limit on prompt text (api_max_prompt_chars); the UI's prompt boxes have their own."""
    most = limit("api_max_prompt_chars")
    for field in _PROMPT_FIELDS:
        for text in _texts(req, field):
            if len(text) > most:
                raise RequestError(field, f"{len(text)} characters is more than the limit {most} (setting "
                                          "api_max_prompt_chars)")


def check_prompts(req: Any) -> None:
    """Prompt text the engine can take: valid Unicode (JSON can carry a lone surrogate, "\\ud800", on which the
    tokenizer fails), brackets nested no deeper than the parsers go."""
    for field in _PROMPT_FIELDS:
        for text in _texts(req, field):
            problem = prompt_parser.prompt_text_problem(text)
            if problem is not None:
                raise RequestError(field, problem)
            if prompt_parser.bracket_depth(text) > prompt_parser.MAX_NESTING:
                raise RequestError(field, f"brackets nested more than {prompt_parser.MAX_NESTING} levels deep")


# --- fields that must take effect or be refused ---------------------------------------------------------------

# Features that do not exist here: refused when a request asks for them, never silently left out.
_UNAVAILABLE = {
    "latent_mask": "latent_mask is not supported in this version",
}
# A1111 settings of features that do not exist here: (the value that leaves them off, why any other is refused).
# Other unknown settings in override_settings are dropped: clients send many that change nothing here.
UNAVAILABLE_SETTINGS: dict[str, tuple[Any, str]] = {}
# Request fields that override a sampler setting of the same name (see sampler.REQUEST_OVERRIDES), plus eta;
# and token merging's ratios, bounded like their settings (0 to 0.9)
_SAMPLER_NUMBERS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond")
_SETTING_NUMBERS = (*_SAMPLER_NUMBERS, "token_merging_ratio", "token_merging_ratio_hr")


def _asked_for(value: Any) -> bool:
    """False for what leaves a feature off: None, False, 0, "" (an image or array asks for it)."""
    if value is None or isinstance(value, bool | int | float | str):
        return bool(value)
    return True


def check_unsupported(req: Any) -> None:
    for field, reason in _UNAVAILABLE.items():
        if _asked_for(_value(req, field)):
            raise RequestError(field, reason)
    if _asked_for(_value(req, "firstpass_image")) and not _value(req, "enable_hr"):
        raise RequestError("firstpass_image", "firstpass_image is the first pass of Hires. fix: it needs enable_hr")


def _setting_range(field: str) -> tuple[float, float | None]:
    # a request's s_churn is the setting s_churn for one job: same range, so its infotext pastes back
    info = shared.opts.data_labels.get(field)
    low, high = info.bounds() if info is not None else (None, None)
    return low or 0, high


def check_sampler_params(req: Any) -> None:
    for field in _SETTING_NUMBERS:
        value = _value(req, field)
        if value is None:
            continue
        low, high = _setting_range(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
            raise RequestError(field, f"{value!r} is not a number of {low:g} or more")
        if high is not None and value > high:
            raise RequestError(field, f"{value:g} is more than {high:g}, the most the setting {field} takes")
    discretize = _value(req, "ddim_discretize")
    if discretize and discretize not in DDIM_DISCRETIZE:
        raise RequestError("ddim_discretize", f"{discretize!r} is not one of: {', '.join(DDIM_DISCRETIZE)}")


def check_fields(req: Any) -> None:
    """Every optional field either takes effect or is refused by name."""
    check_unsupported(req)
    check_face_restoration(req)
    check_sampler_params(req)
    check_hires(req)


def check_face_restoration(req: Any) -> None:
    """restore_faces (else the setting face_restoration) needs the chosen restorer's model file."""
    from modules import face_restoration

    if not face_restoration.wanted(req):
        return
    try:
        face_restoration.find()
    except face_restoration.FaceRestorationError as e:
        raise RequestError("restore_faces", str(e)) from e


# --- names of things that must exist --------------------------------------------------------------------------


def _known_sampler(name: str) -> bool:
    # "DPM++ 2M Karras" (sampler + schedule label, from before A1111 1.9) is still accepted
    return sampler_registry.find_sampler_config(name) is not None or any(
        name.endswith(" " + s.label) and sampler_registry.find_sampler_config(name[: -len(s.label) - 1]) is not None
        for s in schedulers)


def check_sampler(req: Any) -> tuple[str, str | None]:
    """(sampler name, scheduler): `sampler_name`, else `sampler_index` (the API's legacy name, or a script's
    index into the sampler list), else Euler."""
    name, index = _value(req, "sampler_name"), _value(req, "sampler_index")
    if not name and isinstance(index, int) and not isinstance(index, bool):
        listed = sampler_registry.samplers
        if not 0 <= index < len(listed):
            raise RequestError("sampler_index", f"there is no sampler number {index} (0 to {len(listed) - 1})")
        name = listed[index].name
    field = "sampler_name" if _value(req, "sampler_name") else "sampler_index"
    name = name or index or "Euler"
    if not _known_sampler(str(name)):
        raise RequestError(field, f"unknown sampler {name!r}")
    scheduler = _value(req, "scheduler")
    if scheduler and find_scheduler(scheduler) is None:
        raise RequestError("scheduler", f"unknown scheduler {scheduler!r}")
    return str(name), scheduler


def check_checkpoint(name: str, field: Field) -> None:
    from modules.models import registry

    if registry.get_closet_checkpoint_match(name) is None:
        raise RequestError(field, f"Checkpoint not found: {name!r}")


def check_refiner(req: Any) -> None:
    name = _value(req, "refiner_checkpoint")
    if name and name != "None":
        check_checkpoint(str(name), "refiner_checkpoint")


# --- Hires. fix -----------------------------------------------------------------------------------------------


def _hires_target(req: Any) -> tuple[int, int]:
    from modules import hires

    class Sizes:  # the request's fields with their defaults filled in (an API request may hold nulls)
        width = _value(req, "width") or 512
        height = _value(req, "height") or 512
        hr_scale = _value(req, "hr_scale") or 2.0
        hr_resize_x = _value(req, "hr_resize_x") or 0
        hr_resize_y = _value(req, "hr_resize_y") or 0

    target = hires.target_resolution(Sizes)
    return target.width, target.height


def check_hires_size(req: Any, most_w: int, most_h: int) -> None:
    width, height = _hires_target(req)
    field = "hr_scale" if not _value(req, "hr_resize_x") and not _value(req, "hr_resize_y") else "hr_resize_x"
    if width > most_w or height > most_h:
        raise RequestError(field, f"the hires pass would draw {width}x{height}, more than the limit "
                                  f"{most_w}x{most_h} (settings api_max_width, api_max_height)")


def check_hires(req: Any) -> None:
    """The Hires. fix fields, when enable_hr is on: names that exist, numbers in range."""
    from modules import hires
    from modules.models import registry

    if not _value(req, "enable_hr"):
        return
    scale = _value(req, "hr_scale")
    if scale is not None and (isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0):
        raise RequestError("hr_scale", f"{scale!r} is not a number above 0")
    for field in ("hr_resize_x", "hr_resize_y", "hr_second_pass_steps"):
        value = _value(req, field)
        if value is not None and value < 0:
            raise RequestError(field, f"must be 0 or more, got {value}")
    width, height = _hires_target(req)
    if width < 64 or height < 64:
        raise RequestError("hr_scale" if not _value(req, "hr_resize_x") and not _value(req, "hr_resize_y")
                           else "hr_resize_x", f"the hires pass would draw {width}x{height}: at least 64x64")
    strength = _value(req, "denoising_strength")
    if strength is not None and not (isinstance(strength, int | float) and 0 <= strength <= 1):
        raise RequestError("denoising_strength", f"{strength!r} is not a number from 0 to 1")
    cfg = _value(req, "hr_cfg")
    if cfg is not None and not (isinstance(cfg, int | float) and math.isfinite(cfg) and cfg >= 0):
        raise RequestError("hr_cfg", f"{cfg!r} is not a number of 0 or more")
    upscaler = _value(req, "hr_upscaler")
    names = [u.name for u in shared.sd_upscalers]
    if upscaler and upscaler not in shared.latent_upscale_modes and upscaler not in names:
        raise RequestError("hr_upscaler", f"unknown upscaler {upscaler!r}; one of: "
                                          f"{', '.join([*shared.latent_upscale_modes, *names])}")
    sampler = _value(req, "hr_sampler_name")
    if sampler and sampler != hires.SAME_SAMPLER and sampler_registry.find_sampler_config(sampler) is None:
        raise RequestError("hr_sampler_name", f"unknown sampler {sampler!r}")
    scheduler = _value(req, "hr_scheduler")
    if scheduler and scheduler != hires.SAME_SCHEDULER and find_scheduler(scheduler) is None:
        raise RequestError("hr_scheduler", f"unknown scheduler {scheduler!r}")
    checkpoint = _value(req, "hr_checkpoint_name")
    if checkpoint and checkpoint != hires.SAME_CHECKPOINT and registry.get_closet_checkpoint_match(checkpoint) is None:
        raise RequestError("hr_checkpoint_name", f"Checkpoint not found: {checkpoint!r}")


# --- settings -------------------------------------------------------------------------------------------------


def _unchangeable(key: str, value: Any, *, is_api: bool) -> str | None:
    """Why `key` may not be set to `value` here, or None. Setting a restricted key to its current value is
    allowed: clients POST back the options they read."""
    if value == shared.opts.data.get(key, shared.opts.get_default(key)):
        return None
    if is_api and shared.opts.data_labels[key].restrict_api:
        return "this setting cannot be changed through the API"
    if key in shared.opts.restricted_opts and getattr(shared.cmd_opts, "hide_ui_dir_config", False):
        return "this setting cannot be changed: the server runs with --hide-ui-dir-config"
    return None


def check_setting(key: str, value: Any, field: Field, *, is_api: bool = False) -> Any:
    """The value as the setting stores it (`Options.validate`: type, range, choices, as the Settings page checks
    it); refused naming the field for a value it cannot take, that names nothing that exists, or for a setting
    this door may not change."""
    from modules.models import vae_registry

    try:
        value = shared.opts.validate(key, value)
    except SettingValueError as e:
        raise RequestError(field, e.reason) from None
    reason = _unchangeable(key, value, is_api=is_api)
    if reason is not None:
        raise RequestError(field, reason)
    if key == "sd_model_checkpoint" and value is not None:
        check_checkpoint(str(value), field)
    elif key == "sd_vae" and value is not None and str(value) not in vae_registry.vae_option_names():
        raise RequestError(field, f"VAE not found: {value!r}")
    return value



def _is_off(value: Any, off: Any) -> bool:
    try:
        return float(value) == off  # "0.0" from a text box is off too
    except (TypeError, ValueError):
        return value == off


def check_override_settings(settings: dict[str, Any] | None, *, is_api: bool = False) -> dict[str, Any]:
    """The override settings to apply. Unknown keys are dropped, as A1111's UI does (clients send settings of
    A1111 features we lack), unless they ask for a feature that is not here (UNAVAILABLE_SETTINGS); nulls are
    dropped too; known keys must have a usable value."""
    kept = {}
    for key, value in (settings or {}).items():
        if value is None:
            continue  # null overrides nothing (the engine would take it for a value)
        if key in UNAVAILABLE_SETTINGS and not _is_off(value, UNAVAILABLE_SETTINGS[key][0]):
            raise RequestError(("override_settings", key), UNAVAILABLE_SETTINGS[key][1])
        if key not in shared.opts.data_labels:
            log.info("override_settings: ignoring unknown setting %r", key)
            continue
        kept[key] = check_setting(key, value, ("override_settings", key), is_api=is_api)
    return kept


def settings_that_fit(settings: dict[str, Any], *, is_api: bool = False) -> dict[str, Any]:
    """Override settings taken from pasted infotext: those that do not fit here (a VAE or model we do not
    have, a feature we lack) are dropped instead of refusing the request, as the UI's paste does."""
    kept = {}
    for key, value in settings.items():
        try:
            kept.update(check_override_settings({key: value}, is_api=is_api))
        except RequestError as e:
            log.info("infotext: not applying %s=%r (%s)", key, value, e)
    return kept
