"""A1111 compatibility: `modules.sd_samplers` is the sampler registry extensions import.

Everything here is the engine's registry itself (same list and dict objects), so
`sd_samplers.all_samplers.append(d); sd_samplers.all_samplers_map[d.name] = d; sd_samplers.set_samplers()`
registers a sampler for the whole program, exactly as in A1111.
"""

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
    set_samplers,
    visible_sampler_names,
    visible_samplers,
)

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
