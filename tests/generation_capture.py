"""What a generation passed through the engine, recorded by wrapping modules.engine.generate's seams: the first
noise, the sigmas each sampler run got, the text context of every UNet evaluation and the final latents (before
the VAE). Tests compare these with diffusers' pipelines given the same noise, sigmas and contexts."""

from __future__ import annotations

from typing import Any

import torch
from controlnet_files import controlnet_runner

from modules import processing, shared
from modules.engine import generate


def capture_run(monkeypatch: Any) -> dict[str, Any]:
    """A dict that fills while generations run: "noise", "sigmas" (list), "contexts" (list), "latents"."""
    captured: dict[str, Any] = {"contexts": [], "sigmas": []}
    real_decode, real_make_noise, real_create = generate.vae_decode, generate.make_noise, generate.create_sampler
    real_unet_call = generate.unet_call

    def decode(model_, latents, **kwargs):
        captured["latents"] = latents.clone()
        return real_decode(model_, latents, **kwargs)

    def make_noise(request, shape, uses_ensd):
        source = real_make_noise(request, shape, uses_ensd)
        first = source.first

        def first_noise():
            captured["noise"] = first().clone()
            return captured["noise"]

        source.first = first_noise
        return source

    def create_sampler(name, model_):
        sampler = real_create(name, model_)
        real_sample = sampler.sample

        def sample(denoiser, x, sigmas, **kw):
            captured["sigmas"].append(sigmas.clone())
            return real_sample(denoiser, x, sigmas, **kw)

        sampler.sample = sample
        return sampler

    def spy(unet, inp, **kwargs):
        captured["contexts"].append(inp.context.clone())
        return real_unet_call(unet, inp, **kwargs)

    monkeypatch.setattr(generate, "vae_decode", decode)
    monkeypatch.setattr(generate, "make_noise", make_noise)
    monkeypatch.setattr(generate, "create_sampler", create_sampler)
    monkeypatch.setattr(generate, "unet_call", spy)
    return captured


def latents_of(model: Any, monkeypatch: Any, graphs: bool, units: list) -> torch.Tensor:
    """The final latents of a 4-step 64x64 txt2img job on `model` with ControlNet `units`, CUDA graphs on or off."""
    captured = capture_run(monkeypatch)
    shared.opts.data["cuda_graphs"] = graphs
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", negative_prompt="blurry", steps=4, width=64, height=64, sampler_name="Euler",
        seed=11, do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    p.scripts, p.script_args = controlnet_runner(units)
    processing.process_images(p)
    return captured["latents"]
