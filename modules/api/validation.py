"""The API's door to the one request check (`modules.request_validation`), before a request is queued.

Each function runs its part of that check and turns a refusal into an `ApiError`: 422 naming the field, so a
client learns what to fix and never gets a 500 or a failed job for input we could have refused up front, or 413
for a request whose fields are each within limits but that asks for too much work in all (`api_max_work`, in
megapixel-steps). Limits are the `api_max_*` settings (restrict_api: a client cannot raise them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from modules import request_validation as rv
from modules.api import models
from modules.api.errors import ApiError, invalid

T = TypeVar("T")

limit = rv.limit


def check_image_list(field: str, encoded: list[str], inner: tuple = ()) -> list[Any]:
    """Several base64 uploads of one field: at most `api_max_init_images`, each checked from its header
    (`inner` is the path inside an item, e.g. ("data",) for the Extras batch's {data, name})."""
    from modules.api import images

    most = limit("api_max_init_images")
    if len(encoded) > most:
        raise invalid(field, f"{len(encoded)} images is more than {most} (setting api_max_init_images)")
    return [images.check_base64_image(text, (field, i, *inner)) for i, text in enumerate(encoded)]
work_of = rv.work_of


def _as_api_error(error: rv.RequestError) -> ApiError:
    if error.field is None:
        return ApiError(error.status, error.reason)
    if error.status == 422:
        return invalid(error.field, error.reason)
    return ApiError(error.status, error.reason, error.field)


def _checked(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return check(*args, **kwargs)
    except rv.RequestError as e:
        raise _as_api_error(e) from None


def check_limits(req: models.GenerationRequest) -> None:
    """The admin's api_max_* limits, then the size and counts every request must have."""
    _checked(rv.check_api_limits, req)
    _checked(rv.check_shape, req)


def check_work(req: models.GenerationRequest) -> None:
    _checked(rv.check_work, req)


def check_prompt_text(req: models.GenerationRequest) -> None:
    """Prompt text the engine can take: at most api_max_prompt_chars long, valid Unicode, bounded nesting."""
    _checked(rv.check_prompt_length, req)
    _checked(rv.check_prompts, req)


def check_prompts(req: models.GenerationRequest) -> None:
    check_prompt_text(req)


def check_unsupported(req: models.GenerationRequest) -> None:
    """Every optional field takes effect or is refused by name: features that do not exist, sampler params."""
    _checked(rv.check_fields, req)


def check_sampler(req: models.GenerationRequest) -> tuple[str, str | None]:
    """(sampler name, scheduler) to run with: `sampler_name`, else the legacy `sampler_index` (default Euler)."""
    return _checked(rv.check_sampler, req)


def check_refiner(req: models.GenerationRequest) -> None:
    _checked(rv.check_refiner, req)


def check_setting(key: str, value: Any, field: tuple[str, ...]) -> Any:
    """The value as setting `key` stores it; 422 naming the field for one it cannot take over the API."""
    return _checked(rv.check_setting, key, value, field, is_api=True)


def check_override_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    return _checked(rv.check_override_settings, settings, is_api=True)


def settings_that_fit(settings: dict[str, Any]) -> dict[str, Any]:
    return rv.settings_that_fit(settings, is_api=True)

