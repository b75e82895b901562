"""The LoRA-family weight math, each format checked against an independently written expected weight.

The expected values never call the module's helpers: LoRA / LoCon are checked by running the stored layers one
after the other (Linear -> Linear, conv -> conv) against one layer with the merged weight, LoHa / IA3 / DoRA with
explicit loops, LoKr by assembling the Kronecker blocks by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.networks.module_types import (
    SUFFIXES,
    NetworkModule,
    ShapeMismatch,
    WeightDelta,
    build_module,
)

ATOL = 1e-5


@pytest.fixture
def rand():
    gen = torch.Generator().manual_seed(1234)

    def make(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    return make


def delta_of(tensors: dict[str, torch.Tensor], weight: torch.Tensor, **kwargs) -> WeightDelta:
    module = build_module(tensors)
    assert module is not None, f"not recognised: {sorted(tensors)}"
    return module.delta(weight, **kwargs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-4)


# --- LoRA / LoCon -----------------------------------------------------------------------------------------------


def test_linear_lora_equals_down_then_up_layers_scaled_by_alpha_over_rank(rand):
    up, down, weight, x = rand(6, 3), rand(3, 5), rand(6, 5), rand(4, 5)
    module = build_module({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.5)})
    assert module is not None and module.kind == "lora"
    dw = module.delta(weight).weight
    # Running the two stored Linear layers must equal one Linear with dW, times alpha / rank = 1.5 / 3.
    through_lora = F.linear(F.linear(x, down), up) * 0.5
    assert_close(F.linear(x, dw), through_lora)


def test_lora_without_alpha_has_scale_one(rand):
    up, down = rand(4, 2), rand(2, 3)
    expected = torch.zeros(4, 3)
    for o in range(4):
        for i in range(3):
            expected[o, i] = sum(up[o, r] * down[r, i] for r in range(2))
    assert_close(delta_of({"lora_up.weight": up, "lora_down.weight": down}, rand(4, 3)).weight, expected)


def test_alpha_scaling_is_linear_in_alpha(rand):
    up, down, weight = rand(4, 8), rand(8, 3), rand(4, 3)
    base = delta_of({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(8.0)}, weight).weight
    quarter = delta_of({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}, weight).weight
    assert_close(quarter, base / 4)


def test_locon_3x3_equals_conv_down_then_1x1_up(rand):
    up, down, weight, x = rand(8, 4, 1, 1), rand(4, 6, 3, 3), rand(8, 6, 3, 3), rand(2, 6, 9, 9)
    module = build_module({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)})
    assert module is not None and module.kind == "locon"
    dw = module.delta(weight).weight
    through_lora = F.conv2d(F.conv2d(x, down, padding=1), up) * (2.0 / 4)
    assert_close(F.conv2d(x, dw, padding=1), through_lora)


def test_locon_tucker_mid_equals_1x1_down_3x3_mid_1x1_up(rand):
    up, mid, down = rand(8, 4, 1, 1), rand(4, 4, 3, 3), rand(4, 6, 1, 1)
    weight, x = rand(8, 6, 3, 3), rand(2, 6, 7, 7)
    tensors = {"lora_up.weight": up, "lora_mid.weight": mid, "lora_down.weight": down, "alpha": torch.tensor(4.0)}
    module = build_module(tensors)
    assert module is not None and module.kind == "locon"
    dw = module.delta(weight).weight
    through_lora = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    assert_close(F.conv2d(x, dw, padding=1), through_lora)


@pytest.mark.parametrize(
    ("up_key", "down_key"),
    [
        ("lora_B.weight", "lora_A.weight"),
        ("lora.up.weight", "lora.down.weight"),
        ("lora_linear_layer.up.weight", "lora_linear_layer.down.weight"),
    ],
)
def test_peft_and_diffusers_names_give_the_kohya_result(rand, up_key, down_key):
    up, down, weight = rand(5, 2), rand(2, 7), rand(5, 7)
    alpha = torch.tensor(1.0)
    kohya = delta_of({"lora_up.weight": up, "lora_down.weight": down, "alpha": alpha}, weight).weight
    other = delta_of({up_key: up, down_key: down, "alpha": alpha}, weight).weight
    assert_close(other, kohya)
    assert_close(other, torch.einsum("or,ri->oi", up, down) * 0.5)


def test_linear_lora_on_1x1_conv_target_and_conv_lora_on_linear_target(rand):
    up, down, x = rand(6, 2), rand(2, 4), rand(1, 4, 3, 3)
    conv_weight = rand(6, 4, 1, 1)
    dw = delta_of({"lora_up.weight": up, "lora_down.weight": down}, conv_weight).weight
    assert dw.shape == conv_weight.shape
    assert_close(F.conv2d(x, dw), F.conv2d(x, (up @ down)[:, :, None, None]))

    conv_up, conv_down = up[:, :, None, None], down[:, :, None, None]
    dw_linear = delta_of({"lora_up.weight": conv_up, "lora_down.weight": conv_down}, rand(6, 4)).weight
    assert_close(dw_linear, up @ down)


def test_dyn_dim_uses_the_first_ranks_with_the_original_scale(rand):
    up, down, weight = rand(5, 8), rand(8, 3), rand(5, 3)
    tensors = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(4.0)}
    dw = delta_of(tensors, weight, dyn_dim=3).weight
    expected = sum(torch.outer(up[:, r], down[r]) for r in range(3)) * (4.0 / 8)
    assert_close(dw, expected)
    # dyn_dim is ignored by kinds without ordered ranks
    full = {"diff": rand(5, 3)}
    assert_close(delta_of(full, weight, dyn_dim=1).weight, full["diff"])


# --- LoHa -------------------------------------------------------------------------------------------------------


def test_loha_linear_is_hadamard_of_two_low_rank_products(rand):
    w1a, w1b, w2a, w2b = rand(5, 2), rand(2, 4), rand(5, 2), rand(2, 4)
    tensors = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(1.0)}
    module = build_module(tensors)
    assert module is not None and module.kind == "loha"
    expected = torch.zeros(5, 4)
    for o in range(5):
        for i in range(4):
            first = sum(w1a[o, r] * w1b[r, i] for r in range(2))
            second = sum(w2a[o, r] * w2b[r, i] for r in range(2))
            expected[o, i] = first * second * (1.0 / 2)
    assert_close(module.delta(rand(5, 4)).weight, expected)


def test_loha_conv_without_tucker_reshapes_the_flat_kernel(rand):
    w1a, w1b, w2a, w2b = rand(4, 3), rand(3, 2 * 9), rand(4, 3), rand(3, 2 * 9)
    tensors = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
    expected = ((w1a @ w1b) * (w2a @ w2b)).reshape(4, 2, 3, 3)
    assert_close(delta_of(tensors, rand(4, 2, 3, 3)).weight, expected)


def test_loha_conv_with_tucker_cores(rand):
    rank, out, inp = 3, 4, 2
    t1, t2 = rand(rank, rank, 3, 3), rand(rank, rank, 3, 3)
    w1a, w1b, w2a, w2b = rand(rank, out), rand(rank, inp), rand(rank, out), rand(rank, inp)
    tensors = {
        "hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b,
        "hada_t1": t1, "hada_t2": t2, "alpha": torch.tensor(6.0),
    }  # fmt: skip

    def tucker(core, a, b):  # core axis 0 goes with a (rank, out), axis 1 with b (rank, in)
        w = torch.zeros(out, inp, 3, 3)
        for o in range(out):
            for i in range(inp):
                for p in range(rank):
                    for q in range(rank):
                        w[o, i] += core[p, q] * a[p, o] * b[q, i]
        return w

    expected = tucker(t1, w1a, w1b) * tucker(t2, w2a, w2b) * (6.0 / rank)
    assert_close(delta_of(tensors, rand(out, inp, 3, 3)).weight, expected)


# --- LoKr -------------------------------------------------------------------------------------------------------


def kron_by_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Block (a, c) of the result is w1[a, c] * w2."""
    rows, cols = w2.shape[0], w2.shape[1]
    out = torch.zeros(w1.shape[0] * rows, w1.shape[1] * cols, *w2.shape[2:])
    for a in range(w1.shape[0]):
        for c in range(w1.shape[1]):
            out[a * rows : (a + 1) * rows, c * cols : (c + 1) * cols] = w1[a, c] * w2
    return out


def test_lokr_with_both_factors_whole_ignores_alpha(rand):
    w1, w2 = rand(2, 3), rand(4, 5)
    module = build_module({"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(7.0)})
    assert module is not None and module.kind == "lokr"
    assert_close(module.delta(rand(8, 15)).weight, kron_by_blocks(w1, w2))


def test_lokr_factorised_is_scaled_by_alpha_over_rank(rand):
    w1a, w1b, w2a, w2b = rand(2, 1), rand(1, 3), rand(4, 2), rand(2, 5)
    tensors = {"lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.0)}
    assert_close(delta_of(tensors, rand(8, 15)).weight, kron_by_blocks(w1a @ w1b, w2a @ w2b) * (1.0 / 1))

    half = {"lokr_w1": w1a @ w1b, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.0)}
    assert_close(delta_of(half, rand(8, 15)).weight, kron_by_blocks(w1a @ w1b, w2a @ w2b) * (1.0 / 2))


def test_lokr_conv_whole_kernel_and_tucker(rand):
    w1, w2 = rand(2, 3), rand(4, 2, 3, 3)
    assert_close(delta_of({"lokr_w1": w1, "lokr_w2": w2}, rand(8, 6, 3, 3)).weight, kron_by_blocks(w1, w2))

    rank = 2
    t2, w2a, w2b = rand(rank, rank, 3, 3), rand(rank, 4), rand(rank, 2)
    kernel = torch.einsum("pqkl,po,qi->oikl", t2, w2a, w2b)
    tensors = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "lokr_t2": t2, "alpha": torch.tensor(1.0)}
    assert_close(delta_of(tensors, rand(8, 6, 3, 3)).weight, kron_by_blocks(w1, kernel) / rank)


# --- IA3, full --------------------------------------------------------------------------------------------------


def test_ia3_scales_output_channels(rand):
    weight, w = rand(4, 3, 3, 3), rand(4)
    module = build_module({"weight": w, "on_input": torch.tensor(False)})
    assert module is not None and module.kind == "ia3"
    expected = torch.stack([weight[o] * w[o] for o in range(4)])
    assert_close(module.delta(weight).weight, expected)
    assert_close(delta_of({"weight": w}, weight).weight, expected)  # on_input absent means output


def test_ia3_on_input_scales_input_channels(rand):
    weight, w = rand(4, 3), rand(3)
    expected = torch.stack([weight[:, i] * w[i] for i in range(3)], dim=1)
    assert_close(delta_of({"weight": w, "on_input": torch.tensor(True)}, weight).weight, expected)


def test_full_diff_and_diff_b(rand):
    diff, diff_b, weight, bias = rand(3, 4), rand(3), rand(3, 4), rand(3)
    module = build_module({"diff": diff, "diff_b": diff_b})
    assert module is not None and module.kind == "full"
    result = module.delta(weight.half(), bias=bias)
    assert_close(result.weight, diff)
    assert_close(result.bias, diff_b)

    bias_only = delta_of({"diff_b": diff_b}, weight, bias=bias)
    assert bias_only.weight is None
    assert_close(bias_only.bias, diff_b)
    assert delta_of({"diff": diff}, weight).bias is None


# --- DoRA -------------------------------------------------------------------------------------------------------


def dora_expected(weight: torch.Tensor, dw: torch.Tensor, magnitude: torch.Tensor, axis: int) -> torch.Tensor:
    """Wd - W with Wd = magnitude * Wc / ||Wc||, one channel along `axis` at a time."""
    combined = weight + dw
    decomposed = torch.empty_like(combined)
    for c in range(combined.shape[axis]):
        channel = combined.select(axis, c)
        norm = torch.sqrt((channel**2).sum())
        decomposed.select(axis, c).copy_(magnitude.reshape(-1)[c] * channel / norm)
    return decomposed - weight


def test_dora_on_linear_output_axis(rand):
    up, down, weight = rand(5, 2), rand(2, 4), rand(5, 4)
    magnitude = rand(5, 1).abs() + 0.5
    tensors = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.0), "dora_scale": magnitude}
    module = build_module(tensors)
    assert module is not None and module.dora_scale is not None
    dw = module.delta(weight).weight
    assert_close(dw, dora_expected(weight, (up @ down) * 0.5, magnitude, axis=0))
    # strength 1 gives exactly the decomposed weight: each row's norm is its magnitude
    torch.testing.assert_close((weight + dw).norm(dim=1), magnitude.reshape(-1))


def test_dora_on_linear_input_axis(rand):
    up, down, weight = rand(5, 2), rand(2, 4), rand(5, 4)
    magnitude = rand(1, 4).abs() + 0.5
    tensors = {"lora_up.weight": up, "lora_down.weight": down, "dora_scale": magnitude}
    dw = delta_of(tensors, weight).weight
    assert_close(dw, dora_expected(weight, up @ down, magnitude, axis=1))
    torch.testing.assert_close((weight + dw).norm(dim=0), magnitude.reshape(-1))


def test_dora_on_conv_locon(rand):
    up, down, weight = rand(6, 2, 1, 1), rand(2, 3, 3, 3), rand(6, 3, 3, 3)
    magnitude = rand(6, 1, 1, 1).abs() + 0.5
    tensors = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.0), "dora_scale": magnitude}
    raw = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * 0.5
    assert_close(delta_of(tensors, weight).weight, dora_expected(weight, raw, magnitude, axis=0))

    in_magnitude = rand(1, 3, 1, 1).abs() + 0.5
    tensors["dora_scale"] = in_magnitude
    assert_close(delta_of(tensors, weight).weight, dora_expected(weight, raw, in_magnitude, axis=1))


def test_dora_on_loha_and_lokr(rand):
    weight = rand(4, 6)
    w1a, w1b, w2a, w2b = rand(4, 2), rand(2, 6), rand(4, 2), rand(2, 6)
    magnitude = rand(4, 1).abs() + 0.5
    loha = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "dora_scale": magnitude}
    assert_close(delta_of(loha, weight).weight, dora_expected(weight, (w1a @ w1b) * (w2a @ w2b), magnitude, 0))

    k1, k2 = rand(2, 2), rand(2, 3)
    lokr = {"lokr_w1": k1, "lokr_w2": k2, "dora_scale": magnitude}
    assert_close(delta_of(lokr, weight).weight, dora_expected(weight, kron_by_blocks(k1, k2), magnitude, 0))


# --- errors, detection, dtype -----------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes(rand):
    tensors = {"lora_up.weight": rand(6, 2), "lora_down.weight": rand(2, 5)}
    with pytest.raises(ShapeMismatch) as err:
        delta_of(tensors, rand(5, 6))
    assert "(6, 5)" in str(err.value) and "(5, 6)" in str(err.value)
    assert isinstance(err.value, ValueError)

    with pytest.raises(ShapeMismatch, match=r"\(7, 5\)"):  # inner rank disagrees: torch's error is wrapped
        delta_of({"lokr_w1_a": rand(2, 3), "lokr_w1_b": rand(2, 2), "lokr_w2": rand(3, 3)}, rand(7, 5))
    with pytest.raises(ShapeMismatch, match=r"\(3,\).*\(5,\)"):
        delta_of({"diff_b": rand(3)}, rand(5, 4), bias=rand(5))
    with pytest.raises(ShapeMismatch, match=r"\(7,\).*\(5, 4\)"):
        delta_of({"weight": rand(7)}, rand(5, 4))


def test_unknown_suffixes_give_none_and_extras_are_ignored(rand):
    assert build_module({}) is None
    assert build_module({"oft_blocks": rand(2, 2), "alpha": torch.tensor(1.0)}) is None
    assert build_module({"lora_up.weight": rand(3, 2)}) is None  # half a LoRA is no LoRA
    assert build_module({"hada_w1_a": rand(3, 2), "hada_w1_b": rand(2, 3)}) is None
    assert build_module({"lokr_w1": rand(3, 2)}) is None

    up, down = rand(3, 2), rand(2, 4)
    module = build_module({"lora_up.weight": up, "lora_down.weight": down, "something.else": rand(100)})
    assert module is not None and "something.else" not in module.tensors
    assert module.size_bytes() == (6 + 8) * 4


def test_fp16_weight_gives_float32_delta_on_the_requested_device(rand):
    weight = rand(4, 3).half()
    w = rand(4)
    result = delta_of({"weight": w.half()}, weight, device="cpu")
    assert result.weight.dtype == torch.float32 and result.weight.device.type == "cpu"
    assert_close(result.weight, weight.float() * w.half().float()[:, None])

    lora = delta_of({"lora_up.weight": rand(4, 2).half(), "lora_down.weight": rand(2, 3).half()}, weight).weight
    assert lora.dtype == torch.float32


def test_suffixes_cover_every_format():
    expected = {
        "lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight",
        "lora.up.weight", "lora.down.weight", "alpha", "dora_scale",
        "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
        "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
        "diff", "diff_b", "weight", "on_input",
    }  # fmt: skip
    assert expected <= SUFFIXES
    assert isinstance(SUFFIXES, frozenset)


def test_every_kind_is_a_network_module(rand):
    groups = [
        {"lora_up.weight": rand(2, 1), "lora_down.weight": rand(1, 2)},
        {"hada_w1_a": rand(2, 1), "hada_w1_b": rand(1, 2), "hada_w2_a": rand(2, 1), "hada_w2_b": rand(1, 2)},
        {"lokr_w1": rand(1, 1), "lokr_w2": rand(2, 2)},
        {"weight": rand(2)},
        {"diff": rand(2, 2)},
    ]
    kinds = []
    for tensors in groups:
        module = build_module(tensors)
        assert isinstance(module, NetworkModule)
        assert module.delta(rand(2, 2)).weight.shape == (2, 2)
        kinds.append(module.kind)
    assert kinds == ["lora", "loha", "lokr", "ia3", "full"]


# --- the checks above can fail ----------------------------------------------------------------------------------


def test_wrong_formulas_are_caught(rand):
    """The expected-value comparisons reject plausible mistakes: they are not vacuous."""
    up, down, weight = rand(5, 4), rand(4, 5), rand(5, 5)
    dw = delta_of({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}, weight).weight
    for wrong in ((up @ down), (down.T @ up.T) * 0.5, (up @ down).T * 0.5):  # no scale, transposed twice
        with pytest.raises(AssertionError):
            assert_close(dw, wrong)

    w1a, w1b, w2a, w2b = rand(5, 2), rand(2, 5), rand(5, 2), rand(2, 5)
    loha = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
    with pytest.raises(AssertionError):  # a sum instead of the Hadamard product
        assert_close(delta_of(loha, weight).weight, (w1a @ w1b + w2a @ w2b) / 2)

    magnitude = rand(5, 1).abs() + 0.5
    dora = {"lora_up.weight": up, "lora_down.weight": down, "dora_scale": magnitude}
    with pytest.raises(AssertionError):  # the norm of W instead of W + dW (ComfyUI's output-axis shortcut)
        wrong = magnitude * (weight + up @ down) / weight.norm(dim=1, keepdim=True) - weight
        assert_close(delta_of(dora, weight).weight, wrong)
