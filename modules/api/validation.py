"""Checks of a generation request against what exists and what the admin allows, before it is queued.

Each failure is an `ApiError` 422 naming the field, so a client learns what to fix and never gets a 500 or a
failed job for input we could have refused up front. Limits are the `api_max_*` settings (restrict_api: a
client cannot raise them). A request whose fields are each within limits but that asks for too much work in all
(`api_max_work`, in megapixel-steps) is a 413.
"""

from __future__ import annotations

import logging
from typing import Any

from modules import prompt_parser, shared
from modules.api import models
from modules.api.errors import ApiError, invalid
from modules.engine.sampling.registry import find_sampler_config
from modules.engine.sampling.schedules import find_scheduler, schedulers
from modules.models import registry, vae_registry
from modules.options import SettingValueError

log = logging.getLogger(__name__)

_LIMIT_DEFAULTS = {
    "api_max_width": 4096, "api_max_height": 4096, "api_max_steps": 500, "api_max_batch_size": 16,
    "api_max_n_iter": 100, "api_max_init_images": 16, "api_max_work": 2000,
}  # fmt: skip
_WORK_FIELDS = ("batch_size", "n_iter", "steps", "width", "height")


def limit(name: str) -> int:
    return int(getattr(shared.opts, name, _LIMIT_DEFAULTS[name]))


def _at_most(req: Any, field: str, setting: str) -> None:
    value = getattr(req, field, None)
    if value is not None and value > limit(setting):
        raise invalid(field, f"{value} is more than the limit {limit(setting)} (setting {setting})")


def check_limits(req: models.GenerationRequest) -> None:
    for field, setting in (("width", "api_max_width"), ("height", "api_max_height"), ("steps", "api_max_steps"),
                           ("batch_size", "api_max_batch_size"), ("n_iter", "api_max_n_iter"),
                           ("seed_resize_from_w", "api_max_width"), ("seed_resize_from_h", "api_max_height")):
        _at_most(req, field, setting)
    for field in ("width", "height"):
        value = getattr(req, field)
        if value is not None and value % 8:
            raise invalid(field, f"{value} is not a multiple of 8")


def _value_or_default(req: models.GenerationRequest, field: str) -> int:
    # an explicit null means the field's default, as it does for the engine
    value = getattr(req, field, None)
    return int(value if value is not None else type(req).model_fields[field].default)


def work_of(req: models.GenerationRequest) -> float:
    """Megapixel-steps: batch_size × n_iter × steps × width × height / 1e6, what one request costs the GPU
    (roughly proportional to its run time). img2img's steps are counted in full: an upper bound."""
    work = 1.0
    for field in _WORK_FIELDS:
        work *= _value_or_default(req, field)
    return work / 1e6


def check_work(req: models.GenerationRequest) -> None:
    """413 for a request that would hold the queue too long, though each field is within its own limit."""
    work, most = work_of(req), limit("api_max_work")
    if work > most:
        amount = f"{work:.2f}" if work < 100 else f"{work:,.0f}"  # 1.02 over a limit of 1 must not read "1"
        raise ApiError(413, f"This request asks for {amount} megapixel-steps (batch_size × n_iter × steps × "
                            f"width × height / 1,000,000), more than the limit of {most:,} (setting api_max_work)")


def check_prompts(req: models.GenerationRequest) -> None:
    for field in ("prompt", "negative_prompt"):
        text = getattr(req, field) or ""
        if prompt_parser.bracket_depth(text) > prompt_parser.MAX_NESTING:
            raise invalid(field, f"brackets nested more than {prompt_parser.MAX_NESTING} levels deep")


def check_unsupported(req: models.GenerationRequest) -> None:
    """Features that do not exist yet are refused by name rather than silently ignored."""
    if getattr(req, "enable_hr", False):
        raise invalid("enable_hr", "Hires. fix is not available in this version")
    if req.restore_faces:
        raise invalid("restore_faces", "face restoration is not available in this version")
    if getattr(req, "latent_mask", None):
        raise invalid("latent_mask", "latent_mask is not supported in this version")


def _known_sampler(name: str) -> bool:
    # "DPM++ 2M Karras" (sampler + schedule label, from before A1111 1.9) is still accepted, as processing does
    return find_sampler_config(name) is not None or any(
        name.endswith(" " + s.label) and find_sampler_config(name[: -len(s.label) - 1]) is not None
        for s in schedulers)


def check_sampler(req: models.GenerationRequest) -> tuple[str, str | None]:
    """(sampler name, scheduler) to run with: `sampler_name`, else the legacy `sampler_index` (default Euler)."""
    field = "sampler_name" if req.sampler_name else "sampler_index"
    name = req.sampler_name or req.sampler_index or "Euler"
    if not _known_sampler(name):
        raise invalid(field, f"Sampler not found: {name!r}")
    if req.scheduler and find_scheduler(req.scheduler) is None:
        raise invalid("scheduler", f"Scheduler not found: {req.scheduler!r}")
    return name, req.scheduler


def check_checkpoint(name: str, field: str | tuple[str, ...]) -> None:
    if registry.get_closet_checkpoint_match(name) is None:
        raise invalid(field, f"Checkpoint not found: {name!r}")


def check_refiner(req: models.GenerationRequest) -> None:
    if req.refiner_checkpoint and req.refiner_checkpoint != "None":
        check_checkpoint(req.refiner_checkpoint, "refiner_checkpoint")


def check_setting(key: str, value: Any, field: tuple[str, ...]) -> Any:
    """The value as the setting stores it (`Options.validate`: type, range, choices, as the Settings page checks
    it); 422 naming the field for a value it cannot take or that names nothing that exists."""
    try:
        value = shared.opts.validate(key, value)
    except SettingValueError as e:
        raise invalid(field, e.reason) from None
    if key == "sd_model_checkpoint" and value is not None:
        check_checkpoint(str(value), field)
    elif key == "sd_vae" and value is not None and str(value) not in vae_registry.vae_option_names():
        raise invalid(field, f"VAE not found: {value!r}")
    return value


def check_override_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The override settings to apply. Unknown keys are dropped, as processing and A1111's UI do (clients send
    settings of A1111 features we lack), and so are nulls; known ones must have a usable value."""
    kept = {}
    for key, value in (settings or {}).items():
        if value is None:
            continue  # null overrides nothing (the engine would take it for a value)
        if key not in shared.opts.data_labels:
            log.info("override_settings: ignoring unknown setting %r", key)
            continue
        kept[key] = check_setting(key, value, ("override_settings", key))
    return kept


def settings_that_fit(settings: dict[str, Any]) -> dict[str, Any]:
    """Override settings taken from pasted infotext: those that do not fit here (a VAE or model we do not
    have) are dropped instead of refusing the request, as the UI's paste does."""
    kept = {}
    for key, value in settings.items():
        try:
            kept.update(check_override_settings({key: value}))
        except Exception as e:  # an ApiError: this one simply does not apply here
            log.info("infotext: not applying %s=%r (%s)", key, value, e)
    return kept
