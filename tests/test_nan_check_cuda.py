"""The NaN check on a CUDA GPU in float16 (skipped without one): a UNet that yields only NaNs, replayed from a CUDA
graph as jobs run there, fails the job with A1111's advice (and does not send the VAE to float32, which a NaN
picture would otherwise do); the next job, with the weights repaired, gives a picture again."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from modules import devices, processing
from modules.models.loader import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model(isolated_data_dir, tmp_path_factory) -> Iterator[object]:
    root = tmp_path_factory.mktemp("nan-cuda")
    with isolated_data_dir(root, {"sd1.safetensors": {"family": "sd1", "seed": 3}}, {"live_previews_enable": False}):
        yield load_model(str(root / "models" / "Stable-diffusion" / "sd1.safetensors"),
                         devices.choose_precision(torch.device("cuda")))


def _generate(model) -> np.ndarray:
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", steps=4, cfg_scale=7.0, width=64, height=64, sampler_name="Euler", seed=7,
        do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    return np.asarray(processing.process_images(p).images[0].convert("RGB"), dtype=np.int16)


def test_all_nan_unet_in_a_cuda_graph_fails_the_job(model):
    assert model.unet.dtype == torch.float16
    first = _generate(model)  # captures the graphs
    bias = model.unet.conv_out.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(float("nan"))  # in place: the captured graph reads the same memory
    try:
        with pytest.raises(devices.NansException, match="all NaNs was produced in Unet"):
            _generate(model)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert model.vae.dtype != torch.float32  # the VAE was not blamed for the UNet's NaNs
    assert np.abs(_generate(model) - first).max() <= 2
