"""The compiled UNet (setting `compile_unet`): compiled once per input structure, equal to the plain forward, never
recompiled by weight (LoRA) or value changes, and a compiler failure never fails a job. On the CPU with a counting
backend over dynamo's tracing ("aot_eager" semantics), so the machinery is tested without generating kernels; a
callable backend cannot go to a compile process, so here the job that first needs a structure compiles it in its
thread (tests/test_unet_compile_worker.py covers compile processes); tests/test_unet_compile_cuda.py runs inductor
on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import build_family

from modules import processing, sd_models, shared
from modules.engine import unet_compile
from modules.engine.unet_call import UNetInput, unet_call
from modules.engine.unet_graph import bump_structure_version


class CountingBackend:
    """A torch.compile backend that counts compilations and runs the traced graph as is."""

    def __init__(self, fail: bool = False):
        self.compiles = 0
        self.fail = fail

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.compiles += 1
        if self.fail:
            raise RuntimeError("the compiler broke")
        return gm.forward


@pytest.fixture
def backend(monkeypatch):
    counting = CountingBackend()
    monkeypatch.setattr(unet_compile, "BACKEND", counting)
    torch._dynamo.reset()
    yield counting
    torch._dynamo.reset()


def _inputs(unet, batch=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    t = torch.full((batch,), 500.0)
    ctx = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return UNetInput(x, t, ctx)


def test_the_first_call_compiles_and_the_compiled_forward_gives_the_same_output(backend):
    unet = build_family("sd1").unet.eval()
    inp = _inputs(unet)
    plain = unet_call(unet, inp)
    first = unet_call(unet, inp, compiled=True)
    assert backend.compiles >= 1 and unet._sd_compiler.ready
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)
    compiles = backend.compiles
    torch.testing.assert_close(unet_call(unet, inp, compiled=True), plain, rtol=1e-5, atol=1e-5)
    assert backend.compiles == compiles


def test_weights_changed_in_place_and_new_values_do_not_recompile_a_new_size_compiles_once(backend):
    unet = build_family("sd1").unet.eval()
    unet_compile.forward_for(unet, _forward(), *_call_args(_inputs(unet)))
    compiles = backend.compiles
    # a LoRA patch writes into the existing storage: the compiled forward must see it without recompiling
    weight = unet.conv_in.weight
    with torch.no_grad():
        weight.add_(0.5)
    inp = _inputs(unet, seed=4)
    torch.testing.assert_close(unet_call(unet, inp, compiled=True), unet_call(unet, inp), rtol=1e-5, atol=1e-5)
    assert backend.compiles == compiles
    bigger = _inputs(unet, size=16)
    unet_compile.forward_for(unet, _forward(), *_call_args(bigger))
    assert backend.compiles == compiles + 1
    unet_call(unet, _inputs(unet, size=16, seed=9), compiled=True)
    assert backend.compiles == compiles + 1


def test_a_changed_forward_structure_starts_a_fresh_compile(backend):
    unet = build_family("sd1").unet.eval()
    unet_compile.forward_for(unet, _forward(), *_call_args(_inputs(unet)))
    before = unet._sd_compiler
    bump_structure_version(unet)  # e.g. IP-Adapter swapped the attention processors
    unet_compile.forward_for(unet, _forward(), *_call_args(_inputs(unet)))
    assert unet._sd_compiler is not before and unet._sd_compiler.ready


def test_a_compiler_failure_leaves_the_plain_forward_running(monkeypatch, caplog):
    monkeypatch.setattr(unet_compile, "BACKEND", CountingBackend(fail=True))
    torch._dynamo.reset()
    unet = build_family("sd1").unet.eval()
    inp = _inputs(unet)
    plain = unet_call(unet, inp)
    torch.testing.assert_close(unet_call(unet, inp, compiled=True), plain)  # the job goes on uncompiled
    assert unet._sd_compiler.failed
    assert "keeps running uncompiled" in caplog.text
    torch.testing.assert_close(unet_call(unet, inp, compiled=True), plain)
    torch._dynamo.reset()


def _forward():
    from modules.engine.unet_call import unet_forward

    return unet_forward


def _call_args(inp: UNetInput) -> tuple[tuple, dict]:
    return (inp.x, inp.t, inp.context), {}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


def _txt2img(seed: int) -> np.ndarray:
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a red circle", negative_prompt="blurry", steps=3, width=64, height=64, sampler_name="Euler",
        seed=seed, cfg_scale=7.0, do_not_save_samples=True, do_not_save_grid=True)
    return np.asarray(processing.process_images(p).images[0], dtype=np.int16)


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_a_job_with_compile_unet_on_gives_the_same_picture(data_dir, backend, monkeypatch):
    model = sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
    plain = _txt2img(5)
    from modules.models.patcher import patcher_for

    storages = patcher_for(model).storage_version  # the patcher LoRA would use
    monkeypatch.setitem(shared.opts.data, "compile_unet", True)
    compiled = _txt2img(5)
    assert backend.compiles >= 1
    assert np.abs(compiled - plain).max() <= 1
    # compiled over channels-last weights, as diffusers' speed guide does; the patcher knows its storages changed
    for module in (model.unet, model.vae):
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(module))
    assert model.unet._sd_patcher.storage_version == storages + 1
    monkeypatch.setitem(shared.opts.data, "compile_unet", False)
    assert np.abs(_txt2img(5) - plain).max() <= 1  # and the layout stays, harmless, once compiling is off


def test_the_vae_decoder_is_compiled_too_and_tiles_use_the_plain_decoder(data_dir, backend, monkeypatch):
    from modules.engine import generate

    model = sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = generate.vae_decode(model, latents)
    monkeypatch.setitem(shared.opts.data, "compile_unet", True)
    compiled = generate.vae_decode(model, latents)
    assert backend.compiles >= 1 and model.vae._sd_compiler.ready
    torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-5)
    compiles = backend.compiles
    generate.vae_decode(model, latents, tile_size=64)  # 128 px picture in 64 px tiles: diffusers' tiled path
    assert backend.compiles == compiles and len(model.vae._sd_compiler.ready) == 1
