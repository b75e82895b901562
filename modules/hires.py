"""A1111's Hires. fix: the second pass of txt2img at a larger size.

After the first pass, the batch's latents are enlarged (in latent space with one of `shared.latent_upscale_modes`,
or decoded, enlarged by a named upscaler and encoded again), then redrawn by img2img from the same seeds at
`denoising_strength`, optionally with another sampler, schedule, CFG scale, prompt or checkpoint.
`modules.processing` calls `init` once per job (from `StableDiffusionProcessingTxt2Img.init`) and `sample_hr_pass`
once per batch, before decode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from modules import extra_networks, images, shared
from modules.engine import generate, inpainting
from modules.engine.generate import BatchRequest

DEFAULT_DENOISING = 0.7  # the UI's slider default; used when a script or API client leaves it unset
SAME_CHECKPOINT = "Use same checkpoint"
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
REFINER_PASSES = ("first pass", "second pass", "both passes")  # A1111's option hires_fix_refiner_pass


def latent_modes() -> dict[str, dict[str, Any]]:
    return shared.latent_upscale_modes


@dataclass
class Target:
    """Where the second pass draws: the enlarged size, and how many latent pixels to crop (Hires resize)."""

    width: int
    height: int
    truncate_x: int = 0
    truncate_y: int = 0


def target_resolution(p: Any, factor: int = 8) -> Target:
    """A1111's rules: "Upscale by" when both resize sides are 0; one side given keeps the aspect ratio; both
    given scale to cover them, then crop the excess (in latent pixels) from both sides."""
    if not p.hr_resize_x and not p.hr_resize_y:
        return Target(int(p.width * p.hr_scale), int(p.height * p.hr_scale))
    if not p.hr_resize_y:
        return Target(p.hr_resize_x, p.hr_resize_x * p.height // p.width)
    if not p.hr_resize_x:
        return Target(p.hr_resize_y * p.width // p.height, p.hr_resize_y)
    if p.width / p.height < p.hr_resize_x / p.hr_resize_y:
        w, h = p.hr_resize_x, p.hr_resize_x * p.height // p.width
    else:
        w, h = p.hr_resize_y * p.width // p.height, p.hr_resize_y
    return Target(w, h, (w - p.hr_resize_x) // factor, (h - p.hr_resize_y) // factor)


def _is_same(value: str | None, same: str) -> bool:
    return not value or value == same


def init(p: Any) -> None:
    """Check the hires fields (unknown names are refused by name), fix the target size, write the infotext keys
    A1111 writes, and build the hires prompts. Runs after the scripts' `process`, on the final prompts."""
    from modules import sd_models
    from modules.engine.sampling.registry import find_sampler_config

    if p.denoising_strength is None:
        p.denoising_strength = DEFAULT_DENOISING
    extra = p.extra_generation_params
    extra["Denoising strength"] = p.denoising_strength

    p.hr_checkpoint_info = None
    if not _is_same(p.hr_checkpoint_name, SAME_CHECKPOINT):
        info = sd_models.get_closet_checkpoint_match(str(p.hr_checkpoint_name))
        if info is None:
            raise ValueError(f"hr_checkpoint_name: checkpoint not found: {p.hr_checkpoint_name!r}")
        p.hr_checkpoint_info = info
        extra["Hires checkpoint"] = info.short_title

    if _is_same(p.hr_sampler_name, SAME_SAMPLER):
        p.hr_sampler_name = None
    elif find_sampler_config(p.hr_sampler_name) is None:
        raise ValueError(f"hr_sampler_name: unknown sampler {p.hr_sampler_name!r}")
    elif p.hr_sampler_name != p.sampler_name:
        extra["Hires sampler"] = p.hr_sampler_name
    if _is_same(p.hr_scheduler, SAME_SCHEDULER):
        p.hr_scheduler = None
    elif p.hr_scheduler != p.scheduler:
        extra["Hires schedule type"] = p.hr_scheduler

    p.latent_scale_mode = latent_modes().get(p.hr_upscaler or shared.latent_upscale_default_mode)
    if p.latent_scale_mode is None and not any(x.name == p.hr_upscaler for x in shared.sd_upscalers):
        raise ValueError(f"hr_upscaler: could not find upscaler named {p.hr_upscaler!r}")

    target = target_resolution(p)
    p.hr_upscale_to_x, p.hr_upscale_to_y = target.width, target.height
    p.truncate_x, p.truncate_y = target.truncate_x, target.truncate_y
    if not p.hr_resize_x and not p.hr_resize_y:
        extra["Hires upscale"] = p.hr_scale
    else:
        extra["Hires resize"] = f"{p.hr_resize_x}x{p.hr_resize_y}"
    if p.hr_second_pass_steps:
        extra["Hires steps"] = p.hr_second_pass_steps
    if p.hr_upscaler is not None:
        extra["Hires upscaler"] = p.hr_upscaler
    if p.hr_cfg is not None and float(p.hr_cfg) != float(p.cfg_scale):
        extra["Hires CFG Scale"] = p.hr_cfg

    _init_prompts(p)
    refiner_pass = _refiner_pass()
    if p.refiner_checkpoint and p.refiner_checkpoint != "None" and refiner_pass != "second pass":
        extra["Hires refiner"] = refiner_pass


def _init_prompts(p: Any) -> None:
    """An empty hires prompt is the first pass's prompt (after styles and scripts); a given one gets the styles.
    The infotext carries the hires prompt only for pictures where it differs (A1111's callables)."""
    from modules import processing

    total = len(p.all_prompts)
    if p.hr_prompt:
        p.all_hr_prompts = processing._prompt_list(p.hr_prompt, total)
    else:
        p.all_hr_prompts = list(p.all_prompts)
    if p.hr_negative_prompt:
        p.all_hr_negative_prompts = processing._prompt_list(p.hr_negative_prompt, total)
    else:
        p.all_hr_negative_prompts = list(p.all_negative_prompts)
    styles_db = getattr(shared, "prompt_styles", None)
    if styles_db is not None and p.styles:
        if p.hr_prompt:
            p.all_hr_prompts = [styles_db.apply_styles_to_prompt(x, p.styles) for x in p.all_hr_prompts]
        if p.hr_negative_prompt:
            p.all_hr_negative_prompts = [styles_db.apply_negative_styles_to_prompt(x, p.styles)
                                         for x in p.all_hr_negative_prompts]

    def differing(hr: list[str], first: list[str]) -> Callable[..., str | None]:
        def value(index: int = 0, **_: Any) -> str | None:
            return hr[index] if index < len(hr) and hr[index] != first[index] else None
        return value

    p.extra_generation_params["Hires prompt"] = differing(p.all_hr_prompts, p.all_prompts)
    p.extra_generation_params["Hires negative prompt"] = differing(p.all_hr_negative_prompts,
                                                                   p.all_negative_prompts)


def _refiner_pass() -> str:
    value = shared.opts.data.get("hires_fix_refiner_pass", "second pass") if hasattr(shared.opts, "data") \
        else "second pass"
    return value if value in REFINER_PASSES else "second pass"


def first_pass_refiner(request: BatchRequest) -> None:
    """With hires fix the refiner finishes the passes A1111's option hires_fix_refiner_pass names."""
    if _refiner_pass() == "second pass":
        request.refiner = None


def load_checkpoint(p: Any, model: Any) -> Any:
    """The Hires checkpoint's model (None: the first pass's). It must share the first pass's latent space."""
    from modules import sd_models

    info = getattr(p, "hr_checkpoint_info", None)
    if info is None or info.filename == model.sd_checkpoint_info.filename:
        return None
    hr_model = sd_models.manager.load_auxiliary(info)
    if hr_model.latent_channels != model.latent_channels or hr_model.is_sdxl != model.is_sdxl:
        sd_models.manager.release_auxiliary(hr_model)
        raise ValueError(f"hr_checkpoint_name: {info.title} does not share the model's latent space "
                         f"({model.spec.display_name})")
    return hr_model


def _pixels_of(images_list: list[Image.Image], device: torch.device) -> torch.Tensor:
    return generate.from_pil([im.convert("RGB") for im in images_list]).to(device)


def _save_intermediate(p: Any, image: Image.Image, index: int) -> None:
    """A1111's option save_images_before_highres_fix: the first pass's picture, with suffix -before-highres-fix."""
    from modules import processing

    if p.do_not_save_samples or not processing._opt("save_images_before_highres_fix", False):
        return
    text = processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=p.iteration,
                                      position_in_batch=index)
    images.save_image(image, p.outpath_samples or processing._outdir(p.kind, True), "", p.seeds[index],
                      p.prompts[index], processing._opt("samples_format", "png"), info=text, p=p,
                      suffix="-before-highres-fix")


def _first_pass_pictures(p: Any, model: Any, latents: torch.Tensor | None) -> list[Image.Image]:
    if latents is None:
        return [p.firstpass_image.convert("RGB")] * len(p.seeds)
    return generate.to_pil(generate.vae_decode(model, latents))


def enlarge(p: Any, model: Any, latents: torch.Tensor | None) -> torch.Tensor:
    """The first pass's result at the target size, as scaled latents (cropped for Hires resize)."""
    factor = model.vae_scale_factor
    width, height = p.hr_upscale_to_x, p.hr_upscale_to_y
    mode = p.latent_scale_mode
    if mode is not None:
        if latents is None:  # the ✨ button / firstpass_image: encode the finished picture
            latents = generate.vae_encode(model, _pixels_of(_first_pass_pictures(p, model, None), model.device))
        elif processing_saves_intermediate(p):
            for i, image in enumerate(_first_pass_pictures(p, model, latents)):
                _save_intermediate(p, image, i)
        latents = torch.nn.functional.interpolate(latents, size=(height // factor, width // factor),
                                                  mode=mode["mode"], antialias=mode["antialias"])
    else:
        pictures = []
        for i, image in enumerate(_first_pass_pictures(p, model, latents)):
            if latents is not None:
                _save_intermediate(p, image, i)
            pictures.append(images.resize_image(0, image, width, height, upscaler_name=p.hr_upscaler))
        latents = generate.vae_encode(model, _pixels_of(pictures, model.device))
    ty, tx = p.truncate_y, p.truncate_x
    return latents[:, :, ty // 2: latents.shape[2] - (ty + 1) // 2, tx // 2: latents.shape[3] - (tx + 1) // 2]


def processing_saves_intermediate(p: Any) -> bool:
    from modules import processing

    return not p.do_not_save_samples and bool(processing._opt("save_images_before_highres_fix", False))


def _image_cond(model: Any, latents: torch.Tensor) -> torch.Tensor | None:
    """Inpainting models: A1111's conditioning with everything to repaint (the masked image is grey), the same
    for the latent and the pixel upscalers at the default inpainting_mask_weight of 1."""
    if not model.is_inpainting:
        return None
    factor = model.vae_scale_factor
    grey = torch.zeros(latents.shape[0], 3, latents.shape[2] * factor, latents.shape[3] * factor,
                       device=model.device)
    return inpainting.inpainting_model_conditioning(grey, None, lambda x: generate.vae_encode(model, (x + 1) / 2))


def _tags(data: dict[str, list[Any]]) -> dict[str, list[list[str]]]:
    return {kind: [params.items for params in found] for kind, found in data.items()}


def hr_request(p: Any, first: BatchRequest, latents: torch.Tensor, hr_model: Any | None,
               refiner: Any | None) -> BatchRequest:
    """The second pass's img2img request: the same seeds (so the same noise at the new size), the hires
    sampler, schedule, steps, CFG and prompts; extra networks re-activated when the hires prompt's tags differ."""
    model = hr_model or first.model
    latents = latents.to(model.device)
    factor = model.vae_scale_factor
    prompts, network_data = extra_networks.parse_prompts(p.hr_prompts)
    negatives = extra_networks.parse_prompts(p.hr_negative_prompts)[0]
    first_pass_networks = extra_networks.parse_prompts(p.prompts)[1]
    if not p.disable_extra_networks and _tags(network_data) != _tags(first_pass_networks):
        extra_networks.activate(p, network_data)
    uses_refiner = _refiner_pass() != "first pass"
    return dataclasses.replace(
        first, model=model, prompts=prompts, negative_prompts=negatives,
        sampler_name=p.hr_sampler_name or first.sampler_name, scheduler=p.hr_scheduler or first.scheduler,
        steps=p.hr_second_pass_steps or p.steps,
        cfg_scale=float(p.hr_cfg) if p.hr_cfg is not None else first.cfg_scale,
        width=latents.shape[3] * factor, height=latents.shape[2] * factor,
        init_latent=latents, denoising_strength=float(p.denoising_strength), fix_steps=True, mask=None, nmask=None,
        image_cond=_image_cond(model, latents), initial_noise_multiplier=1.0,
        refiner=refiner if uses_refiner else None, infotext_params={},
    )


def sample_hr_pass(p: Any, first: BatchRequest, latents: torch.Tensor | None, hr_model: Any | None,
                   refiner: Any | None, sample: Callable[[BatchRequest], tuple[torch.Tensor | None, bool]],
                   state: Any) -> tuple[torch.Tensor | None, bool]:
    """(latents at the hires size, stopped). An interrupted job keeps the first pass's result, as in A1111."""
    if state is not None and state.interrupted:
        return latents, True
    enlarged = enlarge(p, first.model, latents)
    request = hr_request(p, first, enlarged, hr_model, refiner)
    if p.scripts is not None and hasattr(p.scripts, "before_hr"):
        p.scripts.before_hr(p)
    if p.scripts is not None:
        p.scripts.process_before_every_sampling(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds)
    if state is not None:
        state.nextjob()
    result, stopped = sample(request)
    if result is None:
        return enlarged, stopped
    return result, stopped


# --- infotext -> fields ----------------------------------------------------------------------------------------


def _hr_enabled(d: dict[str, Any]) -> bool:
    # A1111's rule: a txt2img infotext with a denoising strength and a hires key is a hires fix picture
    return "Denoising strength" in d and any(k in d for k in ("Hires upscale", "Hires upscaler", "Hires resize-1"))


def _hr_sampler(d: dict[str, Any]) -> str | None:
    value = d.get("Hires sampler")
    return None if _is_same(value, SAME_SAMPLER) else value


def _hr_scheduler(d: dict[str, Any]) -> str | None:
    value = d.get("Hires schedule type")
    return None if _is_same(value, SAME_SCHEDULER) else value


def _hr_checkpoint(d: dict[str, Any]) -> str | None:
    value = d.get("Hires checkpoint")
    return None if _is_same(value, SAME_CHECKPOINT) else value


# (txt2img field, infotext key or function of the parsed infotext): A1111's paste table for Hires. fix.
PASTE_FIELDS: list[tuple[str, str | Callable[[dict[str, Any]], Any]]] = [
    ("enable_hr", lambda d: True if _hr_enabled(d) else None),
    ("denoising_strength", lambda d: d.get("Denoising strength") if _hr_enabled(d) else None),
    ("hr_scale", "Hires upscale"),
    ("hr_upscaler", "Hires upscaler"),
    ("hr_second_pass_steps", "Hires steps"),
    ("hr_resize_x", lambda d: d.get("Hires resize-1") if _hr_enabled(d) else None),
    ("hr_resize_y", lambda d: d.get("Hires resize-2") if _hr_enabled(d) else None),
    ("hr_checkpoint_name", _hr_checkpoint),
    ("hr_sampler_name", _hr_sampler),
    ("hr_scheduler", _hr_scheduler),
    ("hr_prompt", "Hires prompt"),
    ("hr_negative_prompt", "Hires negative prompt"),
    ("hr_cfg", "Hires CFG Scale"),
]
