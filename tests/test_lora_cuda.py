"""LoRA switches under CUDA-graph replay of the UNet (CUDA only).

The patcher writes LoRA weights into the UNet's own storages, so a graph captured once must keep replaying
across LoRA switches and give, bit for bit, what the eager UNet gives with the same weights; taking every LoRA
off must give back the first picture exactly. Tiny SD1 checkpoint in fp16 on the GPU, the whole job through
`process_images` with `<lora:...>` tags, kohya files in the data dir's models/Lora.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lora_files
import numpy as np
import pytest
import torch

from modules import devices, processing, shared
from modules.engine import generate, unet_graph
from modules.models.loader import load_model
from modules.networks import files as network_files
from modules.networks import networks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LORAS = {"lora_a": 11, "lora_b": 12}  # file name -> seed of its tensors
BASE_PROMPT = "a red circle"
NONE, A, B = BASE_PROMPT, BASE_PROMPT + " <lora:lora_a:1>", BASE_PROMPT + " <lora:lora_b:1>"
LAYERS_PER_FILE = len(lora_files.SD1_UNET_LAYERS) + len(lora_files.TE_LAYERS)


@dataclass
class Result:
    latents: torch.Tensor  # what the sampler returned (float32, before the VAE)
    pixels: np.ndarray
    comments: str


@pytest.fixture(scope="module")
def gpu_model(isolated_data_dir, tmp_path_factory) -> Iterator:
    root = tmp_path_factory.mktemp("lora-cuda")
    settings = {"live_previews_enable": False, "lora_in_memory_limit": 2}
    with isolated_data_dir(root, {"tiny.safetensors": {"family": "sd1", "seed": 3}}, settings=settings):
        path = root / "models" / "Stable-diffusion" / "tiny.safetensors"
        model = load_model(str(path), devices.choose_precision(torch.device("cuda")))
        for name, seed in LORAS.items():
            # alpha 0.1 on rank 2 (scale 0.05): a change the pictures show, small enough to stay finite in fp16
            tensors = lora_files.kohya_lora(model, seed, alpha=0.1)
            lora_files.write(Path(shared.cmd_opts.lora_dir) / f"{name}.safetensors", tensors)
        network_files.list_available_networks()
        try:
            yield model
        finally:
            networks.unload(model)
            networks.networks_in_memory.clear()
            del model
            torch.cuda.empty_cache()


def _generate(model, prompt: str, graphs: bool, monkeypatch: pytest.MonkeyPatch) -> Result:
    sampled: list[torch.Tensor] = []
    real_sample_batch = generate.sample_batch

    def recording(*args, **kwargs):
        out = real_sample_batch(*args, **kwargs)
        sampled.append(out.detach().clone())
        return out

    monkeypatch.setattr(generate, "sample_batch", recording)
    shared.opts.data["cuda_graphs"] = graphs
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=prompt, negative_prompt="", steps=8, cfg_scale=7.0, width=64, height=64, sampler_name="Euler",
        seed=7, do_not_save_samples=True, do_not_save_grid=True)
    p.sd_model = model
    processed = processing.process_images(p)
    monkeypatch.setattr(generate, "sample_batch", real_sample_batch)
    assert len(sampled) == 1
    return Result(sampled[0], np.asarray(processed.images[0]), processed.comments)


def _differences(got: Result, expected: Result, what: str) -> list[str]:
    """What differs, as messages: every comparison runs, so one failing run reports all of them."""
    found = []
    if not torch.equal(got.latents, expected.latents):
        found.append(f"{what}: latents differ by up to {(got.latents - expected.latents).abs().max().item():.3g}")
    if not np.array_equal(got.pixels, expected.pixels):
        found.append(f"{what}: pictures differ")
    return found


def _unet_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


def test_lora_switches_replay_one_graph_and_match_eager_bit_for_bit(gpu_model, monkeypatch):
    model = gpu_model
    assert model.unet.dtype == torch.float16 and model.device.type == "cuda"
    captures: list[tuple] = []
    real_capture = unet_graph._capture

    def counting_capture(unet, fn, tensors, *args):
        captures.append(tuple(tensors[0].shape))
        return real_capture(unet, fn, tensors, *args)

    monkeypatch.setattr(unet_graph, "_capture", counting_capture)
    before = _unet_state(model)
    storages = {name: p.data_ptr() for name, p in model.unet.named_parameters()}
    problems: list[str] = []
    try:
        eager = {name: _generate(model, prompt, False, monkeypatch) for name, prompt in
                 (("none", NONE), ("a", A), ("b", B), ("none again", NONE))}
        assert not captures, "the eager runs must not touch CUDA graphs"
        for result in eager.values():
            assert "LoRA not applied" not in result.comments, result.comments
            assert torch.isfinite(result.latents).all()
        problems += _differences(eager["none again"], eager["none"], "eager, no LoRA after A and B")
        # The LoRAs do change the picture, each its own way (else the comparisons below would prove nothing).
        for x, y in (("a", "none"), ("b", "none"), ("a", "b")):
            assert (eager[x].latents - eager[y].latents).abs().max() > 1e-2, f"{x} and {y} give the same latents"

        unet_graph.drop_graphs(model.unet)
        graphed: dict[str, Result] = {}
        for name, prompt in (("none", NONE), ("a", A), ("b", B), ("none again", NONE)):
            graphed[name] = _generate(model, prompt, True, monkeypatch)
            if name == "a":
                assert len(networks.loaded_networks) == 1
                assert len(networks.loaded_networks[0].modules) == LAYERS_PER_FILE
            if name == "none":
                first_capture = list(captures)
                cache = getattr(model.unet, "_sd_graph_cache", None)
                assert first_capture, "the first graphed run must capture the UNet"
            problems += _differences(graphed[name], eager[name], f"graphed {name} against eager")
        if captures != first_capture:
            problems.append(f"a LoRA switch made the UNet be captured again: {captures} after {first_capture}")
        if cache is None or cache.broken or getattr(model.unet, "_sd_graph_cache", None) is not cache:
            problems.append("the graph cache was replaced or broke during the LoRA switches")
        problems += _differences(graphed["none again"], graphed["none"], "graphed, no LoRA after A and B")

        # A graph captured while a LoRA is on replays the other weights just as well.
        unet_graph.drop_graphs(model.unet)
        captures.clear()
        for name, prompt in (("b", B), ("none", NONE), ("a", A)):
            problems += _differences(_generate(model, prompt, True, monkeypatch), eager[name],
                                     f"graphed {name}, captured with lora_b on, against eager")
        if len(captures) != len(first_capture):
            problems.append(f"captured with lora_b on: {len(captures)} captures, expected {len(first_capture)}")
    finally:
        networks.load_networks([], model=model)
    assert not problems, "\n".join(problems)
    assert {name: p.data_ptr() for name, p in model.unet.named_parameters()} == storages
    after = model.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "weights not restored bit for bit"
