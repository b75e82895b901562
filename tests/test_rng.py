"""Seeded noise (modules.rng): reproducibility, batch independence, variation seeds, seed resize, sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import rng, shared

SHAPE = (4, 16, 16)
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def source(monkeypatch):
    """Set the `randn_source` setting for one test."""

    def set_source(value: str) -> None:
        monkeypatch.setitem(shared.opts.data, "randn_source", value)

    set_source("GPU")
    return set_source


def cpu_noise(seed: int, shape, draw: int = 0) -> torch.Tensor:
    """What torch's CPU generator gives for `seed`, the `draw`-th tensor of that stream."""
    g = torch.Generator("cpu").manual_seed(seed)
    for _ in range(draw):
        torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g)


# --- seeds ---


def test_fixed_seed_random_for_minus_one_none_and_empty():
    for value in (-1, None, "", "not a number"):
        seeds = {rng.get_fixed_seed(value) for _ in range(8)}
        assert len(seeds) > 1
        assert all(isinstance(s, int) and 0 <= s < 4294967294 for s in seeds)


def test_fixed_seed_keeps_given_seed():
    assert rng.get_fixed_seed(1234) == 1234
    assert rng.get_fixed_seed("77") == 77
    assert rng.get_fixed_seed(0) == 0


def test_seeds_for_batch_count_up_across_batches():
    assert rng.seeds_for_batch(100, n_iter=2, batch_size=3) == [100, 101, 102, 103, 104, 105]
    assert rng.subseeds_for_batch(7, n_iter=1, batch_size=2) == [7, 8]
    # A1111: with a variation strength every image keeps the seed; only the variation seeds count up.
    assert rng.seeds_for_batch(100, n_iter=2, batch_size=2, subseed_strength=0.5) == [100] * 4
    assert rng.seeds_for_batch([5, 9], n_iter=1, batch_size=2) == [5, 9]


# --- reproducibility and batch independence ---


def test_same_seed_gives_bit_identical_noise(source):
    a = rng.ImageRNG(SHAPE, [42, 43], device=CPU).first()
    b = rng.ImageRNG(SHAPE, [42, 43], device=CPU).first()
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert torch.equal(rng.randn_local(42, SHAPE, device=CPU), rng.randn_local(42, SHAPE, device=CPU))


def test_image_in_batch_equals_single_run_with_its_seed(source):
    batch = rng.ImageRNG(SHAPE, rng.seeds_for_batch(10, 1, 4), device=CPU)
    singles = [rng.ImageRNG(SHAPE, [10 + i], device=CPU) for i in range(4)]
    for _ in range(3):  # first() and two ancestral steps
        together = batch.next()
        assert together.shape == (4, *SHAPE)
        for i, single in enumerate(singles):
            assert torch.equal(together[i], single.next()[0])


def test_next_is_reproducible_per_image_and_continues_the_stream(source):
    a, b = rng.ImageRNG(SHAPE, [3, 4], device=CPU), rng.ImageRNG(SHAPE, [3, 4], device=CPU)
    first = a.next()
    assert torch.equal(first, b.first())
    steps = [a.next() for _ in range(3)]
    assert all(torch.equal(x, b.next()) for x in steps)
    assert not torch.equal(steps[0], steps[1])
    # The step noise continues each image's own stream after its initial noise.
    assert torch.equal(steps[0][1], cpu_noise(4, SHAPE, draw=1))


def test_eta_noise_seed_delta_reseeds_step_noise(source):
    plain = rng.ImageRNG(SHAPE, [5], device=CPU)
    ensd = rng.ImageRNG(SHAPE, [5], device=CPU, eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), ensd.first())  # the initial noise does not change
    assert torch.equal(ensd.next()[0], cpu_noise(5 + 31337, SHAPE))
    assert torch.equal(plain.next()[0], cpu_noise(5, SHAPE, draw=1))


# --- variation seeds ---


def test_variation_strength_blends_seed_and_subseed(source):
    base = cpu_noise(1, SHAPE)
    sub = cpu_noise(2, SHAPE)
    at0 = rng.ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=0.0, device=CPU).first()[0]
    at1 = rng.ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=1.0, device=CPU).first()[0]
    half = rng.ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=0.5, device=CPU).first()[0]
    assert torch.equal(at0, base)
    torch.testing.assert_close(at1, sub, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(half, rng.slerp(0.5, base, sub))
    for other in (base, sub):
        assert (half - other).abs().max() > 0.1
    # Spherical, not linear: the blend keeps about unit variance where a linear mean would shrink it.
    assert abs(half.std().item() - 1.0) < 0.1
    assert (base + sub).div(2).std().item() < 0.8


def test_missing_subseed_counts_as_zero(source):
    noise = rng.ImageRNG(SHAPE, [1, 2], subseeds=[9], subseed_strength=0.3, device=CPU).first()
    torch.testing.assert_close(noise[1], rng.slerp(0.3, cpu_noise(2, SHAPE), cpu_noise(0, SHAPE)))


def test_slerp_end_points_and_linear_fallback():
    low, high = cpu_noise(11, SHAPE), cpu_noise(12, SHAPE)
    torch.testing.assert_close(rng.slerp(0.0, low, high), low)
    torch.testing.assert_close(rng.slerp(1.0, low, high), high, atol=1e-5, rtol=1e-5)
    # Nearly parallel inputs take A1111's linear branch, which weights `low` by val.
    near = low * 1.001
    torch.testing.assert_close(rng.slerp(0.25, low, near), low * 0.25 + near * 0.75)


# --- seed resize ---


def test_seed_resize_from_smaller_size_keeps_centre(source):
    # Target latent 16x16 (128 px); resize from 64 px -> an 8x8 noise pasted into the centre.
    noise = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=64, seed_resize_from_w=64, device=CPU).first()[0]
    small = cpu_noise(8, (4, 8, 8))
    assert torch.equal(noise[:, 4:12, 4:12], small)
    background = cpu_noise(8, SHAPE)
    mask = torch.ones(SHAPE, dtype=torch.bool)
    mask[:, 4:12, 4:12] = False
    assert torch.equal(noise[mask], background[mask])


def test_seed_resize_from_larger_size_crops_centre(source):
    noise = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=256, seed_resize_from_w=256, device=CPU).first()[0]
    big = cpu_noise(8, (4, 32, 32))
    assert torch.equal(noise, big[:, 8:24, 8:24])


def test_seed_resize_mixed_directions_and_variation(source):
    # Taller source (crop rows), narrower source (pad columns), plus a variation seed.
    noise = rng.ImageRNG(
        SHAPE, [8], subseeds=[9], subseed_strength=0.4, seed_resize_from_h=192, seed_resize_from_w=64, device=CPU
    ).first()[0]
    small = rng.slerp(0.4, cpu_noise(8, (4, 24, 8)), cpu_noise(9, (4, 24, 8)))
    torch.testing.assert_close(noise[:, :, 4:12], small[:, 4:20, :])
    assert torch.equal(noise[:, :, :4], cpu_noise(8, SHAPE)[:, :, :4])


def test_seed_resize_then_next_continues_own_stream(source):
    r = rng.ImageRNG(SHAPE, [8], seed_resize_from_h=64, seed_resize_from_w=64, device=CPU)
    r.first()
    assert torch.equal(r.next()[0], cpu_noise(8, SHAPE, draw=1))


# --- sources and the current stream ---


def test_cpu_source_equals_cpu_computation(source):
    source("CPU")
    noise = rng.ImageRNG(SHAPE, [21, 22], device=CPU).first()
    assert torch.equal(noise[0], cpu_noise(21, SHAPE))
    assert torch.equal(noise[1], cpu_noise(22, SHAPE))
    assert torch.equal(rng.randn_local(21, SHAPE, device=CPU), cpu_noise(21, SHAPE))


@needs_cuda
def test_cpu_source_on_gpu_is_the_cpu_noise_moved(source):
    source("CPU")
    cuda = torch.device("cuda")
    noise = rng.ImageRNG(SHAPE, [21, 22], device=cuda).first()
    assert noise.device.type == "cuda"
    assert torch.equal(noise[0].cpu(), cpu_noise(21, SHAPE))
    assert torch.equal(rng.randn_local(22, SHAPE, device=cuda).cpu(), cpu_noise(22, SHAPE))


@needs_cuda
def test_gpu_source_uses_a_generator_on_the_gpu(source):
    cuda = torch.device("cuda")
    noise = rng.ImageRNG(SHAPE, [21], device=cuda).first()
    expected = torch.randn(SHAPE, generator=torch.Generator(cuda).manual_seed(21), device=cuda)
    assert torch.equal(noise[0], expected)


def test_randn_starts_a_stream_that_randn_like_and_without_seed_continue(source):
    first = rng.randn(5, SHAPE, device=CPU)
    assert torch.equal(first, cpu_noise(5, SHAPE))
    assert torch.equal(rng.randn_without_seed(SHAPE, device=CPU), cpu_noise(5, SHAPE, draw=1))
    like = rng.randn_like(torch.zeros(SHAPE, dtype=torch.float64))
    assert like.dtype == torch.float64
    assert torch.equal(like.float(), cpu_noise(5, SHAPE, draw=2))
    g = rng.create_generator(6, CPU)
    assert torch.equal(rng.randn(5, SHAPE, generator=g, device=CPU), cpu_noise(6, SHAPE))


def test_seeding_noise_leaves_torch_global_rng_alone(source):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rng.randn(7, SHAPE, device=CPU)
    rng.manual_seed(8)
    assert torch.equal(torch.rand(3), expected)


# --- the NV source ---


def test_philox_known_answers():
    """Random123's published known-answer vectors for Philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        out = rng.philox4x32(np.array(counter, dtype=np.uint32).reshape(4, 1), key)
        assert tuple(int(v) for v in out[:, 0]) == expected


def test_nv_generator_matches_published_cuda_sample():
    # torch.randn((3, 4), generator=torch.Generator("cuda").manual_seed(0), device="cuda"), as A1111 documents it.
    expected = np.array(
        [
            [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
            [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
            [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(rng.PhiloxGenerator(0).randn((3, 4)), expected, atol=1e-6)


def test_nv_source_is_deterministic_and_batch_independent(source):
    source("NV")
    batch = rng.ImageRNG(SHAPE, [30, 31], device=CPU)
    single = rng.ImageRNG(SHAPE, [31], device=CPU)
    for _ in range(2):
        assert torch.equal(batch.next()[1], single.next()[0])
    fresh = rng.ImageRNG(SHAPE, [31], device=CPU)
    g = rng.PhiloxGenerator(31)
    assert torch.equal(fresh.first()[0], torch.from_numpy(g.randn(SHAPE)))
    assert torch.equal(fresh.next()[0], torch.from_numpy(g.randn(SHAPE)))


@needs_cuda
@pytest.mark.parametrize("seed", [0, 1, 123456789, 4294967293])
@pytest.mark.parametrize("shape", [(3, 4), (4, 64, 64), (4, 128, 96)])
def test_nv_source_reproduces_cuda_randn(seed, shape):
    gen = torch.Generator("cuda").manual_seed(seed)
    nv = rng.PhiloxGenerator(seed)
    for _ in range(2):  # the second draw checks the offset bookkeeping
        expected = torch.randn(shape, generator=gen, device="cuda").cpu().numpy()
        got = nv.randn(shape)
        # CUDA rounds differently and uses its fast sine: the last bits differ, most in the far tails.
        np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)
        assert np.abs(got - expected).mean() < 1e-6
