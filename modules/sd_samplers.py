"""A1111 compatibility: `modules.sd_samplers` is the sampler registry extensions import.

The lists and dicts here are the engine's registry itself (same objects), so
`sd_samplers.all_samplers.append(d); sd_samplers.all_samplers_map[d.name] = d; sd_samplers.set_samplers()`
registers a sampler for the whole program, exactly as in A1111: the UI's dropdowns, /sdapi/v1/samplers,
generation and infotext all see it. What `d.constructor(model)` must return is described in
`modules.engine.sampling.registry` (in short: `sd_samplers_kdiffusion.KDiffusionSampler(function, model)`).
"""

from __future__ import annotations

from typing import Any

from modules import shared
from modules.engine.sampling import registry
from modules.engine.sampling.registry import (
    SamplerData,
    all_samplers,
    all_samplers_map,
    create_sampler,
    find_sampler_config,
    fix_p_invalid_sampler_and_scheduler,
    get_hr_sampler_and_scheduler,
    get_hr_sampler_from_infotext,
    get_hr_scheduler_from_infotext,
    get_sampler_and_scheduler,
    get_sampler_from_infotext,
    get_scheduler_from_infotext,
    register_sampler,
    samplers,
    samplers_for_img2img,
    samplers_hidden,
    samplers_map,
    visible_sampler_names,
    visible_samplers,
)


def _adopt(rebound: Any, engine: list[Any] | dict[str, Any]) -> None:
    # Extensions sometimes rebind instead of mutating (`sd_samplers.all_samplers_map = {...}`); copy such a
    # new object's contents into the engine's, which everything else holds.
    if rebound is engine:
        return
    if isinstance(engine, list):
        engine[:] = list(rebound)
    else:
        engine.clear()
        engine.update(rebound)


def _hidden_setting() -> list[str] | None:
    hidden = shared.opts.data.get("hide_samplers")
    return list(hidden) if hidden is not None else None


def set_samplers(hidden: list[str] | None = None) -> None:
    """A1111's: after `all_samplers` changed, rebuild `samplers`, `samplers_for_img2img` and `samplers_map`
    (lower-cased names and aliases), hiding those in the "hide_samplers" setting (or `hidden`, when given)."""
    global all_samplers, all_samplers_map, samplers, samplers_for_img2img, samplers_map
    _adopt(all_samplers, registry.all_samplers)
    _adopt(all_samplers_map, registry.all_samplers_map)
    registry.set_samplers(_hidden_setting() if hidden is None else hidden)  # also maps samplers that were appended but not put in the map
    all_samplers, all_samplers_map = registry.all_samplers, registry.all_samplers_map
    samplers, samplers_for_img2img, samplers_map = registry.samplers, registry.samplers_for_img2img, registry.samplers_map


__all__ = [
    "SamplerData",
    "all_samplers",
    "all_samplers_map",
    "create_sampler",
    "find_sampler_config",
    "fix_p_invalid_sampler_and_scheduler",
    "get_hr_sampler_and_scheduler",
    "get_hr_sampler_from_infotext",
    "get_hr_scheduler_from_infotext",
    "get_sampler_and_scheduler",
    "get_sampler_from_infotext",
    "get_scheduler_from_infotext",
    "register_sampler",
    "samplers",
    "samplers_for_img2img",
    "samplers_hidden",
    "samplers_map",
    "set_samplers",
    "visible_sampler_names",
    "visible_samplers",
]
