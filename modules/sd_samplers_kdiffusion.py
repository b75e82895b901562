"""A1111 compatibility: `modules.sd_samplers_kdiffusion`, where extensions get the k-diffusion sampler list
and the class their sampler constructors return.

    from modules import sd_samplers, sd_samplers_common
    from modules.sd_samplers_kdiffusion import KDiffusionSampler

    def sample_my(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0): ...

    d = sd_samplers_common.SamplerData("My sampler", lambda model: KDiffusionSampler(sample_my, model), ["my"], {})
    sd_samplers.all_samplers.append(d)
    sd_samplers.all_samplers_map[d.name] = d
    sd_samplers.set_samplers()

`KDiffusionSampler(funcname, sd_model, options=None)` takes a k-diffusion style function or the name of a
built-in one ("sample_euler", "sample_dpmpp_2m", ...); the function contract is in
`modules.engine.sampling.registry`. A1111's own sampling methods (`sample(p, x, conditioning, ...)`) are not
part of it: the engine drives the sampler, so subclasses overriding those are not called.
"""

from __future__ import annotations

from modules.engine.sampling.registry import (
    KDiffusionSampler,
    SamplerData,
    sampler_extra_params,
    samplers_data_k_diffusion,
    samplers_k_diffusion,
)

k_diffusion_samplers_map: dict[str, SamplerData] = {x.name: x for x in samplers_data_k_diffusion}

__all__ = [
    "KDiffusionSampler",
    "k_diffusion_samplers_map",
    "sampler_extra_params",
    "samplers_data_k_diffusion",
    "samplers_k_diffusion",
]
