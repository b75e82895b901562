"""IP-Adapter under CUDA-graph replay (CUDA only): graphed equals eager, and no graph is ever stale.

Tiny SD1 checkpoint in fp16 on the GPU with a tiny base and a tiny plus IP-Adapter, whole jobs through
`process_images` with the built-in ControlNet script. The processors read the IP scale as a number that a graph
records; the scales travel in the graph key, and installing or removing the adapter bumps the UNet's structure
version. So a changed weight, a guidance window that switches the scale mid-run, and a plain job after an
IP-Adapter job must each give what the same job gives without graphs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from generation_capture import latents_of
from ip_adapter_files import CLIP_HIDDEN, CLIP_PROJECTION, ip_adapter_state, save_ip_adapter, write_clip_vision
from PIL import Image, ImageDraw
from tiny_models import build_unet

from modules import devices
from modules.controlnet import files, ip_adapter, loading
from modules.engine import unet_graph
from modules.models.loader import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# fp16 on the GPU, 4 Euler steps; graphed and eager runs pick kernels separately
TOLERANCE = {"rtol": 1e-2, "atol": 2e-2}


@pytest.fixture(scope="module")
def gpu_model(isolated_data_dir, tmp_path_factory) -> Iterator:
    root = tmp_path_factory.mktemp("ip-cuda")
    with isolated_data_dir(root, {"tiny.safetensors": {"family": "sd1", "seed": 3}},
                           settings={"live_previews_enable": False}):
        unet = build_unet("sd1")
        save_ip_adapter(root / "models" / "ControlNet" / "ip_base.bin", ip_adapter_state(unet, "base",
                                                                                         CLIP_PROJECTION, 1))
        save_ip_adapter(root / "models" / "ControlNet" / "ip_plus.safetensors",
                        ip_adapter_state(unet, "plus", CLIP_HIDDEN, 2))
        write_clip_vision(root / "models" / "clip_vision" / "tiny_vit.safetensors", seed=2)
        files.refresh()
        path = root / "models" / "Stable-diffusion" / "tiny.safetensors"
        model = load_model(str(path), devices.choose_precision(torch.device("cuda")))
        try:
            yield model
        finally:
            ip_adapter.unload_all()
            loading.unload_all()
            del model
            torch.cuda.empty_cache()


def picture() -> np.ndarray:
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    ImageDraw.Draw(image).ellipse([30, 10, 70, 50], fill=(20, 40, 220))
    return np.asarray(image)




def unit(name: str = "ip_base", weight: float = 0.7, **kw) -> dict:
    return {"module": "ip-adapter_clip_sd15", "model": name, "weight": weight, "image": picture(), **kw}


def test_graphed_ip_adapter_equals_eager_and_never_goes_stale(gpu_model, monkeypatch):
    model = gpu_model
    assert model.unet.dtype == torch.float16 and model.device.type == "cuda"
    plain_eager = latents_of(model, monkeypatch, False, [])
    plain_graphed = latents_of(model, monkeypatch, True, [])
    torch.testing.assert_close(plain_graphed, plain_eager, **TOLERANCE)
    captures = []
    real_capture = unet_graph._capture

    def counting_capture(module, fn, tensors, *rest):
        captures.append(type(module).__name__)
        return real_capture(module, fn, tensors, *rest)

    monkeypatch.setattr(unet_graph, "_capture", counting_capture)
    cases = [[unit("ip_base")], [unit("ip_plus")], [unit("ip_base", 0.35)],
             [unit("ip_base", guidance_start=0.0, guidance_end=0.4)], [unit("ip_base"), unit("ip_plus", 0.5)]]
    for units in cases:
        eager = latents_of(model, monkeypatch, False, units)
        graphed = latents_of(model, monkeypatch, True, units)
        torch.testing.assert_close(graphed, eager, **TOLERANCE)
        assert (eager - plain_eager).abs().max() > 0.05  # the adapter changes the picture
        assert model.unet.encoder_hid_proj is None  # removed after each job
    # one UNet graph per job, and a second one where the window switched the scale to 0
    assert captures.count("UNet2DConditionModel") == len(cases) + 1
    # the plain job after them runs the UNet it ran before: a new graph of the restored UNet
    after = latents_of(model, monkeypatch, True, [])
    torch.testing.assert_close(after, plain_graphed, rtol=0, atol=1e-3)
    assert captures.count("UNet2DConditionModel") == len(cases) + 2
