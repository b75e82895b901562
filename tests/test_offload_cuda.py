"""--medvram / --lowvram on a CUDA GPU (skipped without one): tiny fp16 models, the whole job through
`process_images`. Each mode gives the picture of plain placement (within fp16 tolerance), LoRA included (patches
written into offloaded, pinned weights), and its peak allocated memory is lower than without offloading.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from pathlib import Path

import lora_files
import numpy as np
import pytest
import torch

from modules import devices, processing, shared
from modules.models import offload
from modules.models.loader import load_model
from modules.networks import files as network_files
from modules.networks import networks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
TOLERANCE = 2  # of 255: the same kernels on the same weights; fp16 leaves room for a rounding step


@pytest.fixture(scope="module")
def models(isolated_data_dir, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("offload-cuda")
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    with isolated_data_dir(root, checkpoints, {"live_previews_enable": False, "lora_in_memory_limit": 2}):
        cpu_precision = dataclasses.replace(devices.choose_precision(CUDA), device=torch.device("cpu"))
        loaded = {name: load_model(str(root / "models" / "Stable-diffusion" / f"{name}.safetensors"), cpu_precision)
                  for name in ("sd1", "xl")}
        tensors = lora_files.kohya_lora(loaded["sd1"], 11, alpha=0.1)
        lora_files.write(Path(shared.cmd_opts.lora_dir) / "lora_a.safetensors", tensors)
        network_files.list_available_networks()
        try:
            yield loaded
        finally:
            for model in loaded.values():
                networks.unload(model)
                offload.place(model, "cpu", "none")
            networks.networks_in_memory.clear()
            loaded.clear()
            gc.collect()
            torch.cuda.empty_cache()


def _generate(model, prompt: str = "a red circle") -> np.ndarray:
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=prompt, negative_prompt="blurry", steps=6, cfg_scale=7.0, width=64, height=64, sampler_name="Euler",
        seed=7, do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    return np.asarray(processing.process_images(p).images[0].convert("RGB"), dtype=np.int16)


def _peak(model, mode: str, prompt: str = "a red circle") -> tuple[np.ndarray, int]:
    offload.place(model, "cpu", "none")
    gc.collect()
    torch.cuda.empty_cache()
    offload.place(model, CUDA, mode)
    _generate(model, prompt)  # warm-up (streams, cuDNN, CUDA graphs for "none")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    image = _generate(model, prompt)
    torch.cuda.synchronize()
    return image, torch.cuda.max_memory_allocated()


@pytest.mark.parametrize("name", ["sd1", "xl"])
def test_each_mode_gives_the_same_picture_with_less_memory(models, name, monkeypatch):
    # a card with no room to spare, as these modes are for: medvram keeps one component at a time
    monkeypatch.setattr(offload, "WORKING_ROOM", torch.cuda.get_device_properties(0).total_memory)
    model = models[name]
    plain, plain_peak = _peak(model, "none")
    for mode in ("medvram", "lowvram"):
        image, peak = _peak(model, mode)
        assert model.offload is not None and model.device.type == "cuda"
        assert np.abs(image - plain).max() <= TOLERANCE, mode
        assert peak < plain_peak, f"{mode}: peak {peak} bytes, without offloading {plain_peak}"
        # between jobs only the last component to run (the VAE) may stay: the UNet and text encoders made room
        assert all(p.device.type == "cpu" for p in model.unet.parameters()), mode
        assert all(p.device.type == "cpu" for m in model.text_encoders for p in m.parameters()), mode
        assert "_sd_graph_caches" not in vars(model.unet), mode  # the UNet's graphs left with it
    offload.place(model, CUDA, "none")
    assert np.abs(_generate(model) - plain).max() <= TOLERANCE


def test_medvram_replays_graphs_captured_again_after_each_move(models, monkeypatch):
    """On a tight card the UNet comes in for each job and leaves for the VAE: its CUDA graph is captured again
    each job, without a warm-up (one UNet forward per job beyond the replays), and gives the plain picture."""
    monkeypatch.setattr(offload, "WORKING_ROOM", torch.cuda.get_device_properties(0).total_memory)
    model = models["sd1"]
    plain, _ = _peak(model, "none")
    offload.place(model, CUDA, "medvram")
    _generate(model)  # the first capture warms up
    _generate(model)  # the UNet's weights come back into the pinned RAM they left (kept while on the GPU)
    weight = model.unet.conv_in.weight
    home = weight.data_ptr()
    assert weight.device.type == "cpu" and weight.is_pinned()
    forwards = {"n": 0}
    handle = model.unet.register_forward_pre_hook(lambda m, args: forwards.__setitem__("n", forwards["n"] + 1))
    try:
        replays = {"n": 0}
        real_replay = torch.cuda.CUDAGraph.replay
        monkeypatch.setattr(torch.cuda.CUDAGraph, "replay",
                            lambda graph: (replays.__setitem__("n", replays["n"] + 1), real_replay(graph))[1])
        image = _generate(model)
    finally:
        handle.remove()
    assert np.abs(image - plain).max() <= TOLERANCE
    assert forwards["n"] == 1 and replays["n"] == 6  # 6 steps, cond and uncond batched: one capture, no warm-up
    assert weight.data_ptr() == home  # no new pinned memory for the way back
    offload.place(model, CUDA, "none")
    assert not any("_sd_ram_home" in vars(p) for p in model.unet.parameters())  # plainly placed: no RAM copy


def test_medvram_with_room_keeps_the_components_between_jobs(models):
    """On a card with room for them the components stay after a job (nothing moves for the next one), and the
    picture is the same."""
    model = models["sd1"]
    plain, _ = _peak(model, "none")
    image, _ = _peak(model, "medvram")
    assert np.abs(image - plain).max() <= TOLERANCE
    assert all(p.device.type == "cuda" for m in (model.unet, model.vae) for p in m.parameters())
    assert model.unet._sd_graph_cache.graphs  # the UNet stayed: its calls replayed CUDA graphs
    offload.place(model, CUDA, "none")


def test_lora_on_offloaded_weights_on_the_gpu(models):
    model = models["sd1"]
    offload.place(model, CUDA, "none")
    plain = _generate(model)
    with_lora = _generate(model, "a red circle <lora:lora_a:1>")
    assert np.abs(with_lora - plain).max() > TOLERANCE
    networks.unload(model)
    for mode in ("medvram", "lowvram"):
        offload.place(model, CUDA, mode)
        assert np.abs(_generate(model, "a red circle <lora:lora_a:1>") - with_lora).max() <= TOLERANCE, mode
        assert np.abs(_generate(model) - plain).max() <= TOLERANCE, mode  # restored exactly, from pinned RAM
        assert np.abs(_generate(model, "a red circle <lora:lora_a:1>") - with_lora).max() <= TOLERANCE, mode
        networks.unload(model)
    offload.place(model, CUDA, "none")
    assert np.abs(_generate(model) - plain).max() <= TOLERANCE


def test_an_interrupted_forward_leaves_no_stale_weights(models, monkeypatch):
    """An OOM in the middle of a grouped UNet leaves groups on the device; the job's end sends them back, so a
    LoRA applied next is written where diffusers keeps the weights (pinned RAM) and is not lost."""
    model = models["sd1"]
    offload.place(model, CUDA, "none")
    with_lora = _generate(model, "a red circle <lora:lora_a:1>")
    networks.unload(model)
    offload.place(model, CUDA, "lowvram")
    layer = model.unet.up_blocks[-1]
    calls = {"n": 0}

    def fail_once(module, args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    handle = layer.register_forward_pre_hook(fail_once)
    try:
        monkeypatch.setattr(offload, "run_job", lambda fn, current, **_: _settling(fn, current))
        with pytest.raises(torch.OutOfMemoryError):
            _generate(model)
    finally:
        handle.remove()
    monkeypatch.undo()
    assert np.abs(_generate(model, "a red circle <lora:lora_a:1>") - with_lora).max() <= TOLERANCE
    networks.unload(model)
    offload.place(model, CUDA, "none")


def _settling(fn, current):
    try:
        return fn()
    finally:
        offload.settle(current())
