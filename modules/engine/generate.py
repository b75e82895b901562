"""One denoising run for a batch: conditioning, noise, sampler, CFG, and VAE encode/decode.

txt2img, img2img and inpainting all come through `sample_batch`; they differ only in where the latent starts
(pure noise, or an encoded image noised to the first sigma) and in the masks and image conditioning they pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules import prompt_parser
from modules.engine import cond_cache, vae_tiling
from modules.engine.cfg_denoiser import CFGDenoiser, StepConditioning
from modules.engine.conditioning import PromptEncoder
from modules.engine.sampling.registry import create_sampler
from modules.engine.sampling.sampler import ScheduleSettings
from modules.engine.unet_call import UNetHook, UNetHookContext, UNetInput, unet_call
from modules.models import offload
from modules.models.sd_model import StableDiffusionModel

log = logging.getLogger(__name__)

REFINER_AESTHETIC = {"positive": 6.0, "negative": 2.5}  # A1111's sdxl_refiner_*_aesthetic_score defaults


@dataclass
class BatchRequest:
    """Everything one sampling run needs, independent of where it came from."""

    model: StableDiffusionModel
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    subseeds: list[int]
    subseed_strength: float = 0.0
    seed_resize_from_h: int = 0
    seed_resize_from_w: int = 0
    sampler_name: str = "Euler"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    clip_skip: int = 1
    emphasis: str = "Original"
    settings: dict[str, Any] = field(default_factory=dict)  # sampler parameters (eta_*, s_*, sigma_*, rho ...)
    eta: float | None = None
    # img2img / inpainting
    init_latent: torch.Tensor | None = None
    denoising_strength: float | None = None
    # run exactly `steps` steps on a schedule stretched to steps / strength (A1111's hires pass, and img2img with
    # the setting img2img_fix_steps); otherwise int(steps * strength) + 1 of the normal schedule
    fix_steps: bool = False
    mask: torch.Tensor | None = None  # 1 = keep the original (A1111's p.mask)
    nmask: torch.Tensor | None = None  # 1 = new content
    image_cond: torch.Tensor | None = None
    initial_noise_multiplier: float = 1.0
    # SDXL refiner: a second model that takes over after `refiner_switch_at` of the steps
    refiner: StableDiffusionModel | None = None
    refiner_switch_at: float = 1.0
    # features that fill the UNet's typed input at every evaluation (ControlNet, adapters), in order
    unet_hooks: list[UNetHook] = field(default_factory=list)
    # output
    infotext_params: dict[str, Any] = field(default_factory=dict)


def sdxl_time_ids(model: StableDiffusionModel, width: int, height: int, negative: bool, batch: int) -> torch.Tensor:
    """SDXL's size conditioning: original size, crop (0, 0), target size; the refiner takes an aesthetic score."""
    if model.is_sdxl_refiner:
        score = REFINER_AESTHETIC["negative" if negative else "positive"]
        ids = [height, width, 0, 0, score]
    else:
        ids = [height, width, 0, 0, height, width]
    return torch.tensor([ids], dtype=torch.float32, device=model.device).repeat(batch, 1)


def make_noise(request: BatchRequest, shape: tuple[int, ...], uses_ensd: bool) -> Any:
    from modules import rng

    ensd = int(request.settings.get("eta_noise_seed_delta", 0) or 0) if uses_ensd else 0
    return rng.ImageRNG(shape, request.seeds, subseeds=request.subseeds, subseed_strength=request.subseed_strength,
                        seed_resize_from_h=request.seed_resize_from_h, seed_resize_from_w=request.seed_resize_from_w,
                        device=request.model.device, eta_noise_seed_delta=ensd)


def build_denoiser(model: StableDiffusionModel, request: BatchRequest, sampler: Any,
                   should_stop: Callable[[], bool]) -> CFGDenoiser:
    """Conditioning for `model` (prompt schedules, SDXL size ids) wrapped in a CFG denoiser over its UNet."""
    batch = len(request.prompts)
    encoder = PromptEncoder(model, clip_skip=request.clip_skip, emphasis=request.emphasis,
                            comma_backtrack=int(request.settings.get("comma_padding_backtrack", 20)))
    # Same prompts, model, weights, embeddings and settings as the last job in this pass: its conditioning again
    # (A1111's cached_c / cached_uc). One slot per kind of pass, so the hires pass and the refiner keep their own.
    slot = ("base" if model is request.model else "refiner") + ("" if request.init_latent is None else "/img2img")
    cache = cond_cache.PassConditioning(slot, model, encoder, request.steps, request.width, request.height)
    with torch.no_grad():
        cond = cache.positive(request.prompts, lambda: prompt_parser.get_multicond_learned_conditioning(
            encoder.encode, prompt_parser.SdConditioning(request.prompts, width=request.width, height=request.height),
            request.steps))
        uncond = cache.negative(request.negative_prompts, lambda: prompt_parser.get_learned_conditioning(
            encoder.encode, prompt_parser.SdConditioning(request.negative_prompts, is_negative_prompt=True,
                                                         width=request.width, height=request.height), request.steps))
    conditioning = StepConditioning(cond=cond, uncond=uncond, cfg_scale=request.cfg_scale,
                                    image_cond=request.image_cond if model is request.model else None)
    if model.is_sdxl:
        conditioning.added_cond = {"time_ids": sdxl_time_ids(model, request.width, request.height, False, batch)}
        conditioning.added_uncond = {"time_ids": sdxl_time_ids(model, request.width, request.height, True, batch)}
    unet = model.unet
    # a graph reads fixed addresses: under --medvram the UNet stays put during each call (its graphs go when it
    # leaves); under --lowvram its layers move within the call. The compiler is for plainly placed models.
    use_graphs = bool(request.settings.get("cuda_graphs", True)) and offload.graphs_allowed(model)
    compiled = bool(request.settings.get("compile_unet", False)) and getattr(model, "offload", None) is None
    unet_hooks = list(request.unet_hooks) if model is request.model else []

    def model_fn(x, t, context, added=None, image_cond=None, uncond_rows=None, step=0, total_steps=0):
        inp = UNetInput(x, t, context, dict(added) if added else None, image_cond)
        if unet_hooks:
            if uncond_rows is None:
                uncond_rows = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            context_ = UNetHookContext(inp, step, total_steps, uncond_rows)
            for hook in unet_hooks:
                hook(context_)
        with offload.unet_in_place(model):
            return unet_call(unet, inp, use_graphs=use_graphs, compiled=compiled)

    denoiser = sampler.make_denoiser(model_fn, model.alphas_cumprod, model.spec.prediction_type,
                                     is_sdxl=model.is_sdxl)
    return CFGDenoiser(denoiser, conditioning, is_sdxl=model.is_sdxl, should_stop=should_stop,
                       mask=request.mask, nmask=request.nmask, init_latent=request.init_latent)


def refiner_start(n_sigmas: int, switch_at: float) -> int:
    """Index of the sigma where the refiner takes over: after `switch_at` of the steps (at least one each)."""
    steps = n_sigmas - 1
    return min(max(int(round(steps * switch_at)), 1), steps - 1) if steps > 1 else steps


def sample_batch(request: BatchRequest, callback: Callable[[dict[str, Any]], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> torch.Tensor:
    """Run the sampler for one batch and return denoised latents (float32, unscaled by the VAE factor)."""
    model = request.model
    steps = request.steps
    sampler = create_sampler(request.sampler_name, model)
    cfg = build_denoiser(model, request, sampler, should_stop)

    schedule_settings = ScheduleSettings.from_options(request.settings)
    factor = model.vae_scale_factor
    latent_shape = (model.latent_channels, request.height // factor, request.width // factor)
    noise_source = make_noise(request, latent_shape, bool(sampler.options.get("uses_ensd", False)))
    noise = noise_source.first()

    full_sigmas = sampler.get_sigmas(steps, request.scheduler, cfg, schedule_settings, request.infotext_params)
    if request.init_latent is None:
        sigmas = full_sigmas
        x = noise * sigmas[0].to(noise.device)
    else:
        strength = float(request.denoising_strength if request.denoising_strength is not None else 0.75)
        sigmas = sampler.sigmas_for_img2img(steps, strength, request.scheduler, cfg, schedule_settings,
                                            fix_steps=request.fix_steps)
        x = request.init_latent + noise * sigmas[0].to(noise.device) * request.initial_noise_multiplier
    sigmas = sigmas.to(model.device)

    if sampler.options.get("brownian_noise", False):
        noise_sampler = sampler.create_noise_sampler(x, full_sigmas, seeds=request.seeds)
    else:
        # Step noise from each image's own generator (A1111's rng.next()), so batches stay reproducible.
        def noise_sampler(sigma, sigma_next):
            return noise_source.next()
    options = sampler.sampler_kwargs(request.settings, eta=request.eta, infotext=request.infotext_params)

    cfg.total_steps = len(sigmas) - 1

    def run(denoiser: CFGDenoiser, part: torch.Tensor, x: torch.Tensor, first_step: int) -> torch.Tensor:
        def shifted(d: dict[str, Any]) -> None:
            if callback is not None:
                # "steps": how many this run takes in all (img2img runs only the last part of the schedule).
                callback({**d, "i": d["i"] + first_step, "steps": len(sigmas) - 1})
        return sampler.sample(denoiser, x, part, extra_args={}, callback=shifted, noise_sampler=noise_sampler,
                              disable=True, **options)

    refiner = request.refiner
    if refiner is None or request.refiner_switch_at >= 1 or len(sigmas) < 3:
        return run(cfg, sigmas, x, 0)
    # SDXL refiner: the base model denoises the first part of the schedule, the refiner finishes it.
    switch = refiner_start(len(sigmas), request.refiner_switch_at)
    x = run(cfg, sigmas[: switch + 1], x, 0)
    refiner_cfg = build_denoiser(refiner, request, sampler, should_stop)
    refiner_cfg.step = switch  # prompt-editing schedules continue where the base model stopped
    refiner_cfg.total_steps = cfg.total_steps
    refiner_cfg.last_latent = cfg.last_latent  # an interruption at the switch still has the base model's estimate
    return run(refiner_cfg, sigmas[switch:].to(refiner.device), x.to(refiner.device), switch)


def vae_decode(model: StableDiffusionModel, latents: torch.Tensor, tile_size: int | None = None,
               notice: Callable[[str], None] | None = None) -> torch.Tensor:
    """Latents -> images in [0, 1], float32 [B, 3, H, W]. Retries in float32 if half precision made NaNs.

    `tile_size`: decode in tiles of that many pixels when the picture is larger (None: the settings
    tiled_vae_decode / tiled_vae_tile_size decide; 0: never). A whole decode that runs out of GPU memory is done
    again in tiles (as ComfyUI and Forge do) instead of failing the job after its sampling; `notice` gets the
    sentence that says so, for the person's result."""
    try:
        return _vae_decode(model, latents, tile_size)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        from modules.models import memory

        factor = vae_tiling.scale_factor(model.vae)
        height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
        tile = vae_tiling.fallback_tile_size()
        if (not memory.is_oom(e) or tile_size == 0 or vae_tiling.would_tile(model.vae, height, width, tile_size)
                or not vae_tiling.would_tile(model.vae, height, width, tile)):
            raise  # tiles asked not to be used, already used, or of no help at this size
    # outside the handler: the failed decode's frames, and the activations they hold, are let go
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    text = f"VAE decode ran out of GPU memory; decoded in tiles of {tile} pixels instead"
    log.warning(text)
    if notice is not None:
        notice(text)
    return _vae_decode(model, latents, tile)


def _vae_decode(model: StableDiffusionModel, latents: torch.Tensor, tile_size: int | None) -> torch.Tensor:
    vae = model.vae
    scaled = latents / vae.config.scaling_factor
    factor = vae_tiling.scale_factor(vae)
    with torch.no_grad(), vae_tiling.tiled(vae, latents.shape[-2] * factor, latents.shape[-1] * factor,
                                           tile_size) as tiles:
        # not over offloaded weights (--medvram/--lowvram hooks move them), nor tiles (another forward)
        compiled = not tiles and getattr(model, "offload", None) is None and _compile_setting()
        decode = _decoder(vae, scaled.to(vae.dtype), compiled=compiled)
        images = decode(vae, scaled.to(vae.dtype)).float()
        if vae.dtype != torch.float32 and not torch.isfinite(images).all():
            vae.to(torch.float32)  # A1111's automatic --no-half-vae fallback, kept for this model
            images = vae.decode(scaled.float(), return_dict=False)[0].float()
    return ((images + 1) / 2).clamp(0, 1)


def _decode_forward(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents, return_dict=False)[0]


def _compile_setting() -> bool:
    from modules import shared  # the decode has no request to carry settings (previews, hires, scripts call it)

    return bool(getattr(getattr(shared, "opts", None), "compile_unet", False))


def _decoder(vae: torch.nn.Module, latents: torch.Tensor, compiled: bool):
    """The VAE decode forward: compiled like the UNet's (modules.engine.unet_compile) when the setting asks,
    the plain one otherwise and whenever tiles are used."""
    if not compiled:
        return _decode_forward
    from modules.engine.unet_compile import forward_for

    return forward_for(vae, _decode_forward, (latents,), {})


def vae_encode(model: StableDiffusionModel, images: torch.Tensor, tile_size: int | None = None) -> torch.Tensor:
    """Images in [0, 1] [B, 3, H, W] -> scaled latents (the distribution's mean, as A1111 does); `tile_size` as
    for `vae_decode`."""
    vae = model.vae
    with torch.no_grad(), vae_tiling.tiled(vae, images.shape[-2], images.shape[-1], tile_size):
        dist = vae.encode((images * 2 - 1).to(model.device, vae.dtype)).latent_dist
    return dist.mean.float() * vae.config.scaling_factor


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    # NaNs (let through by --disable-nan-check) become black, not numpy's undefined cast
    arrays = (images.nan_to_num(0.0).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)
