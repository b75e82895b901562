"""ControlNet under CUDA-graph replay (CUDA only): graphed equals eager, graphs never stale.

Tiny SD1 checkpoint and two tiny ControlNets in fp16 on the GPU, whole jobs through `process_images` with the
built-in ControlNet script. With graphs on, the UNet and each ControlNet are replayed; the latents must equal the
eager run's within fp16 rounding, and switching A -> B -> A, or changing the weight, must give each job exactly
what a job with graphs that never saw the other model gives (a stale graph would replay A's weights for B).
"""

from __future__ import annotations

from collections.abc import Iterator

import generation_capture
import numpy as np
import pytest
import torch
from controlnet_files import write_controlnet
from PIL import Image, ImageDraw

from modules import devices
from modules.controlnet import files, loading
from modules.engine import unet_graph
from modules.models.loader import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_model(isolated_data_dir, tmp_path_factory) -> Iterator:
    root = tmp_path_factory.mktemp("cn-cuda")
    with isolated_data_dir(root, {"tiny.safetensors": {"family": "sd1", "seed": 3}},
                           settings={"live_previews_enable": False}):
        folder = root / "models" / "ControlNet"
        folder.mkdir(parents=True, exist_ok=True)
        write_controlnet(folder / "cn_a.safetensors", "sd1", "original", seed=1)
        write_controlnet(folder / "cn_b.safetensors", "sd1", "original", seed=2)
        files.refresh()
        path = root / "models" / "Stable-diffusion" / "tiny.safetensors"
        model = load_model(str(path), devices.choose_precision(torch.device("cuda")))
        try:
            yield model
        finally:
            loading.unload_all()
            del model
            torch.cuda.empty_cache()


def square() -> np.ndarray:
    picture = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(picture).rectangle([16, 16, 48, 48], outline="white", width=2)
    return np.asarray(picture)


def latents_of(model, monkeypatch, graphs: bool, name: str, weight: float = 1.0) -> torch.Tensor:
    return generation_capture.latents_of(model, monkeypatch, graphs, [
        {"module": "none", "model": name, "weight": weight, "image": square(), "resize_mode": "Just Resize"}])


def test_graphed_controlnet_equals_eager_and_never_goes_stale(gpu_model, monkeypatch):
    model = gpu_model
    assert model.unet.dtype == torch.float16 and model.device.type == "cuda"
    eager = {name: latents_of(model, monkeypatch, False, name) for name in ("cn_a", "cn_b")}
    assert (eager["cn_a"] - eager["cn_b"]).abs().max() > 1e-2  # the two ControlNets differ visibly
    captures = []
    real_capture = unet_graph._capture

    def counting_capture(module, fn, tensors, *rest):
        captures.append(type(module).__name__)
        return real_capture(module, fn, tensors, *rest)

    monkeypatch.setattr(unet_graph, "_capture", counting_capture)
    # A, B, A, B: each job gives its own eager result (within fp16 rounding)
    for name in ("cn_a", "cn_b", "cn_a", "cn_b"):
        graphed = latents_of(model, monkeypatch, True, name)
        torch.testing.assert_close(graphed, eager[name], rtol=1e-2, atol=2e-2)
    # one UNet graph (residuals present) and one graph per ControlNet, captured once each
    assert sorted(captures) == ["ControlNetModel", "ControlNetModel", "UNet2DConditionModel"]
    # a new weight changes the picture without a new capture
    half = latents_of(model, monkeypatch, True, "cn_a", weight=0.5)
    torch.testing.assert_close(half, latents_of(model, monkeypatch, False, "cn_a", weight=0.5), rtol=1e-2,
                               atol=2e-2)
    assert (half - eager["cn_a"]).abs().max() > 1e-3
    assert len(captures) == 3
