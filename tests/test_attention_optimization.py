"""A1111's "Cross attention optimization" setting: its choices, the flags behind "Automatic", the kernels a job then
runs on (read from torch's profiler), and the CUDA graphs and compiled forwards it makes stale."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, client, decode, pixels, serving
from torch.profiler import ProfilerActivity, profile

from modules import attention_choices as names
from modules import attention_optimization as attention
from modules import shared
from modules.api.server import create_app

FLASH_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH_OP = "aten::_scaled_dot_product_attention_math"


@pytest.fixture(autouse=True)
def all_kernels_afterwards():
    yield
    attention.set_kernels(attention.ALL_KERNELS)


def sdpa_ops(fn) -> set[str]:
    """The SDPA kernels that ran during fn() on this thread."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name in (FLASH_OP, MATH_OP)}


def flags(**on: bool) -> argparse.Namespace:
    names = ("xformers", "force_enable_xformers", "opt_sdp_no_mem_attention", "disable_opt_split_attention")
    return argparse.Namespace(**{name: on.get(name, False) for name in names})


def test_automatic_follows_a1111s_flags():
    assert names.resolve("Automatic", flags()) == names.SDP
    assert names.resolve("Automatic", flags(opt_sdp_no_mem_attention=True)) == names.SDP_NO_MEM
    assert names.resolve("Automatic", flags(disable_opt_split_attention=True)) == names.NONE
    # a chosen kernel wins over the flags, as in A1111
    assert names.resolve(names.SDP, flags(opt_sdp_no_mem_attention=True)) == names.SDP
    if not names.xformers_installed():
        assert names.resolve("Automatic", flags(xformers=True)) == names.SDP
        assert names.resolve("xformers", flags()) == names.SDP
        assert "xformers" not in names.choices()


def test_each_choice_switches_torchs_kernels():
    q = torch.randn(1, 2, 16, 8)
    run = lambda: F.scaled_dot_product_attention(q, q, q)  # noqa: E731
    attention.apply(names.NONE)
    assert sdpa_ops(run) == {MATH_OP}
    assert not torch.backends.cuda.mem_efficient_sdp_enabled()
    attention.apply(names.SDP_NO_MEM)
    assert sdpa_ops(run) == {FLASH_OP}
    assert not torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    attention.apply(names.SDP)
    assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.cudnn_sdp_enabled()


def test_a_kernel_switch_makes_recorded_graphs_and_compiled_forwards_stale():
    from modules.engine import unet_compile, unet_graph

    module = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3))
    graphs = unet_graph._GraphCache(module)
    compiled_for = unet_compile._module_version(module)
    attention.apply(names.SDP)
    assert graphs.still_valid(module) and unet_compile._module_version(module) == compiled_for
    attention.apply(names.NONE)
    assert not graphs.still_valid(module)
    assert unet_compile._module_version(module) != compiled_for


def test_the_compile_process_gets_the_parents_kernels():
    from modules.engine import compile_worker

    attention.apply(names.NONE)
    settings = compile_worker._process_settings()
    attention.apply(names.SDP)
    compile_worker._apply_settings(settings)  # as the child does before it compiles
    assert attention.current_kernels() == attention.KERNELS[names.NONE]


def test_an_a1111_config_naming_an_optimization_this_build_lacks_starts_on_automatic(tmp_path, capsys):
    from modules.options import Options
    from modules.shared_options import options_templates, restricted_opts

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"cross_attention_optimization": "Doggettx", "upcast_attn": True}))
    opts = Options(options_templates, restricted_opts)
    opts.load(str(config))
    assert opts.cross_attention_optimization == "Automatic" and opts.upcast_attn is True
    assert "bad value in the config file: cross_attention_optimization: 'Doggettx'" in capsys.readouterr().err
    config.write_text(json.dumps({"cross_attention_optimization": names.SDP_NO_MEM}))
    opts.load(str(config))
    assert opts.cross_attention_optimization == names.SDP_NO_MEM


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("attention"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c
    attention.set_kernels(attention.ALL_KERNELS)


def test_the_setting_refuses_a_kernel_this_build_does_not_have_by_name(http):
    r = http.post("/sdapi/v1/options", json={"cross_attention_optimization": "Doggettx"})
    error = assert_error_json(r, 422, "cross_attention_optimization")
    assert "'Doggettx' is not one of" in error["errors"] and names.SDP_NO_MEM in error["errors"]
    assert http.get("/sdapi/v1/options").json()["cross_attention_optimization"] == "Automatic"


def unet_ops() -> set[str]:
    """Kernels of one forward of the current model's UNet (the server's job just ran; the state it left)."""
    unet = shared.sd_model.unet
    x = torch.randn(1, unet.config.in_channels, 8, 8, dtype=unet.dtype)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=unet.dtype)
    with torch.no_grad():
        return sdpa_ops(lambda: unet(x, torch.tensor([10]), context))


def test_a_job_runs_on_the_chosen_kernels_with_the_same_picture(http):
    pictures = {}
    for choice in (names.NONE, names.SDP_NO_MEM, "Automatic"):
        assert http.post("/sdapi/v1/options", json={"cross_attention_optimization": choice}).status_code == 200
        r = http.post("/sdapi/v1/txt2img", json=FAST)
        assert r.status_code == 200, r.text
        pictures[choice] = pixels(decode(r.json()["images"][0])).astype(np.float64)
        assert unet_ops() == ({MATH_OP} if choice == names.NONE else {FLASH_OP}), choice
    assert np.abs(pictures[names.NONE] - pictures["Automatic"]).max() <= 2  # the same sums, in another order


def test_an_override_for_one_job_is_undone_for_the_next(http):
    body = {**FAST, "override_settings": {"cross_attention_optimization": names.NONE}}
    assert http.post("/sdapi/v1/txt2img", json=body).status_code == 200
    assert unet_ops() == {MATH_OP}
    assert http.post("/sdapi/v1/txt2img", json=FAST).status_code == 200
    assert unet_ops() == {FLASH_OP}


def sdpa_input_dtypes(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return {e.input_dtypes[0] for e in prof.events() if e.name == "aten::scaled_dot_product_attention"}


def test_upcast_runs_a_16_bit_unets_attention_in_float32():
    from diffusers import UNet2DConditionModel

    from modules.engine.unet_call import unet_forward

    half = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, norm_num_groups=8).to(torch.bfloat16)
    x = torch.randn(1, half.config.in_channels, 8, 8, dtype=torch.bfloat16)
    context = torch.randn(1, 77, half.config.cross_attention_dim, dtype=torch.bfloat16)
    run = lambda: unet_forward(half, x, torch.tensor([10]), context)  # noqa: E731
    with torch.no_grad():
        assert sdpa_input_dtypes(run) == {"c10::BFloat16"}
        attention.set_upcast(True)
        try:
            assert sdpa_input_dtypes(run) == {"float"}
            assert run().dtype == torch.bfloat16
        finally:
            attention.set_upcast(False)


def test_the_upcast_setting_reaches_the_next_job(http):
    body = {**FAST, "override_settings": {"upcast_attn": True}}
    assert http.post("/sdapi/v1/txt2img", json=body).status_code == 200
    assert attention.upcast()
    assert http.post("/sdapi/v1/txt2img", json=FAST).status_code == 200
    assert not attention.upcast()
