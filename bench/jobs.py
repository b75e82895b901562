"""The txt2img job every speed benchmark times, on our engine and on a diffusers pipeline: the same prompt,
negative prompt, seed, CFG 7 and Euler sampler, nothing saved, no live previews."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SIZES = {"sd15": 512, "sdxl": 1024}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"
SEED = 1234


def ours(model: Any, size: int, steps: int, settings: dict[str, Any] | None = None) -> Callable[[], np.ndarray]:
    """One job on `model` through `process_images`, with `settings` applied before each run; returns the picture."""
    from modules import processing, shared

    def run() -> np.ndarray:
        shared.opts.data.update({"live_previews_enable": False, **(settings or {})})
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=7.0, width=size, height=size,
            sampler_name="Euler", seed=SEED, do_not_save_samples=True, do_not_save_grid=True)
        p.sd_model = model
        return np.asarray(processing.process_images(p).images[0])

    return run


def theirs(pipe: Any, size: int, steps: int) -> Callable[[], Any]:
    """The same job on a diffusers pipeline (its scheduler set to Euler by the caller)."""
    def run() -> Any:
        generator = torch.Generator("cuda").manual_seed(SEED)
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0, width=size,
                    height=size, generator=generator)

    return run
