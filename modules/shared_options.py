"""Built-in settings templates, with A1111's keys, defaults, labels and sections.

Only settings that concern what exists now are here. This is a registry: later modules and extensions add
their settings with `shared.opts.add_option(key, OptionInfo(...))` (or `options_templates.update(...)` before
`shared.opts` is built), never by editing a central list.
"""

from __future__ import annotations

from modules.options import OptionInfo, categories, options_section

# Keys the UI may not change when --hide-ui-dir-config is set (output dirs, filename patterns); none exist yet.
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
}))

options_templates.update(options_section(("optimizations", "Optimizations", "sd"), {
    "cross_attention_optimization": OptionInfo("Automatic", "Cross attention optimization"),
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
        "Approx cheap", "Live preview method", component_args={"choices": ["Full", "Approx cheap"]}
    ).info("Full = slow but accurate; Approx cheap = super fast but terrible otherwise"),
    "live_preview_refresh_period": OptionInfo(1000, "Progressbar and preview update period", minimum=0).info(
        "in milliseconds"
    ),
}))

# HTTP API limits (modules.api). restrict_api: a client must not be able to raise its own limits.
categories.register_category("system", "System")

options_templates.update(options_section(("system", "System", "system"), {
    "multiple_tqdm": OptionInfo(True, "Add a second progress bar to the console that shows progress for an entire job."),
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
}))
