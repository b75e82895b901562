"""Built-in settings templates, with A1111's keys, defaults, labels and sections.

Only settings that concern what exists now are here. This is a registry: later modules and extensions add
their settings with `shared.opts.add_option(key, OptionInfo(...))` (or `options_templates.update(...)` before
`shared.opts` is built), never by editing a central list.
"""

from __future__ import annotations

from modules import attention_choices
from modules.options import OptionInfo, categories, options_section

# Keys nobody may change when --hide-ui-dir-config is set (output dirs, filename patterns), as in A1111.
restricted_opts: set[str] = set()

categories.register_category("sd", "Stable Diffusion")

# Components are left to the UI layer (no gradio import here); sliders carry their range in component_args,
# Radio/Dropdown settings their choices. Both are enforced on every write (Options.validate); Number boxes
# that need a range get it from OptionInfo(minimum=..., maximum=...).
options_templates: dict[str, OptionInfo] = {}

options_templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint", infotext="Model hash"),
    "sd_checkpoints_limit": OptionInfo(
        1, "Maximum number of checkpoints loaded at the same time",
        component_args={"minimum": 1, "maximum": 10, "step": 1},
    ),
    "sd_checkpoints_keep_in_cpu": OptionInfo(True, "Only keep one model on device").info(
        "will keep models other than the currently used one in RAM rather than VRAM"
    ),
    "sd_checkpoint_cache": OptionInfo(
        0, "Checkpoints to cache in RAM", component_args={"minimum": 0, "maximum": 10, "step": 1}
    ).info("obsolete; set to 0 and use the two settings above instead"),
    "CLIP_stop_at_last_layers": OptionInfo(
        1, "Clip skip", component_args={"minimum": 1, "maximum": 12, "step": 1}, infotext="Clip skip"
    ).info("ignore last layers of CLIP network; 1 ignores none, 2 ignores one layer"),
    "upcast_attn": OptionInfo(False, "Upcast cross attention layer to float32"),
    "cuda_graphs": OptionInfo(True, "Replay the UNet as a CUDA graph").info(
        "faster on fast GPUs, where launching kernels limits speed; uses some extra VRAM per image size"),
    "compile_unet": OptionInfo(False, "Compile the UNet and the VAE decoder with torch.compile").info(
        "faster steps; the first job at each new image size waits while it compiles (a minute or more the first "
        "time, less once cached on disk)"),
    "model_precision": OptionInfo(
        "float16", "Half-precision type on CUDA", component_args={"choices": ["float16", "bfloat16"]}
    ).info("bfloat16 has float32's range: no overflow to NaN/black images, slightly less precision; needs a recent GPU"),
}))

options_templates.update(options_section(("vae", "VAE", "sd"), {
    "sd_vae_checkpoint_cache": OptionInfo(
        0, "VAE Checkpoints to cache in RAM", component_args={"minimum": 0, "maximum": 10, "step": 1}
    ),
    "sd_vae": OptionInfo("Automatic", "SD VAE", infotext="VAE").info(
        "choose VAE model: Automatic = use one with same filename as checkpoint; None = use VAE from checkpoint"
    ),
    "sd_vae_overrides_per_model_preferences": OptionInfo(True, "Selected VAE overrides per-model preferences").info(
        "you can set per-model VAE either by editing user metadata for checkpoints, "
        "or by making the VAE have same name as checkpoint"
    ),
    # modules/engine/vae_tiling.py; A1111 has no such setting and no infotext key (the picture barely changes)
    "tiled_vae_decode": OptionInfo(False, "Decode large images in tiles (less VRAM)").info(
        "images larger than one tile are decoded and encoded tile by tile with blended seams; much less VRAM "
        "for large images, pictures differ slightly"),
    "tiled_vae_tile_size": OptionInfo(
        512, "VAE tile size", component_args={"minimum": 64, "maximum": 4096, "step": 64}).info("in pixels"),
}))

options_templates.update(options_section(("optimizations", "Optimizations", "sd"), {
    # modules/attention_optimization.py; applied by modules/sd_models.py
    "cross_attention_optimization": OptionInfo(
        "Automatic", "Cross attention optimization", component_args={"choices": attention_choices.choices()}).info(
        "which kernels attention runs on; Automatic follows --xformers, --opt-sdp-no-mem-attention and "
        "--disable-opt-split-attention, otherwise sdp"),
    "fp8_storage": OptionInfo(
        "Disable", "FP8 weight", component_args={"choices": ["Disable", "Enable for SDXL", "Enable"]},
        infotext="FP8 weight").info(
        "store the UNet's Linear/Conv weights in 8 bits: half the memory, slightly different pictures; "
        "turning it off reloads the checkpoint"),
    "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA", infotext="Cache FP16 weight for LoRA").info(
        "with FP8 weight: keep the 16-bit weights in RAM so LoRA is added to them (better LoRA quality, more RAM); "
        "changing it reloads the checkpoint"),
    # A1111's token merging settings (modules/engine/token_merging.py)
    "token_merging_ratio": OptionInfo(
        0.0, "Token merging ratio", component_args={"minimum": 0.0, "maximum": 0.9, "step": 0.1},
        infotext="Token merging ratio").info("0=disable, higher=faster"),
    "token_merging_ratio_img2img": OptionInfo(
        0.0, "Token merging ratio for img2img", component_args={"minimum": 0.0, "maximum": 0.9, "step": 0.1},
    ).info("only applies if non-zero and overrides above"),
    "token_merging_ratio_hr": OptionInfo(
        0.0, "Token merging ratio for high-res pass", component_args={"minimum": 0.0, "maximum": 0.9, "step": 0.1},
        infotext="Token merging ratio hr").info("only applies if non-zero and overrides above"),
}))

# Noise (modules.rng) and live previews (modules.shared_state, modules.engine.previews).
categories.register_category("ui", "User interface")

options_templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
    "randn_source": OptionInfo(
        "GPU", "Random number generator source.", component_args={"choices": ["GPU", "CPU", "NV"]}, infotext="RNG"
    ).info(
        "changes seeds drastically; use CPU to produce the same picture across different videocard vendors; "
        "use NV to produce same picture as on NVidia videocards"
    ),
}))

options_templates.update(options_section(("sampler-params", "Sampler parameters", "sd"), {
    # The step noise is seeded with seed + ENSD; seeds reach 2**63 - 1 and torch takes seeds below 2**64, so
    # A1111's 32-bit seed range keeps every sum valid (2**80 once broke every ancestral job).
    "eta_noise_seed_delta": OptionInfo(
        0, "Eta noise seed delta", component_args={"precision": 0}, infotext="ENSD", minimum=0, maximum=2**32 - 1,
    ).info(
        "ENSD; does not improve anything, just produces different results for ancestral samplers - "
        "only useful for reproducing images"
    ),
}))

options_templates.update(options_section(("ui", "Live previews", "ui"), {
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "live_previews_image_format": OptionInfo(
        "png", "Live preview file format", component_args={"choices": ["jpeg", "png", "webp"]}
    ),
    "show_progress_grid": OptionInfo(True, "Show previews of all images generated in a batch as a grid"),
    "show_progress_every_n_steps": OptionInfo(
        10, "Live preview display period", component_args={"minimum": -1, "maximum": 32, "step": 1}
    ).info("in sampling steps - show new live preview image every N sampling steps; -1 = only show after completion of batch"),
    "show_progress_type": OptionInfo(
        "Approx cheap", "Live preview method",
        component_args={"choices": ["Full", "Approx NN", "Approx cheap", "TAESD"]},
    ).info(
        "Full = slow but accurate; Approx NN and TAESD = fast, need models/VAE-approx/model.pt "
        "(SDXL: vaeapprox-sdxl.safetensors) and models/VAE-taesd/taesd_decoder.pth (SDXL: taesdxl_decoder.pth), "
        "never downloaded: without the file the preview is Approx cheap; "
        "Approx cheap = super fast but terrible otherwise"
    ),
    "live_preview_refresh_period": OptionInfo(1000, "Progressbar and preview update period", minimum=0).info(
        "in milliseconds"
    ),
}))

# HTTP API limits (modules.api). restrict_api: a client must not be able to raise its own limits.
categories.register_category("system", "System")

options_templates.update(options_section(("system", "System", "system"), {
    "multiple_tqdm": OptionInfo(True, "Add a second progress bar to the console that shows progress for an entire job."),
    "list_hidden_files": OptionInfo(True, "Load models/files in hidden directories").info(
        'directory is hidden if its name starts with "."'),
}))

options_templates.update(options_section(("api", "API", "system"), {
    "api_max_width": OptionInfo(
        4096, "API: largest width", component_args={"minimum": 64, "maximum": 16384, "step": 8}, restrict_api=True),
    "api_max_height": OptionInfo(
        4096, "API: largest height", component_args={"minimum": 64, "maximum": 16384, "step": 8}, restrict_api=True),
    "api_max_steps": OptionInfo(
        500, "API: most sampling steps", component_args={"minimum": 1, "maximum": 10000, "step": 1},
        restrict_api=True),
    "api_max_batch_size": OptionInfo(
        16, "API: largest batch size", component_args={"minimum": 1, "maximum": 256, "step": 1}, restrict_api=True),
    "api_max_n_iter": OptionInfo(
        100, "API: largest batch count (n_iter)", component_args={"minimum": 1, "maximum": 10000, "step": 1},
        restrict_api=True),
    "api_max_init_images": OptionInfo(
        16, "API: most init images in one img2img request", component_args={"minimum": 1, "maximum": 1000, "step": 1},
        restrict_api=True),
    "api_max_input_pixels": OptionInfo(
        25_000_000, "API: most pixels in an uploaded image", component_args={"minimum": 4096, "step": 1},
        restrict_api=True).info("larger images, and decompression bombs, are refused before they are decoded"),
    "api_max_body_mb": OptionInfo(
        100, "API: largest request body, in MB", component_args={"minimum": 1, "maximum": 4096, "step": 1},
        restrict_api=True),
    "api_max_prompt_chars": OptionInfo(
        20000, "API: longest prompt or negative prompt, in characters", minimum=1, restrict_api=True,
    ).info("longer ones are refused (422); the UI's token counter does not count them"),
    "api_max_work": OptionInfo(
        2000, "API: most work in one request, in megapixel-steps (batch size × batch count × steps × width × "
        "height / 1,000,000)", minimum=1, restrict_api=True,
    ).info("512×512, 50 steps, batch size 8, batch count 4 is about 420; larger requests are refused (413)"),
    "queue_max_jobs": OptionInfo(
        64, "Queue: most jobs waiting, from the UI and the API together", minimum=1, restrict_api=True,
    ).info("more are refused (API: 429) until some have run"),
    "queue_max_jobs_per_client": OptionInfo(
        4, "Queue: most jobs one client may have waiting or running", minimum=1, restrict_api=True,
    ).info("a client is an API user (--api-auth) or else an address, or a browser tab of the UI; "
           "behind a reverse proxy all API clients share its address"),
    "queue_max_waiting_mb": OptionInfo(
        256, "Queue: most MB of uploaded images (as sent, base64) held by API requests waiting to run",
        minimum=1, restrict_api=True,
    ).info("the server holds 2 to 3 times this in memory; a request that would pass it is refused (429) while "
           "others wait"),
    "queue_batch_jobs": OptionInfo(
        False, "Queue: run compatible waiting jobs together as one batch (faster for servers)", restrict_api=True,
    ).info("txt2img jobs of one image with the same model, size, sampler, steps, CFG, settings and LoRA tags, no "
           "scripts, hires fix or saving (API requests by default); each still gets its own images, seeds and "
           "infotext"),
    "queue_batch_max": OptionInfo(
        8, "Queue: most jobs run together as one batch", minimum=1, restrict_api=True,
    ),
}))

# Saving pictures and grids (modules.images, modules.processing), with A1111's keys, defaults and sections.
categories.register_category("saving", "Saving images")
categories.register_category("postprocessing", "Postprocessing")

IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp", "avif")
_PATTERNS_WIKI = "https://github.com/AUTOMATIC1111/stable-diffusion-webui/wiki/Custom-Images-Filename-Name-and-Subdirectory"


def _image_formats() -> dict[str, list[str]]:
    # A1111's list, less what this Pillow cannot write (AVIF needs a recent one): a choice must save
    from PIL import Image

    known = Image.registered_extensions()
    return {"choices": [f for f in IMAGE_FORMATS if f".{f}" in known]}


options_templates.update(options_section(("saving-images", "Saving images/grids", "saving"), {
    "samples_save": OptionInfo(True, "Always save all generated images"),
    "samples_format": OptionInfo("png", "File format for images", component_args=_image_formats),
    "samples_filename_pattern": OptionInfo("", "Images filename pattern").link("wiki", _PATTERNS_WIKI),
    "save_images_add_number": OptionInfo(True, "Add number to filename when saving"),
    "save_images_replace_action": OptionInfo(
        "Replace", "Saving the image to an existing file",
        component_args={"choices": ["Replace", "Add number suffix"]}),
    "grid_save": OptionInfo(True, "Always save all generated image grids"),
    "grid_format": OptionInfo("png", "File format for grids", component_args=_image_formats),
    "grid_extended_filename": OptionInfo(False, "Add extended info (seed, prompt) to filename when saving grid"),
    "grid_prevent_empty_spots": OptionInfo(False, "Prevent empty spots in grid (when set to autodetect)"),
    "n_rows": OptionInfo(
        -1, "Grid row count; use -1 for autodetect and 0 for it to be same as batch size",
        component_args={"minimum": -1, "maximum": 16, "step": 1}),
    "font": OptionInfo("", "Font for image grids that have text"),
    "grid_text_active_color": OptionInfo("#000000", "Text color for image grids"),
    "grid_text_inactive_color": OptionInfo("#999999", "Inactive text color for image grids"),
    "grid_background_color": OptionInfo("#ffffff", "Background color for image grids"),
    "jpeg_quality": OptionInfo(
        80, "Quality for saved jpeg and avif images", component_args={"minimum": 1, "maximum": 100, "step": 1}),
    "webp_lossless": OptionInfo(False, "Use lossless compression for webp images"),
    "img_max_size_mp": OptionInfo(200, "Maximum image size", minimum=0).info("in megapixels"),
    "save_selected_only": OptionInfo(True, "When using 'Save' button, only save a single selected image"),
}))

# Empty output folders mean <data dir>/outputs/<kind>-images (-grids): A1111's defaults, kept under --data-dir.
options_templates.update(options_section(("saving-paths", "Paths for saving", "saving"), {
    "outdir_samples": OptionInfo("", "Output directory for images; if empty, defaults to three directories below",
                                 restrict_api=True),
    "outdir_txt2img_samples": OptionInfo("", "Output directory for txt2img images", restrict_api=True).info(
        "if empty: outputs/txt2img-images in the data directory"),
    "outdir_img2img_samples": OptionInfo("", "Output directory for img2img images", restrict_api=True).info(
        "if empty: outputs/img2img-images in the data directory"),
    "outdir_grids": OptionInfo("", "Output directory for grids; if empty, defaults to two directories below",
                               restrict_api=True),
    "outdir_txt2img_grids": OptionInfo("", "Output directory for txt2img grids", restrict_api=True).info(
        "if empty: outputs/txt2img-grids in the data directory"),
    "outdir_img2img_grids": OptionInfo("", "Output directory for img2img grids", restrict_api=True).info(
        "if empty: outputs/img2img-grids in the data directory"),
    "outdir_save": OptionInfo("log/images", "Directory for saving images using the Save button", restrict_api=True
                              ).info("relative to the data directory"),
}))

options_templates.update(options_section(("saving-to-dirs", "Saving to a directory", "saving"), {
    "save_to_dirs": OptionInfo(True, "Save images to a subdirectory"),
    "grid_save_to_dirs": OptionInfo(True, "Save grids to a subdirectory"),
    "use_save_to_dirs_for_ui": OptionInfo(False, 'When using "Save" button, save images to a subdirectory'),
    "directories_filename_pattern": OptionInfo("[date]", "Directory name pattern").link("wiki", _PATTERNS_WIKI),
    "directories_max_prompt_words": OptionInfo(
        8, "Max prompt words for [prompt_words] pattern", component_args={"minimum": 1, "maximum": 20, "step": 1}),
}))

# A1111's restricted_opts: where files go, frozen by --hide-ui-dir-config; output folders are also never set
# over the API (restrict_api above), so a client cannot make the server write elsewhere.
restricted_opts.update({
    "samples_filename_pattern", "save_images_add_number", "save_images_replace_action", "directories_filename_pattern",
    "directories_max_prompt_words", "outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples",
    "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids", "outdir_save",
})



def _upscaler_names() -> list[str]:
    from modules import shared  # the registry fills shared.sd_upscalers (modules/upscalers.py)

    # None, Lanczos and Nearest always exist, even before the first refresh has listed the model files
    return [data.name for data in shared.sd_upscalers] or ["None", "Lanczos", "Nearest"]


def _refresh_upscalers() -> None:
    from modules import upscalers

    upscalers.refresh()


options_templates.update(options_section(("upscaling", "Upscaling", "postprocessing"), {
    "ESRGAN_tile": OptionInfo(192, "Tile size for ESRGAN upscalers.",
                              component_args={"minimum": 0, "maximum": 512, "step": 16}).info("0 = no tiling"),
    "ESRGAN_tile_overlap": OptionInfo(8, "Tile overlap for ESRGAN upscalers.",
                                      component_args={"minimum": 0, "maximum": 48, "step": 1}).info(
        "Low values = visible seam"),
    # "None" rather than A1111's null: the dropdown shows it as a choice (resize_image reads both as Lanczos)
    "upscaler_for_img2img": OptionInfo("None", "Upscaler for img2img", choices=_upscaler_names,
                                       component_args=lambda: {"choices": _upscaler_names()},
                                       refresh=_refresh_upscalers),
    "upscaler_models_in_memory": OptionInfo(
        1, "Upscaler models kept loaded", component_args={"minimum": 0, "maximum": 8, "step": 1}).info(
        "least recently used are unloaded first; 0 = unload after each use"),
}))


def _face_restorer_names() -> list[str]:
    from modules import face_restoration  # the built-in names, then restorers extensions added

    return face_restoration.known_names()


def _refresh_face_restorers() -> None:
    from modules import face_restoration

    face_restoration.refresh()


options_templates.update(options_section(("face-restoration", "Face restoration", "postprocessing"), {
    "face_restoration": OptionInfo(False, "Restore faces", infotext="Face restoration").info(
        "for txt2img/img2img requests that do not say; needs the model's file (see the model choice)"),
    "face_restoration_model": OptionInfo("CodeFormer", "Face restoration model", choices=_face_restorer_names,
                                         component_args=lambda: {"choices": _face_restorer_names()},
                                         refresh=_refresh_face_restorers).info(
        "GFPGAN needs a file in models/GFPGAN, CodeFormer one in models/Codeformer"),
    "code_former_weight": OptionInfo(0.5, "CodeFormer weight", minimum=0.0, maximum=1.0,
                                     component_args={"minimum": 0, "maximum": 1, "step": 0.01}).info(
        "0 = maximum effect; 1 = minimum effect"),
    "face_restoration_unload": OptionInfo(False, "Move face restoration model from VRAM into RAM after processing"),
}))


def _refresh_control_models() -> None:
    from modules.controlnet import files as control_files

    control_files.refresh()


# The sd-webui-controlnet extension's option names, so its users' config.json and API clients keep working.
options_templates.update(options_section(("control_net", "ControlNet", "sd"), {
    "control_net_unit_count": OptionInfo(3, "Multi-ControlNet: ControlNet unit number (requires restart)",
                                         component_args={"minimum": 1, "maximum": 10, "step": 1}),
    "control_net_models_path": OptionInfo("", "Extra path to scan for ControlNet models (e.g. training output "
                                          "directory)", refresh=_refresh_control_models),
    "control_net_model_cache_size": OptionInfo(2, "Model cache size (requires restart)",
                                               component_args={"minimum": 1, "maximum": 10, "step": 1}).info(
        "ControlNet/adapter models kept loaded; least recently used are unloaded first"),
    "control_net_no_detectmap": OptionInfo(False, "Do not append detectmap to output"),
    "control_net_detectmap_autosaving": OptionInfo(False, "Allow detectmap auto saving"),
    "control_net_detectedmap_dir": OptionInfo("detected_maps", "Directory for detected maps auto saving"),
}))


options_templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
    "emphasis": OptionInfo(
        "Original", "Emphasis mode", component_args={"choices": ["None", "Ignore", "Original", "No norm"]},
        infotext="Emphasis",
    ).info("makes it possible to make model to pay (more:1.1) or (less:0.9) attention to text when you use the "
           "syntax in prompt; None: disable the mechanism entirely and treat (:.1.1) as literal characters; "
           "Ignore: treat all emphasised words as if they have no emphasis; Original: the original emphasis "
           "implementation; No norm: same as original, but without normalization (seems to work better for SDXL)"),
    "comma_padding_backtrack": OptionInfo(
        20, "Prompt word wrap length limit", component_args={"minimum": 0, "maximum": 74, "step": 1},
    ).info("in tokens - for texts shorter than specified, if they don't fit into 75 token limit, move them to the "
           "next 75 token chunk"),
}))

options_templates.update(options_section(("optimizations", "Optimizations", "sd"), {
    "s_min_uncond": OptionInfo(
        0.0, "Negative Guidance minimum sigma", component_args={"minimum": 0.0, "maximum": 15.0, "step": 0.01},
        infotext="NGMS",
    ).link("PR", "https://github.com/AUTOMATIC1111/stable-diffusion-webui/pull/9177").info(
        "skip negative prompt for some steps when the image is almost ready; 0=disable, higher=faster"),
}))

# Hires. fix (modules.hires): A1111's options, in A1111's sections.
options_templates.update(options_section(("saving-images", "Saving images/grids", "saving"), {
    "save_images_before_highres_fix": OptionInfo(False, "Save a copy of image before applying highres fix."),
}))
options_templates.update(options_section(("refiner", "Refiner", "sd"), {
    "hires_fix_refiner_pass": OptionInfo(
        "second pass", "Hires fix: which pass to enable refiner for",
        component_args={"choices": ["first pass", "second pass", "both passes"]}),
}))

options_templates.update(options_section(("compatibility", "Compatibility", "sd"), {
    "auto_backcompat": OptionInfo(True, "Automatic backward compatibility").info(
        "automatically enable options for backwards compatibility when importing generation parameters from "
        "infotext that has program version."),
    "use_old_karras_scheduler_sigmas": OptionInfo(False, "Use old karras scheduler sigmas (0.1 to 10)."),
    "use_old_hires_fix_width_height": OptionInfo(
        False, "For hires fix, use width/height sliders to set final resolution rather than first pass (disables "
        "Upscale by, Resize width/height to).").info("read when pasting infotext of a hires fix picture"),
}))

# The settings every sampler reads (modules.engine.sampling.sampler); a request's own eta / s_* win over them.
options_templates.update(options_section(("sampler-params", "Sampler parameters", "sd"), {
    "eta_ddim": OptionInfo(
        0.0, "Eta for DDIM", component_args={"minimum": 0.0, "maximum": 1.0, "step": 0.01}, infotext="Eta DDIM",
    ).info("noise multiplier; higher = more unpredictable results"),
    "ddim_discretize": OptionInfo(
        "uniform", "img2img DDIM discretize", component_args={"choices": ["uniform", "quad"]},
    ).info("timesteps of DDIM in img2img: evenly spaced, or quadratic (denser at low noise)"),
    "eta_ancestral": OptionInfo(
        1.0, "Eta for k-diffusion samplers", component_args={"minimum": 0.0, "maximum": 1.0, "step": 0.01},
        infotext="Eta",
    ).info("noise multiplier; applies to ancestral samplers (Euler a, DPM++ 2S a) and SDE samplers"),
    "s_churn": OptionInfo(
        0.0, "sigma churn", component_args={"minimum": 0.0, "maximum": 100.0, "step": 0.01}, infotext="Sigma churn",
    ).info("amount of stochasticity; only applies to Euler, Heun, and DPM2"),
    "s_tmin": OptionInfo(
        0.0, "sigma tmin", component_args={"minimum": 0.0, "maximum": 10.0, "step": 0.01}, infotext="Sigma tmin",
    ).info("enable stochasticity; start value of the sigma range; only applies to Euler, Heun, and DPM2"),
    "s_tmax": OptionInfo(
        0.0, "sigma tmax", component_args={"minimum": 0.0, "maximum": 999.0, "step": 0.01}, infotext="Sigma tmax",
    ).info("0 = inf; end value of the sigma range; only applies to Euler, Heun, and DPM2"),
    "s_noise": OptionInfo(
        1.0, "sigma noise", component_args={"minimum": 0.0, "maximum": 1.1, "step": 0.001}, infotext="Sigma noise",
    ).info("amount of additional noise to counteract loss of detail during sampling"),
    "sigma_min": OptionInfo(0.0, "sigma min", infotext="Schedule min sigma", minimum=0).info(
        "0 = default (~0.03); minimum noise strength for k-diffusion noise scheduler"),
    "sigma_max": OptionInfo(0.0, "sigma max", infotext="Schedule max sigma", minimum=0).info(
        "0 = default (~14.6); maximum noise strength for k-diffusion noise scheduler"),
    "rho": OptionInfo(0.0, "rho", infotext="Schedule rho", minimum=0).info(
        "0 = default (7 for karras, 1 for polyexponential); higher values result in a steeper noise schedule "
        "(decreases faster)"),
    "always_discard_next_to_last_sigma": OptionInfo(
        False, "Always discard next-to-last sigma", infotext="Discard penultimate sigma",
    ).link("PR", "https://github.com/AUTOMATIC1111/stable-diffusion-webui/pull/6044"),
    # A1111 also offers vary_coeff, which the UniPC here does not implement
    "uni_pc_variant": OptionInfo(
        "bh1", "UniPC variant", component_args={"choices": ["bh1", "bh2"]}, infotext="UniPC variant"),
    "uni_pc_skip_type": OptionInfo(
        "time_uniform", "UniPC skip type", component_args={"choices": ["time_uniform", "time_quadratic", "logSNR"]},
        infotext="UniPC skip type"),
    "uni_pc_order": OptionInfo(
        3, "UniPC order", component_args={"minimum": 1, "maximum": 50, "step": 1}, infotext="UniPC order",
    ).info("must be < sampling steps"),
    "uni_pc_lower_order_final": OptionInfo(True, "UniPC lower order final", infotext="UniPC lower order final"),
    "beta_dist_alpha": OptionInfo(
        0.6, "Beta scheduler - alpha", component_args={"minimum": 0.01, "maximum": 1.0, "step": 0.01},
        infotext="Beta schedule alpha",
    ).info("Default = 0.6; the alpha parameter of the beta distribution used in Beta sampling"),
    "beta_dist_beta": OptionInfo(
        0.6, "Beta scheduler - beta", component_args={"minimum": 0.01, "maximum": 1.0, "step": 0.01},
        infotext="Beta schedule beta",
    ).info("Default = 0.6; the beta parameter of the beta distribution used in Beta sampling"),
}))

options_templates.update(options_section(("infotext", "Infotext", "ui"), {
    "enable_pnginfo": OptionInfo(True, "Write infotext to metadata of the generated image"),
    "save_txt": OptionInfo(False, "Create a text file with infotext next to every generated image"),
    "disable_weights_auto_swap": OptionInfo(True, "Disregard checkpoint information from pasted infotext").info(
        "when reading generation parameters from text into UI"),
    "infotext_skip_pasting": OptionInfo([], "Disregard fields from pasted infotext"),
    "infotext_styles": OptionInfo(
        "Apply if any", "Infer styles from prompts of pasted infotext",
        component_args={"choices": ["Ignore", "Apply", "Discard", "Apply if any"]},
    ).info("when reading generation parameters from text into UI"),
}))

options_templates.update(options_section(("ui_gallery", "Gallery", "ui"), {
    "return_grid": OptionInfo(True, "Show grid in gallery"),
}))

# Written by the model loader, shown by GET /options; registered so a client may POST back what it read.
options_templates.update(options_section((None, "Hidden options"), {
    # None, not A1111's "": the loader stores None when hashing is off (--no-hashing)
    "sd_checkpoint_hash": OptionInfo(None, "SHA256 hash of the current checkpoint", restrict_api=True),
}))

# Extensions (modules/extensions.py); kept off the Settings page, as in A1111: the Extensions tab sets them.
options_templates.update(options_section((None, "Hidden options"), {
    "disabled_extensions": OptionInfo([], "Disable these extensions"),
    "disable_all_extensions": OptionInfo(
        "none", "Disable all extensions (preserves the list of disabled extensions)",
        component_args={"choices": ["none", "extra", "all"]}),
}))


def _lora_choices() -> list[str]:
    from modules.networks import files  # reads model headers: not at import time

    return ["None", *files.available_networks]


def _refresh_loras() -> None:
    from modules.networks import files

    files.list_available_networks()


options_templates.update(options_section(("extra_networks", "Extra Networks", "sd"), {
    "extra_networks_default_multiplier": OptionInfo(
        1.0, "Default multiplier for extra networks", minimum=0.0, maximum=2.0,
        component_args={"minimum": 0.0, "maximum": 2.0, "step": 0.01}),
    "extra_networks_add_text_separator": OptionInfo(" ", "Extra networks separator").info(
        "what to put between the prompt and a card's text when a card is clicked"),
    "extra_networks_card_order_field": OptionInfo(
        "Path", "Default order field for Extra Networks cards",
        component_args={"choices": ["Path", "Name", "Date Created", "Date Modified"]}),
    "extra_networks_card_order": OptionInfo("Ascending", "Default order for Extra Networks cards",
                                            component_args={"choices": ["Ascending", "Descending"]}),
    "sd_lora": OptionInfo("None", "Add network to prompt", choices=_lora_choices,
                          component_args=lambda: {"choices": _lora_choices()}, refresh=_refresh_loras).info(
        "this LoRA is added to every prompt at the default multiplier"),
    "lora_preferred_name": OptionInfo("Alias from file", "When adding to prompt, refer to Lora by",
                                      component_args={"choices": ["Alias from file", "Filename"]}),
    "lora_add_hashes_to_infotext": OptionInfo(True, "Add Lora hashes to infotext"),
    "lora_show_all": OptionInfo(False, "Always show all networks on the Lora page").info(
        "otherwise, those detected as for an incompatible version of Stable Diffusion are dimmed"),
    "textual_inversion_add_hashes_to_infotext": OptionInfo(True, "Add Textual Inversion hashes to infotext"),
    "textual_inversion_print_at_load": OptionInfo(False, "Print a list of Textual Inversion embeddings when loading model"),
    "lora_in_memory_limit": OptionInfo(
        0, "Number of Lora networks to keep cached in memory", minimum=0, maximum=64,
        component_args={"minimum": 0, "maximum": 64, "step": 1}).info(
        "besides those applied now; switching between cached ones does not read the disk"),
}))


# Extras (modules/postprocessing.py): where it saves, how batch files are named, the order of its scripts.
def _postprocessing_script_names() -> list[str]:
    from modules import scripts_postprocessing

    return [s.name for s in scripts_postprocessing.runner().scripts_in_preferred_order() if s.name]


options_templates.update(options_section(("saving-paths", "Paths for saving", "saving"), {
    "outdir_extras_samples": OptionInfo("", "Output directory for images from extras tab", restrict_api=True).info(
        "if empty: outputs/extras-images in the data directory"),
}))
options_templates.update(options_section(("saving-images", "Saving images/grids", "saving"), {
    "use_original_name_batch": OptionInfo(True, "Use original name for output filename during batch process in "
                                                "extras tab"),
}))
options_templates.update(options_section(("postprocessing", "Postprocessing", "postprocessing"), {
    "postprocessing_operation_order": OptionInfo([], "Postprocessing operation order",
                                                 choices=_postprocessing_script_names).info(
        "the Extras tab runs these first, in this order; the others follow in their usual order"),
}))
restricted_opts.add("outdir_extras_samples")
options_templates.update(options_section(("saving-paths", "Paths for saving", "saving"), {
    "outdir_depth_samples": OptionInfo("", "Output directory for depth maps from the Depth tab",
                                       restrict_api=True).info("if empty: outputs/depth-images in the data directory"),
}))
restricted_opts.add("outdir_depth_samples")


options_templates.update(options_section(("img2img", "img2img", "sd"), {
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies.").info(
        "normally you'd do less with less denoising"),
}))
