"""CUDA-graph replay of the UNet gives the eager result and follows weights that move (CUDA only)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_family

from modules import devices
from modules.engine.unet_call import UNetInput, unet_call

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(unet, batch=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, unet.config.in_channels, size, size, generator=g).cuda()
    t = torch.full((batch,), 500.0).cuda()
    ctx = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g).cuda()
    return x, t, ctx


def test_replay_matches_eager_for_new_inputs_and_shapes():
    unet = build_family("sd1").unet.cuda().eval()
    for seed, size in ((0, 8), (1, 8), (2, 16), (3, 8)):
        x, t, ctx = _inputs(unet, size=size, seed=seed)
        eager = unet_call(unet, UNetInput(x, t, ctx))
        graphed = unet_call(unet, UNetInput(x, t, ctx), use_graphs=True)
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
    assert len(unet._sd_graph_cache.graphs) == 2


def test_sdxl_added_conditioning_is_graphed_too():
    unet = build_family("sdxl").unet.cuda().eval()
    x, t, ctx = _inputs(unet)
    added = {"text_embeds": torch.randn(2, 32).cuda(), "time_ids": torch.rand(2, 6).cuda() * 64}
    torch.testing.assert_close(unet_call(unet, UNetInput(x, t, ctx, added), use_graphs=True), unet_call(unet, UNetInput(x, t, ctx, added)),
                               rtol=1e-4, atol=1e-4)


def test_graphs_follow_weights_that_move_and_padding_changes():
    unet = build_family("sd1").unet.cuda().eval()
    x, t, ctx = _inputs(unet)
    first = unet_call(unet, UNetInput(x, t, ctx), use_graphs=True)
    devices.move_modules([unet], devices.cpu)
    devices.move_modules([unet], torch.device("cuda"))
    torch.testing.assert_close(unet_call(unet, UNetInput(x, t, ctx), use_graphs=True), first, rtol=1e-4, atol=1e-4)
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding_mode = "circular"
    torch.testing.assert_close(unet_call(unet, UNetInput(x, t, ctx), use_graphs=True), unet_call(unet, UNetInput(x, t, ctx)),
                               rtol=1e-4, atol=1e-4)


def test_graphs_follow_the_attention_setting():
    """A graph records the attention kernels it was captured with: a switch (and the fp16 upcast) re-captures."""
    from torch.profiler import ProfilerActivity, profile

    from modules import attention_choices as names
    from modules import attention_optimization as attention

    unet = build_family("sd1").unet.cuda().half().eval()
    x, t, ctx = _inputs(unet)
    try:
        for choice, upcast in ((names.SDP, False), (names.NONE, False), (names.NONE, True),
                               (names.SDP_NO_MEM, False)):
            attention.apply(choice)
            attention.set_upcast(upcast)
            eager = unet_call(unet, UNetInput(x, t, ctx))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                graphed = unet_call(unet, UNetInput(x, t, ctx), use_graphs=True)  # captured now: ops are seen
            torch.testing.assert_close(graphed, eager, rtol=2e-3, atol=2e-3)
            ops = {e.name for e in prof.events() if "scaled_dot_product" in e.name}
            assert ("aten::_scaled_dot_product_attention_math" in ops) == (choice == names.NONE), (choice, ops)
    finally:
        attention.set_kernels(attention.ALL_KERNELS)
        attention.set_upcast(False)
