"""The request field `infotext`: values parsed from an infotext fill every field the client did not set.

This is A1111's `apply_infotext`: `parse_generation_parameters`, then its paste-field table (infotext key ->
API field) for the basic fields, then the settings the infotext carries go to `override_settings` unless
already there. The result is validated again, so a malformed value in the text is a 422 naming its field.
An infotext longer than `infotext_utils.MAX_INFOTEXT_CHARS` is a 422 naming `infotext`, before it is parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from modules import extra_networks, hires, infotext_utils, paths, shared
from modules.api import validation
from modules.api.errors import invalid
from modules.api.models import GenerationRequest
from modules.engine.sampling.registry import get_sampler_from_infotext, get_scheduler_from_infotext
from modules.networks import extra_network_lora

Getter = str | Callable[[dict[str, Any]], Any]

_MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]


def _styles(d: dict[str, Any]) -> Any:
    styles = d.get("Styles array")
    return styles if isinstance(styles, list) and styles else None


def _scheduler(d: dict[str, Any]) -> Any:
    return get_scheduler_from_infotext(d) if "Sampler" in d else None


def _only_with_mask(key: str, convert: Callable[[Any], Any] | None = None) -> Callable[[dict[str, Any]], Any]:
    # The parser fills "Masked content", "Inpaint area", ... with defaults even for unmasked images; A1111
    # writes "Mask blur" for every masked job, so it tells a real inpaint infotext apart.
    def get(d: dict[str, Any]) -> Any:
        if "Mask blur" not in d or key not in d:
            return None
        return convert(d[key]) if convert else d[key]

    return get


# (API field, infotext key or function of the parsed dict). The fields of A1111's paste tables with an api name.
COMMON_FIELDS: list[tuple[str, Getter]] = [
    ("prompt", "Prompt"),
    ("negative_prompt", "Negative prompt"),
    ("styles", _styles),
    ("steps", "Steps"),
    ("sampler_name", lambda d: get_sampler_from_infotext(d) if "Sampler" in d else None),
    ("scheduler", _scheduler),
    ("cfg_scale", "CFG scale"),
    ("width", "Size-1"),
    ("height", "Size-2"),
    ("batch_size", "Batch size"),
    ("seed", "Seed"),
    ("subseed", "Variation seed"),
    ("subseed_strength", "Variation seed strength"),
    ("seed_resize_from_w", "Seed resize from-1"),
    ("seed_resize_from_h", "Seed resize from-2"),
    ("refiner_checkpoint", "Refiner"),
    ("refiner_switch_at", "Refiner switch at"),
]

IMG2IMG_FIELDS: list[tuple[str, Getter]] = [
    ("denoising_strength", "Denoising strength"),
    ("image_cfg_scale", "Image CFG scale"),
    ("mask_blur", _only_with_mask("Mask blur")),
    ("inpainting_mask_invert", _only_with_mask("Mask mode", lambda v: 1 if v == "Inpaint not masked" else 0)),
    ("inpainting_fill", _only_with_mask("Masked content",
                                        lambda v: _MASKED_CONTENT.index(v) if v in _MASKED_CONTENT else None)),
    ("inpaint_full_res", _only_with_mask("Inpaint area", lambda v: v == "Only masked")),
    ("inpaint_full_res_padding", _only_with_mask("Masked area padding")),
]


def styles_db() -> Any:
    """`shared.prompt_styles`, created from styles.csv (or --styles-file) when nothing made it yet."""
    db = getattr(shared, "prompt_styles", None)
    if db is None:
        from modules.styles import StyleDatabase

        files = list(getattr(shared.cmd_opts, "styles_file", None) or []) or [paths.data_file("styles.csv")]
        shared.prompt_styles = db = StyleDatabase(files)
    return db


def parse(text: str) -> dict[str, Any]:
    params = infotext_utils.parse_generation_parameters(text, extract_styles=styles_db().extract_styles_from_prompt)
    extra_network_lora.ensure_registered()
    extra_networks.infotext_pasted(text, params)  # a renamed LoRA is found by its hash, as on the page
    return params


def _override_settings(params: dict[str, Any]) -> dict[str, Any]:
    # A1111's `disable_weights_auto_swap` (default on): a pasted "Model hash" does not switch the checkpoint.
    skip = ["Model hash"] if getattr(shared.opts, "disable_weights_auto_swap", True) else []
    found = {name: value for _, name, value in infotext_utils.get_override_settings(params, skip_fields=skip)}
    return validation.settings_that_fit(found)


def apply(req: GenerationRequest, kind: str) -> GenerationRequest:
    """A new request: the explicit fields of `req`, and the infotext's values for the others."""
    if not req.infotext:
        return req
    if infotext_utils.infotext_too_long(req.infotext):  # before parsing: txt2img parses on the event loop
        raise invalid("infotext", f"too long: {infotext_utils.too_long_message(len(req.infotext))}")
    params = parse(req.infotext)
    explicit = req.model_dump(exclude_unset=True)
    filled: dict[str, Any] = {}
    kind_fields = IMG2IMG_FIELDS if kind == "img2img" else hires.PASTE_FIELDS
    for field, getter in COMMON_FIELDS + kind_fields:
        if field in explicit or field not in type(req).model_fields:
            continue
        value = getter(params) if callable(getter) else params.get(getter)
        if value is not None:
            filled[field] = value
    overrides = dict(explicit.get("override_settings") or {})
    for key, value in _override_settings(params).items():
        overrides.setdefault(key, value)
    data = {**filled, **explicit}
    if overrides:
        data["override_settings"] = overrides
    try:
        return type(req).model_validate(data)
    except ValidationError as e:
        # name the infotext as the source: the client did not send these values itself
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise invalid("infotext", f"{loc}: {first.get('msg')}") from None
