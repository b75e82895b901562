"""A1111's public generation API: request objects, `process_images(p)` and `Processed`.

Every front door (UI, API, scripts, extensions) builds a `StableDiffusionProcessingTxt2Img` or `...Img2Img` with
A1111's field names and calls `process_images`. The work below is done by `modules.engine`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from modules import atomic_files, devices, extra_networks, hires, images, infotext_utils, paths, rng, shared
from modules.engine import generate, inpainting, previews, token_merging
from modules.engine.generate import BatchRequest
from modules.engine.sampling.common import InterruptedException
from modules.engine.sampling.registry import find_sampler_config, get_sampler_and_scheduler
from modules.engine.sampling.schedules import schedulers
from modules.models import fp8_storage
from modules.networks import extra_network_lora
from modules.script_args import PostprocessBatchListArgs, PostprocessImageArgs

log = logging.getLogger(__name__)
VERSION = "studio-0.1"  # not an A1111 version number on purpose: A1111's parser applies no back-compat to it
OUTDIRS = {
    "txt2img": ("outdir_txt2img_samples", "outputs/txt2img-images", "outdir_txt2img_grids", "outputs/txt2img-grids"),
    "img2img": ("outdir_img2img_samples", "outputs/img2img-images", "outdir_img2img_grids", "outputs/img2img-grids"),
}


def _opt(name: str, default: Any) -> Any:
    return shared.opts.data.get(name, getattr(shared.opts, name, default)) if hasattr(shared.opts, "data") else default


def _outdir(kind: str, samples: bool) -> str:
    key_s, default_s, key_g, default_g = OUTDIRS[kind]
    key, default = (key_s, default_s) if samples else (key_g, default_g)
    configured = _opt(key, "") or (_opt("outdir_samples", "") if samples else _opt("outdir_grids", ""))
    return configured or os.path.join(paths.data_path, default)


@dataclass(repr=False)
class StableDiffusionProcessing:
    """A1111's base request: field names and defaults as A1111's constructor."""

    sd_model: Any = None
    outpath_samples: str | None = None
    outpath_grids: str | None = None
    prompt: str | list[str] = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] | None = None
    overlay_images: list | None = None
    negative_prompt: str | list[str] = ""
    eta: float | None = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float | None = None
    ddim_discretize: str | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    token_merging_ratio: float = 0
    saved_samples: int = 0  # pictures this job wrote to the outputs folder so far
    token_merging_ratio_hr: float = 0
    disable_extra_networks: bool = False
    firstpass_image: Any = None
    comments: dict[str, Any] | None = None
    is_api: bool = False
    user: str | None = None

    scripts: Any = field(default=None, init=False)
    script_args: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.extra_generation_params = dict(self.extra_generation_params or {})
        # UNet hooks (modules.engine.unet_call) scripts add for this job, e.g. ControlNet's; every sampling pass
        # of the job (hires fix included) runs them
        self.unet_hooks: list[Any] = []
        self.override_settings = dict(self.override_settings or {})
        self.styles = list(self.styles or [])
        self.comments = dict(self.comments or {})
        self.all_prompts: list[str] = []
        self.all_negative_prompts: list[str] = []
        self.all_seeds: list[int] = []
        self.all_subseeds: list[int] = []
        self.iteration = 0
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
        self.prompts: list[str] = []
        self.negative_prompts: list[str] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.clip_skip = 1

    kind = "txt2img"

    def comment(self, text: str) -> None:
        """A warning to show beside the result (A1111's p.comment); each text once."""
        self.comments[text] = 1

    @property
    def sd_model_name(self) -> str | None:
        info = getattr(self.sd_model, "sd_checkpoint_info", None)
        return getattr(info, "model_name", None)

    @property
    def sd_model_hash(self) -> str | None:
        return getattr(self.sd_model, "sd_model_hash", None)

    # --- hooks the subclasses fill in ---------------------------------------------------------------------------
    def init(self, all_prompts: list[str], all_seeds: list[int], all_subseeds: list[int]) -> None:
        pass

    def batch_request(self, request: BatchRequest) -> BatchRequest:
        return request

    def postprocess_image(self, index: int, image: Image.Image) -> Image.Image:
        return image


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float | None = None  # A1111 1.10's "Hires CFG Scale"; None: the first pass's cfg_scale
    force_task_id: str | None = None

    kind = "txt2img"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.txt2img_upscale = False  # A1111's ✨ button: only the hires pass, on `firstpass_image`
        self.hr_checkpoint_info = None
        self.latent_scale_mode: dict[str, Any] | None = None
        self.hr_upscale_to_x = self.hr_upscale_to_y = 0
        self.truncate_x = self.truncate_y = 0
        self.all_hr_prompts: list[str] = []
        self.all_hr_negative_prompts: list[str] = []
        self.hr_prompts: list[str] = []
        self.hr_negative_prompts: list[str] = []

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        if self.enable_hr:
            hires.init(self)

    def batch_request(self, request: BatchRequest) -> BatchRequest:
        model = request.model
        if model.is_inpainting:
            # A1111's txt2img conditioning for inpainting models: everything is "repaint", the masked image grey.
            factor = model.vae_scale_factor
            grey = torch.zeros(len(request.prompts), 3, request.height // factor * factor,
                               request.width // factor * factor, device=model.device)
            request.image_cond = inpainting.inpainting_model_conditioning(
                grey, None, lambda x: generate.vae_encode(model, (x + 1) / 2))
        return request


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list | None = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Any = None
    force_task_id: str | None = None
    # SD2 depth models (modules/depth/depth2img.py): the user's depth map (near = bright) wins over the estimator
    depth_map: Any = None
    depth_estimator: str | None = None

    kind = "img2img"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_blur is not None:
            self.mask_blur_x = self.mask_blur_y = self.mask_blur
        self.image_mask = self.mask
        self.init_latent = None
        self._region = None
        self._overlay_masks: list[Image.Image] = []
        self._originals: list[Image.Image] = []

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        if not self.init_images:
            raise ValueError("img2img needs at least one init image")
        if self.image_mask is not None:
            self.extra_generation_params["Mask blur"] = self.mask_blur_x if self.mask_blur_x == self.mask_blur_y \
                else None
            if self.inpainting_mask_invert:
                self.extra_generation_params["Mask mode"] = "Inpaint not masked"
            self.extra_generation_params["Masked content"] = ["fill", "original", "latent noise", "latent nothing"][
                self.inpainting_fill]
            self.extra_generation_params["Inpaint area"] = "Only masked" if self.inpaint_full_res else "Whole picture"
            if self.inpaint_full_res:
                self.extra_generation_params["Masked area padding"] = self.inpaint_full_res_padding

    def batch_request(self, request: BatchRequest) -> BatchRequest:
        model = request.model
        batch = len(request.prompts)
        sources = [self.init_images[(self.iteration * self.batch_size + i) % len(self.init_images)]
                   for i in range(batch)]
        prepared, masks_latent = [], []
        self._overlay_masks, self._originals, self._regions = [], [], []
        depth_sources: list[tuple[Image.Image, Image.Image, Any]] = []  # (what is denoised, original, region)
        for image in sources:
            image = ImageOps.exif_transpose(image).convert("RGB")
            if self.image_mask is None:
                prepared.append(images.resize_image(self.resize_mode, image, self.width, self.height))
                depth_sources.append((prepared[-1], image, None))
                continue
            mask_image = self.image_mask
            if getattr(mask_image, "size", image.size) != image.size:
                mask_image = mask_image.resize(image.size, Image.Resampling.LANCZOS)
            mask = inpainting.prepare_mask(mask_image, mask_blur_x=self.mask_blur_x, mask_blur_y=self.mask_blur_y,
                                           invert=bool(self.inpainting_mask_invert), mask_round=self.mask_round)
            region = inpainting.InpaintRegion.create(image, mask, self.width, self.height,
                                                     self.inpaint_full_res_padding) if self.inpaint_full_res else None
            if region is not None:
                work_image, work_mask, overlay = region.image, region.mask_for_latent, mask.for_overlay
            else:  # "Whole picture", or "Only masked" with an empty mask (A1111 falls back the same way)
                image = images.resize_image(self.resize_mode, image, self.width, self.height)
                whole = mask.for_whole_picture(self.resize_mode, self.width, self.height)
                work_image, work_mask, overlay = image, whole.for_latent, whole.for_overlay
            self._originals.append(image)
            self._overlay_masks.append(overlay)
            self._regions.append(region)
            depth_sources.append((work_image, image, region))
            prepared.append(inpainting.init_image_for_masked_content(work_image, work_mask, self.inpainting_fill))
            masks_latent.append(work_mask)

        pixels = generate.from_pil(prepared).to(model.device)
        init_latent = generate.vae_encode(model, pixels)
        request.init_latent = init_latent
        request.denoising_strength = self.denoising_strength
        request.fix_steps = bool(_opt("img2img_fix_steps", False))
        request.initial_noise_multiplier = self.initial_noise_multiplier if self.initial_noise_multiplier else 1.0
        if model.spec.variant == "depth":
            request.image_cond = self._depth_conditioning(depth_sources, tuple(init_latent.shape[-2:]), model.device)
        elif self.depth_map is not None:  # set after the checks too (the img2img tab's depth script)
            raise ValueError(f"a depth map applies only to SD2 depth models; the loaded model is "
                             f"{model.spec.display_name}")

        def encode(x: torch.Tensor) -> torch.Tensor:  # [-1, 1] pixels -> scaled latents
            return generate.vae_encode(model, (x + 1) / 2)

        if masks_latent:
            latent_h, latent_w = init_latent.shape[-2:]
            new_content = torch.cat([inpainting.latent_mask(m, latent_h, latent_w, round=self.mask_round)
                                     for m in masks_latent]).to(model.device)
            if inpainting.needs_latent_fill(self.inpainting_fill):
                noise = torch.stack([torch.randn(init_latent.shape[1:], generator=torch.Generator().manual_seed(s))
                                     for s in request.seeds]).to(model.device)
                request.init_latent = init_latent = inpainting.apply_latent_fill(init_latent, new_content,
                                                                                 self.inpainting_fill, noise)
            if model.is_inpainting:
                request.image_cond = torch.cat([
                    inpainting.inpainting_model_conditioning(pixels[i : i + 1] * 2 - 1, m, encode,
                                                             round_mask=self.mask_round)
                    for i, m in enumerate(masks_latent)])
            else:
                request.mask, request.nmask = 1 - new_content, new_content
        elif model.is_inpainting:
            # An inpainting model used for plain img2img: the whole image is "repaint" (A1111 does the same).
            request.image_cond = inpainting.inpainting_model_conditioning(pixels * 2 - 1, None, encode)
        return request

    def _depth_conditioning(self, sources: list, latent_size: tuple[int, int], device) -> torch.Tensor:
        """The depth model's 5th input channel: the user's map fitted like the picture, else the estimate."""
        from modules.depth import depth2img

        maps = None
        if self.depth_map is not None:
            maps = [depth2img.user_map_for(self.depth_map, self.resize_mode, self.width, self.height) if region is None
                    else depth2img.user_map_in_region(self.depth_map, original.size, region.crop_region, self.width,
                                                      self.height)
                    for _work, original, region in sources]
        cond, info = depth2img.conditioning([work for work, _original, _region in sources], latent_size, device,
                                            self.depth_estimator, maps)
        self.extra_generation_params.update(info)
        return cond

    def postprocess_image(self, index: int, image: Image.Image) -> Image.Image:
        if self.image_mask is None or index >= len(self._overlay_masks):
            return image
        return inpainting.apply_overlay(image, self._originals[index], self._overlay_masks[index],
                                        self._regions[index])


class Processed:
    """A1111's result object."""

    def __init__(self, p: StableDiffusionProcessing, images_list: list[Image.Image], seed: int = -1, info: str = "",
                 subseed: int | None = None, all_prompts=None, all_negative_prompts=None, all_seeds=None,
                 all_subseeds=None, index_of_first_image: int = 0, infotexts: list[str] | None = None,
                 comments: str = ""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = comments
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = getattr(p, "face_restoration_model", None)
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.sd_vae_name = getattr(p, "sd_vae_name", None)
        self.sd_vae_hash = getattr(p, "sd_vae_hash", None)
        self.seed_resize_from_w = p.seed_resize_from_w
        self.seed_resize_from_h = p.seed_resize_from_h
        self.denoising_strength = p.denoising_strength
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles = p.styles
        self.job_timestamp = p.job_timestamp
        self.clip_skip = p.clip_skip
        self.eta = p.eta
        self.ddim_discretize = p.ddim_discretize
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = p.s_churn, p.s_tmin, p.s_tmax, p.s_noise
        self.sampler_noise_scheduler_override = None
        self.is_using_inpainting_conditioning = bool(getattr(p.sd_model, "is_inpainting", False))
        self.all_prompts = all_prompts or p.all_prompts or [p.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [p.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [subseed]
        self.infotexts = infotexts or [info]
        self.version = VERSION

    def js(self) -> str:
        obj = {
            "prompt": self.all_prompts[0], "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0], "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed, "all_seeds": self.all_seeds, "subseed": self.subseed, "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength, "width": self.width, "height": self.height,
            "sampler_name": self.sampler_name, "cfg_scale": self.cfg_scale, "steps": self.steps,
            "batch_size": self.batch_size, "restore_faces": self.restore_faces,
            "face_restoration_model": self.face_restoration_model, "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash, "sd_vae_name": self.sd_vae_name, "sd_vae_hash": self.sd_vae_hash,
            "seed_resize_from_w": self.seed_resize_from_w, "seed_resize_from_h": self.seed_resize_from_h,
            "denoising_strength": self.denoising_strength, "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image, "infotexts": self.infotexts, "styles": self.styles,
            "job_timestamp": self.job_timestamp, "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.is_using_inpainting_conditioning, "version": self.version,
            "comments": self.comments,  # not in A1111's JSON: API clients see what the page shows under the picture
        }
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p: StableDiffusionProcessing, index: int) -> str:
        return self.infotexts[index] if index < len(self.infotexts) else self.info


def fix_seed(p: StableDiffusionProcessing) -> None:
    p.seed = rng.get_fixed_seed(p.seed)
    p.subseed = rng.get_fixed_seed(p.subseed)


get_fixed_seed = rng.get_fixed_seed


def _ensd(p: StableDiffusionProcessing) -> int | None:
    """A1111 writes ENSD only when it is set and the sampler's noise uses it (ancestral samplers)."""
    from modules import sd_samplers_common

    ensd = int(_opt("eta_noise_seed_delta", 0) or 0)
    return ensd if ensd and sd_samplers_common.is_sampler_using_eta_noise_seed_delta(p) else None


def create_infotext(p: StableDiffusionProcessing, all_prompts, all_seeds, all_subseeds, comments=None,
                    iteration: int = 0, position_in_batch: int = 0, all_negative_prompts=None) -> str:
    index = position_in_batch + iteration * p.batch_size
    negatives = all_negative_prompts or p.all_negative_prompts
    model = p.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    vae_file = getattr(model, "vae_file", None)
    cfg_scale: Any = p.cfg_scale
    if isinstance(cfg_scale, float) and cfg_scale.is_integer() and not p.is_api:
        cfg_scale = int(cfg_scale)  # the UI shows 7, the API 7.0: A1111 writes what it was given
    params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler if p.scheduler and p.scheduler != "Automatic" else None,
        "CFG scale": cfg_scale,
        "Image CFG scale": getattr(p, "image_cfg_scale", None) if getattr(model, "spec", None)
        and model.spec.variant == "instruct-pix2pix" else None,
        "Seed": all_seeds[index],
        "Face restoration": getattr(p, "face_restoration_model", None),
        "Size": f"{p.width}x{p.height}",
        "Model hash": getattr(model, "sd_model_hash", None),
        "Model": getattr(info, "model_name", None),
        "VAE": os.path.splitext(os.path.basename(vae_file))[0] if vae_file else None,
        "Variation seed": all_subseeds[index] if p.subseed_strength else None,
        "Variation seed strength": p.subseed_strength if p.subseed_strength else None,
        "Seed resize from": f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
        if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0 else None,
        "Denoising strength": p.denoising_strength if p.kind == "img2img" else None,
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
        "ENSD": _ensd(p),
        **fp8_storage.infotext_values(model),
        "Token merging ratio": token_merging.ratio_for(p) or None,
        "Token merging ratio hr": (token_merging.ratio_for(p, hires=True) or None) if _hires(p) else None,
        "RNG": _opt("randn_source", "GPU") if _opt("randn_source", "GPU") != "GPU" else None,
        "Tiling": "Tiling" if p.tiling else None,  # a flag: a key equal to its value is written bare
    }
    extra = dict(p.extra_generation_params)
    return infotext_utils.build_infotext(all_prompts[index], negatives[index] if negatives else "", params, extra,
                                         version=VERSION, user=p.user, index=index)


@contextlib.contextmanager
def _tiling(model, enabled: bool):
    """Seamless tiling: every convolution pads circularly for the duration of the generation."""
    mods = (model.unet, model.vae) if model is not None else ()
    convs = [m for mod in mods for m in mod.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [m.padding_mode for m in convs]
    if enabled:
        for m in convs:
            m.padding_mode = "circular"
    try:
        yield
    finally:
        for m, mode in zip(convs, saved, strict=True):
            m.padding_mode = mode


def _apply_override_settings(p: StableDiffusionProcessing) -> dict[str, Any]:
    saved = {}
    for key, value in p.override_settings.items():
        if key not in shared.opts.data_labels:
            continue
        saved[key] = shared.opts.data.get(key)
        shared.opts.set(key, value, is_api=p.is_api)
        if key == "sd_model_checkpoint":
            from modules import sd_models

            info = sd_models.get_closet_checkpoint_match(str(value))
            if info is None:
                raise ValueError(f"override_settings: unknown checkpoint {value!r}")
            sd_models.load_model(info)
        elif key == "sd_vae":
            from modules import sd_models

            sd_models.reload_vae_weights()
    return saved


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Run a request; `override_settings` apply for its duration and are restored after (unless asked not to)."""
    from modules import call_queue

    offloaded = call_queue.queue.offload("process_images", p)  # --ray: a replica ran it (modules/serve)
    if offloaded is not None:
        return offloaded
    state = getattr(shared, "state", None)
    owns_job = state is not None and not state.job  # called directly, not from a queue that began a job
    if owns_job:
        state.begin(job=p.kind)
    if state is not None:  # the state makes live previews with what the engine hands it (it imports no engine)
        state.preview_function = previews.preview_function()
    if p.scripts is not None:
        p.scripts.before_process(p)
    saved = _apply_override_settings(p)
    try:
        from modules.models import offload  # out of GPU memory: free, retry once at a lower --medvram level

        return offload.run_job(lambda: process_images_inner(p), lambda: p.sd_model or shared.sd_model,
                               may_retry=lambda: p.saved_samples == 0)
    finally:
        _close_unet_hooks(p)
        if owns_job:
            state.end()
        if p.override_settings_restore_afterwards:
            for key, value in saved.items():
                shared.opts.data[key] = value
                if key == "sd_model_checkpoint" and value:
                    from modules import sd_models

                    info = sd_models.get_closet_checkpoint_match(str(value))
                    if info is not None:
                        sd_models.load_model(info)


def _close_unet_hooks(p: StableDiffusionProcessing) -> None:
    """Hooks that changed a network for the job (IP-Adapter's attention processors) undo it, even after a failure."""
    for hook in p.unet_hooks:
        close = getattr(hook, "close", None)
        if callable(close):
            close()


def _validate(p: StableDiffusionProcessing) -> None:
    """The one request check every door shares (modules.request_validation): UI, API and scripts alike."""
    from modules import request_validation

    request_validation.validate(p, is_api=p.is_api)


def _resolve_sampler(p: StableDiffusionProcessing) -> None:
    if p.sampler_name is None and p.sampler_index is not None:
        from modules.engine.sampling.registry import samplers

        p.sampler_name = samplers[p.sampler_index].name if p.sampler_index < len(samplers) else None
    name = p.sampler_name or "Euler"
    known = find_sampler_config(name) is not None or any(
        name.endswith(" " + s.label) and find_sampler_config(name[: -len(s.label) - 1]) for s in schedulers)
    if not known:
        raise ValueError(f"unknown sampler {p.sampler_name!r}")
    sampler, scheduler = get_sampler_and_scheduler(name, p.scheduler or "Automatic")
    p.sampler_name, p.scheduler = find_sampler_config(sampler).name, scheduler


def _prompt_list(value: str | list[str], n: int) -> list[str]:
    if isinstance(value, list):
        return [value[i % len(value)] for i in range(n)] if value else [""] * n
    return [value] * n


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """The stages: prepare; per batch (extra networks, conditioning, sampling, decode, postprocess, save); grid.

    A1111's script methods run at A1111's points (see `modules.scripts`), through `p.scripts` when it is set."""
    from modules import sd_models

    model = _prepare(p)
    refiner = _load_refiner(p, model)
    p.hr_model = hires.load_checkpoint(p, model) if _hires(p) else None
    state = getattr(shared, "state", None)
    outputs = _Outputs()
    if state is not None:
        if state.job_count in (-1, 0):  # set by a script that runs several of these (SD upscale): keep its total
            state.job_count = p.n_iter
        if _hires(p) and p.firstpass_image is None and not state.processing_has_refined_job_count:
            state.job_count *= 2  # each batch is two sampling jobs (A1111 counts it so, once per job)
            state.processing_has_refined_job_count = True
    try:
        with _tiling(model, bool(p.tiling)), _tiling(p.hr_model, bool(p.tiling)):
            for n in range(p.n_iter):
                if state is not None and (state.interrupted or state.stopping_generation):
                    break
                if not _run_batch(p, n, model, refiner, state, outputs):
                    break
    finally:
        if not p.disable_extra_networks:
            extra_networks.deactivate(p)
        for auxiliary in (refiner, p.hr_model):
            if auxiliary is not None:
                sd_models.manager.release_auxiliary(auxiliary)
    if outputs.infotexts:
        _write_last_params(outputs.infotexts[0])
    index_of_first_image = _add_grid(p, outputs)
    result = Processed(p, outputs.images, p.all_seeds[0] if p.all_seeds else -1,
                       outputs.infotexts[0] if outputs.infotexts else "",
                       p.all_subseeds[0] if p.all_subseeds else None, index_of_first_image=index_of_first_image,
                       infotexts=outputs.infotexts, comments=_comments(p))
    if p.scripts is not None:
        p.scripts.postprocess(p, result)
    return result


def _write_last_params(infotext: str) -> None:
    """A1111's params.txt in the data dir: the job's first infotext, which the ↙️ button reads back when the prompt
    is empty. Once per job, after its pictures, not per step or image. A failure to write it costs only that."""
    if getattr(shared.cmd_opts, "no_prompt_history", False):
        return
    try:
        atomic_files.atomic_write_text(paths.data_file("params.txt"), infotext)
    except Exception as e:  # a full disk, a read-only data dir, text that cannot be encoded: the job's pictures stand
        log.warning("could not write params.txt: %s", e)


@dataclass
class _Outputs:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)


def _prepare(p: StableDiffusionProcessing):
    """Check the request, resolve sampler and model, fix seeds, build every prompt; scripts' `process` may then
    rewrite `p.all_prompts` / `p.all_seeds`, and what they leave is what is generated and written."""
    from modules import sd_models, upscalers

    upscalers.ensure_listed()  # before validation: hr_upscaler and friends are checked against the list
    _validate(p)
    _resolve_sampler(p)
    extra_network_lora.ensure_registered()
    if p.sd_model is None or p.sd_model is shared.sd_model:
        p.sd_model = sd_models.apply_weight_storage()  # "FP8 weight" changed since the model loaded
    if p.sd_model is None:
        p.sd_model = shared.sd_model or sd_models.load_model()
    model = p.sd_model
    sd_models.apply_attention(model)  # "Cross attention optimization" as it is now (override_settings included)
    if model.spec.variant == "instruct-pix2pix":
        raise ValueError(f"{model.spec.display_name} models are recognised but cannot generate in this version")
    if model.spec.variant == "depth" and p.kind != "img2img":
        raise ValueError(f"{model.spec.display_name} models generate from a picture and its depth: use img2img "
                         "or the Depth tab, not txt2img")
    fix_seed(p)
    p.clip_skip = int(_opt("CLIP_stop_at_last_layers", 1))
    total = p.n_iter * p.batch_size
    styles_db = getattr(shared, "prompt_styles", None)
    if styles_db is None and p.styles:
        from modules.styles import StyleDatabase

        shared.prompt_styles = styles_db = StyleDatabase(paths.data_file("styles.csv"))
    prompts = _prompt_list(p.prompt, total)
    negatives = _prompt_list(p.negative_prompt, total)
    if styles_db is not None and p.styles:
        prompts = [styles_db.apply_styles_to_prompt(x, p.styles) for x in prompts]
        negatives = [styles_db.apply_negative_styles_to_prompt(x, p.styles) for x in negatives]
    p.all_prompts, p.all_negative_prompts = prompts, negatives
    p.all_seeds = rng.seeds_for_batch(p.seed, p.n_iter, p.batch_size, p.subseed_strength)
    p.all_subseeds = rng.subseeds_for_batch(p.subseed, p.n_iter, p.batch_size)
    if p.scripts is not None:
        p.scripts.process(p)
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    return model


def _run_batch(p: StableDiffusionProcessing, n: int, model, refiner, state, outputs: _Outputs) -> bool:
    """One batch through every stage; False when the job must stop after it (interrupted)."""
    p.iteration = n
    sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
    p.prompts, p.negative_prompts = p.all_prompts[sl], p.all_negative_prompts[sl]
    p.seeds, p.subseeds = p.all_seeds[sl], p.all_subseeds[sl]
    if p.scripts is not None:
        p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
    if not p.prompts:
        return False
    request = _batch_request(p, n, model, refiner)
    hr = _hires(p)
    if hr:
        p.hr_prompts, p.hr_negative_prompts = p.all_hr_prompts[sl], p.all_hr_negative_prompts[sl]
        hires.first_pass_refiner(request)
    if hr and p.firstpass_image is not None:
        latents, stopped = None, False  # the ✨ button: the first pass is the finished picture
    else:
        latents, stopped = _sample(request, p, state)
        if latents is None:  # stopped before the first step: nothing to show for this batch
            if state is not None:
                state.nextjob()
            return not stopped
    for key, value in request.infotext_params.items():
        p.extra_generation_params.setdefault(key, value)
    decode_model = model
    if hr and not stopped:
        latents, stopped = hires.sample_hr_pass(p, request, latents, p.hr_model, refiner,
                                                lambda r: _sample(r, p, state, hires_pass=True), state)
        decode_model = p.hr_model or model
    if latents is None:
        if state is not None:
            state.nextjob()
        return not stopped
    for i, image in enumerate(_decode(p, n, decode_model, latents)):
        _keep(p, n, min(i, p.batch_size - 1), image, outputs)  # a script may add pictures to a batch
    if state is not None:
        state.nextjob()
    return not stopped


def _batch_request(p: StableDiffusionProcessing, n: int, model, refiner) -> BatchRequest:
    """Extra networks (the tags come off the text the encoder sees), scripts' `process_batch`, the request."""
    from modules.engine.sampling.sampler import settings_for_request

    encoder_prompts, network_data = extra_networks.parse_prompts(p.prompts)
    encoder_negatives = extra_networks.parse_prompts(p.negative_prompts)[0]
    if not p.disable_extra_networks:
        extra_networks.activate(p, network_data)
    _write_ti_hashes(p, model, encoder_prompts + encoder_negatives)
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=n, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds, extra_network_data=network_data)
        p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
    request = BatchRequest(
        model=model, prompts=encoder_prompts, negative_prompts=encoder_negatives, seeds=p.seeds,
        subseeds=p.subseeds, subseed_strength=p.subseed_strength,
        seed_resize_from_h=max(p.seed_resize_from_h, 0), seed_resize_from_w=max(p.seed_resize_from_w, 0),
        sampler_name=p.sampler_name, scheduler=p.scheduler, steps=p.steps, cfg_scale=p.cfg_scale,
        width=p.width, height=p.height, clip_skip=p.clip_skip, emphasis=_opt("emphasis", "Original"),
        settings=settings_for_request(shared.opts.data, p), eta=p.eta,  # the request's s_* win over settings
    )
    request.refiner, request.refiner_switch_at = refiner, float(p.refiner_switch_at or 1.0)
    request = p.batch_request(request)
    if p.scripts is not None:
        p.scripts.process_before_every_sampling(p, batch_number=n, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds)
    request.unet_hooks = list(p.unet_hooks)
    return request


def _hires(p: StableDiffusionProcessing) -> bool:
    return p.kind == "txt2img" and bool(getattr(p, "enable_hr", False))


def _write_ti_hashes(p: StableDiffusionProcessing, model, texts: list[str]) -> None:
    """A1111's `TI hashes` infotext: the embeddings these prompts use (positive and negative), with hashes."""
    from modules import textual_inversion

    if not _opt("textual_inversion_add_hashes_to_infotext", True):
        return
    value = textual_inversion.ti_hashes_infotext(textual_inversion.used_embeddings(texts, model, steps=p.steps))
    if value:
        p.extra_generation_params["TI hashes"] = value


def _sample(request: BatchRequest, p: StableDiffusionProcessing, state,
            hires_pass: bool = False) -> tuple[torch.Tensor | None, bool]:
    """(latents, stopped). As A1111, an interrupted or skipped batch keeps its latest estimate as a picture."""
    try:
        with token_merging.for_pass(p, request.model, hires_pass):  # this pass only, removed even on failure
            latents = generate.sample_batch(request, callback=_progress_callback(state, p),
                                            should_stop=_stop_check(state))
    except InterruptedException as stop:
        if state is not None and state.skipped and not state.interrupted:
            state.skipped = False
            return stop.last_latent, False  # skip moves on to the next batch
        return stop.last_latent, True
    # All NaNs: the job fails with A1111's advice rather than a black picture (and a VAE wrongly upcast).
    devices.test_for_nans(latents, "unet")
    return latents, False


def _decode(p: StableDiffusionProcessing, n: int, model, latents: torch.Tensor) -> list[Image.Image]:
    """VAE decode, then scripts' `postprocess_batch` (the [0, 1] tensor) and `postprocess_batch_list`."""
    decoded = generate.vae_decode(model, latents, notice=p.comment)
    if p.scripts is None:
        return generate.to_pil(decoded)
    p.scripts.postprocess_batch(p, decoded, batch_number=n)
    batch = PostprocessBatchListArgs(list(decoded))
    p.scripts.postprocess_batch_list(p, batch, batch_number=n)
    return [image if isinstance(image, Image.Image) else generate.to_pil(image.unsqueeze(0))[0]
            for image in batch.images]


def _keep(p: StableDiffusionProcessing, n: int, i: int, image: Image.Image, outputs: _Outputs) -> None:
    """Face restoration, scripts' `postprocess_image`, the request's own (inpaint overlay), infotext, save."""
    from modules import face_restoration

    image = face_restoration.postprocess_generated(p, image)  # A1111's place: before the scripts see it
    if p.scripts is not None:
        pp = PostprocessImageArgs(image)
        p.scripts.postprocess_image(p, pp)
        image = pp.image
    image = p.postprocess_image(i, image)
    text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=n, position_in_batch=i)
    if not p.do_not_save_samples and _opt("samples_save", True):
        images.save_image(image, p.outpath_samples or _outdir(p.kind, True), "", p.seeds[i], p.prompts[i],
                          _opt("samples_format", "png"), info=text, p=p)
        p.saved_samples += 1  # a job that saved pictures is not run again after running out of memory
    image.info["parameters"] = text
    outputs.images.append(image)
    outputs.infotexts.append(text)


def _add_grid(p: StableDiffusionProcessing, outputs: _Outputs) -> int:
    """A1111's grid in front of the pictures when there are several; the index of the first picture."""
    if len(outputs.images) <= 1 or not _opt("return_grid", True) or p.do_not_save_grid:
        return 0
    grid = images.image_grid(outputs.images, p.batch_size)
    grid_text = outputs.infotexts[0]
    if _opt("grid_save", True):
        images.save_image(grid, p.outpath_grids or _outdir(p.kind, False), "grid", p.all_seeds[0],
                          p.all_prompts[0], _opt("grid_format", "png"), info=grid_text,
                          short_filename=not _opt("grid_extended_filename", False), p=p, grid=True)
    grid.info["parameters"] = grid_text
    outputs.images.insert(0, grid)
    outputs.infotexts.insert(0, grid_text)
    return 1


def _comments(p: StableDiffusionProcessing) -> str:
    """Warnings a person should see beside the result (A1111's `Processed.comments`), one per line: the job's
    own (`p.comment`, e.g. a LoRA that does not fit the model), then tags of network types nobody handles."""
    lines = list(p.comments)
    warning = extra_networks.not_applied_warning(list(p.all_prompts) + list(p.all_negative_prompts))
    if warning:
        log.warning(warning)
        lines.append(warning)
    return "\n".join(lines)


def _load_refiner(p: StableDiffusionProcessing, model):
    """A1111's refiner: the checkpoint that finishes the last (1 - switch_at) of the steps, or None."""
    from modules import sd_models

    name = p.refiner_checkpoint
    if not name or name == "None" or p.refiner_switch_at is None or float(p.refiner_switch_at) >= 1:
        return None
    info = sd_models.get_closet_checkpoint_match(str(name))
    if info is None:
        raise ValueError(f"refiner checkpoint not found: {name!r}")
    if info.filename == model.sd_checkpoint_info.filename:
        return None
    refiner = sd_models.manager.load_auxiliary(info)
    if refiner.latent_channels != model.latent_channels or refiner.is_sdxl != model.is_sdxl:
        raise ValueError(f"refiner {info.title} does not share the model's latent space ({model.spec.display_name})")
    if not getattr(shared.cmd_opts, "no_hashing", False):
        info.calculate_shorthash()
    p.extra_generation_params["Refiner"] = info.short_title
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    return refiner


def _stop_check(state):
    if state is None:
        return lambda: False
    return lambda: bool(state.interrupted or state.skipped)


def _progress_callback(state, p):
    if state is None:
        return None

    def callback(d: dict[str, Any]) -> None:
        state.sampling_step = int(d["i"]) + 1
        state.sampling_steps = int(d.get("steps", p.steps))
        state.current_latent = d.get("denoised")
        if hasattr(state, "set_current_image"):
            state.set_current_image()

    return callback
