"""With the CPU noise source (A1111's "RNG: CPU"), CPU and GPU make the same picture (CUDA only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_checkpoint

from modules import devices, processing, shared
from modules.models.loader import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _render(model, source: str) -> np.ndarray:
    shared.opts.data.update(randn_source=source, live_previews_enable=False)
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", negative_prompt="", steps=8, width=64, height=64, sampler_name="Euler a", seed=7,
        do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    return np.asarray(processing.process_images(p).images[0], dtype=np.int16)


def test_cpu_noise_gives_the_same_picture_on_cpu_and_gpu(tmp_path):
    path = tmp_path / "tiny.safetensors"
    write_tiny_checkpoint(path, "sd1", seed=2)
    on_cpu = load_model(str(path), devices.choose_precision(torch.device("cpu")))
    on_gpu = load_model(str(path), devices.choose_precision(torch.device("cuda"), no_half=True))
    try:
        cpu_image, gpu_image = _render(on_cpu, "CPU"), _render(on_gpu, "CPU")
        gpu_noise_image = _render(on_gpu, "GPU")
    finally:
        shared.opts.data["randn_source"] = "GPU"
    assert np.abs(cpu_image - gpu_image).max() <= 3  # float differences between devices only
    assert np.abs(cpu_image - gpu_noise_image).max() > 10  # GPU noise is a different picture
