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

# Components are left to the UI layer (no gradio import here); sliders carry their range in component_args.
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
