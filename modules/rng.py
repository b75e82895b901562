"""Seeded noise with A1111's semantics (its `modules.rng`): the same seed gives the same picture.

Where noise comes from is the setting `randn_source`:
- "GPU": torch's generator on the model's device (what A1111 does by default; CPU-only machines use the CPU);
- "CPU": torch's CPU generator, then moved, so a seed gives the same picture on any hardware;
- "NV": a CPU re-implementation of the numbers torch.randn gives on an NVIDIA GPU (Philox4x32-10 plus
  curand's Box-Muller), so pictures made on NVIDIA cards can be reproduced elsewhere.

A1111 seeds torch's global generator in `randn`/`manual_seed`; we keep that "current stream" in this module
instead, so seeding noise never disturbs anyone else's use of torch's global RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from modules import devices, shared

RANDN_SOURCES = ("GPU", "CPU", "NV")


def randn_source() -> str:
    source = getattr(shared.opts, "randn_source", "GPU")
    return source if source in RANDN_SOURCES else "GPU"


# --- seeds ---------------------------------------------------------------------------------------------------


def get_fixed_seed(seed: int | str | None | list) -> int | list:
    """-1, None or "" (or text that is no number) -> a random 32-bit seed; anything else -> that int.
    A list (a seed per image, as scripts set p.seed) is fixed element by element."""
    if isinstance(seed, list | tuple):
        return [get_fixed_seed(s) for s in seed]
    if seed is None or seed == "":
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    seed = int(seed)
    if seed == -1:
        return random.randrange(4294967294)
    return seed


def seeds_for_batch(
    p_seed: int | Sequence[int], n_iter: int, batch_size: int, subseed_strength: float = 0.0
) -> list[int]:
    """Seeds of every image of a job (A1111's p.all_seeds): image i gets seed+i. With a variation strength
    the seed stays the same for all images and only the variation seeds count up, as in A1111."""
    if isinstance(p_seed, Sequence) and not isinstance(p_seed, str):
        return [int(s) for s in p_seed]
    n = n_iter * batch_size
    return [int(p_seed) + (i if subseed_strength == 0 else 0) for i in range(n)]


def subseeds_for_batch(p_subseed: int | Sequence[int], n_iter: int, batch_size: int) -> list[int]:
    """Variation seeds of every image of a job (A1111's p.all_subseeds): subseed+i."""
    if isinstance(p_subseed, Sequence) and not isinstance(p_subseed, str):
        return [int(s) for s in p_subseed]
    return [int(p_subseed) + i for i in range(n_iter * batch_size)]


# --- the "NV" source: torch's CUDA randn, computed on the CPU ------------------------------------------------

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Philox4x32 round multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # Weyl increments of the key
_TWO_POW32_INV = np.float32(2.3283064e-10)  # curand's constants, as float32
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)
_U32 = np.uint64(0xFFFFFFFF)


def _mul_hi_lo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * np.uint64(m)
    return (product >> np.uint64(32)).astype(np.uint32), (product & _U32).astype(np.uint32)


def philox4x32(counter: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32 (Salmon et al. 2011) over columns of a (4, n) uint32 counter array; returns (4, n) uint32."""
    c0, c1, c2, c3 = (np.array(c, dtype=np.uint32) for c in counter)
    k0, k1 = key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF
    for _ in range(rounds):
        hi0, lo0 = _mul_hi_lo(c0, _PHILOX_M[0])
        hi1, lo1 = _mul_hi_lo(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint32(k0), lo1, hi0 ^ c3 ^ np.uint32(k1), lo0
        k0, k1 = (k0 + _PHILOX_W[0]) & 0xFFFFFFFF, (k1 + _PHILOX_W[1]) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3])


def _box_muller_first(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """curand's Box-Muller, first output only: sqrt(-2 ln u) * sin(2 pi v), u and v in (0, 1].

    Computed in float64 from the exact integers and float32 constants, then rounded once: these are the
    numbers A1111's "NV" source gives, so its pictures reproduce exactly. CUDA rounds the integers to float32
    first and uses its fast sine, so a GPU differs from this in the last bits (at most 3e-5, in the far tails;
    the tests check it on a GPU)."""
    inv, inv_2pi = np.float64(_TWO_POW32_INV), np.float64(_TWO_POW32_INV_2PI)
    u = x.astype(np.float64) * inv + inv / 2
    v = y.astype(np.float64) * inv_2pi + inv_2pi / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """The numbers `torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed))` gives, on the CPU.

    torch fills element i from curand thread i (counter (offset, 0, i, 0), key = the 64-bit seed) and keeps
    the first normal of that thread's four; each call moves the offset one counter block on. This is A1111's
    "NV" layout. A GPU follows it while it runs a thread per element (an H100: about 270k, a latent of 2048 px
    square); past that a card's own numbers depend on its size, and "NV" keeps this layout.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        if n >= 2**32:
            raise ValueError("PhiloxGenerator draws at most 2**32 numbers per call")
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset & 0xFFFFFFFF
        counter[1] = self.offset >> 32
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        bits = philox4x32(counter, (self.seed & 0xFFFFFFFF, self.seed >> 32))
        return _box_muller_first(bits[0], bits[1]).reshape(tuple(shape))


Generator = torch.Generator | PhiloxGenerator


# --- generators and draws ------------------------------------------------------------------------------------


def _target_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else devices.device


def _noise_device(target: torch.device, source: str) -> torch.device:
    # MPS generators differ from CUDA's and between macOS releases; A1111 uses the CPU there too.
    if source == "CPU" or target.type == "mps":
        return devices.cpu
    return target


def create_generator(seed: int, device: torch.device | str | None = None, source: str | None = None) -> Generator:
    """A generator for `seed` on the device `randn_source` asks for (`device`: where the noise is wanted)."""
    source = source or randn_source()
    if source == "NV":
        return PhiloxGenerator(seed)
    return torch.Generator(_noise_device(_target_device(device), source)).manual_seed(int(seed))


def _draw(shape: Sequence[int], generator: Generator | None, target: torch.device, source: str) -> torch.Tensor:
    """float32 noise from `generator` (torch's default one if None), moved to `target`."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, PhiloxGenerator):
        return torch.from_numpy(generator.randn(shape)).to(target)
    noise_device = generator.device if generator is not None else _noise_device(target, source)
    return torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32).to(target)


class _CurrentStream:
    """The generator `randn(seed, ...)`/`manual_seed` starts and `randn_like`/`randn_without_seed` continue."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.generators: dict[tuple[str, str], Generator] = {}

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self.generators = {}

    def generator(self, target: torch.device, source: str) -> Generator | None:
        if self.seed is None:
            return None  # never seeded: torch's own default generator, as A1111 would use
        key = ("NV", "") if source == "NV" else (source, str(_noise_device(target, source)))
        if key not in self.generators:
            self.generators[key] = create_generator(self.seed, target, source)
        return self.generators[key]


_current = _CurrentStream()


def manual_seed(seed: int) -> None:
    """Start the current noise stream at `seed` (what A1111's torch.manual_seed call did)."""
    _current.reseed(seed)


def randn(
    seed: int, shape: Sequence[int], generator: Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Noise for `seed`. Also starts the current stream at `seed`; with `generator`, draws from it instead."""
    manual_seed(seed)
    source, target = randn_source(), _target_device(device)
    return _draw(shape, generator or _current.generator(target, source), target, source)


def randn_local(seed: int, shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """The first noise tensor of `seed`, from a private generator: no stream is touched."""
    source, target = randn_source(), _target_device(device)
    return _draw(shape, create_generator(seed, target, source), target, source)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """More noise shaped like x (on x's device, in x's dtype) from the current stream."""
    source = randn_source()
    return _draw(x.shape, _current.generator(x.device, source), x.device, source).to(dtype=x.dtype)


def randn_without_seed(
    shape: Sequence[int], generator: Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """More noise from `generator`, or from the current stream."""
    source, target = randn_source(), _target_device(device)
    return _draw(shape, generator or _current.generator(target, source), target, source)


# --- variation seeds and per-image noise ---------------------------------------------------------------------


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (val=0) to `high` (val=1), as A1111 computes it for (C, H, W) noise:
    angles are taken per (channel, column) over dim 1, and nearly parallel inputs fall back to a linear blend.
    That blend weights `low` by val, not 1-val; A1111 does the same and reproducing its pictures needs it."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    w_low = (torch.sin((1.0 - val) * omega) / so).unsqueeze(1)
    w_high = (torch.sin(val * omega) / so).unsqueeze(1)
    return w_low * low + w_high * high


def _paste_centred(background: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Put `patch` (C, h, w) into the centre of `background` (C, H, W); a larger patch is cropped to its centre."""
    out = background.clone()
    (_, big_h, big_w), (_, small_h, small_w) = background.shape, patch.shape
    dy, dx = (big_h - small_h) // 2, (big_w - small_w) // 2
    h = small_h if dy >= 0 else small_h + 2 * dy
    w = small_w if dx >= 0 else small_w + 2 * dx
    ty, tx = max(dy, 0), max(dx, 0)  # where it goes in the background
    sy, sx = max(-dy, 0), max(-dx, 0)  # where it comes from in the patch
    out[:, ty:ty + h, tx:tx + w] = patch[:, sy:sy + h, sx:sx + w]
    return out


class ImageRNG:
    """Noise for one batch, one generator per image, so image i never depends on the batch it is in.

    `shape` is one image's latent shape (C, H, W). `.first()` gives the initial latent noise (variation seeds
    and seed resize applied); `.next()` gives further noise for ancestral/SDE steps. With a nonzero
    `eta_noise_seed_delta` (pass it only when the sampler uses ENSD), the step noise comes from seed + ENSD.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        *,
        device: torch.device | str | None = None,
        eta_noise_seed_delta: int = 0,
        source: str | None = None,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from_h = int(seed_resize_from_h or 0)
        self.seed_resize_from_w = int(seed_resize_from_w or 0)
        self.device = _target_device(device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        # Fixed for the whole batch, so changing the setting mid-job cannot mix sources.
        self.source = source if source in RANDN_SOURCES else randn_source()
        self.generators = [self._generator(s) for s in self.seeds]
        self.is_first = True

    def _generator(self, seed: int) -> Generator:
        return create_generator(seed, self.device, self.source)

    def _fresh(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        return _draw(shape, self._generator(seed), self.device, self.source)

    def _own(self, generator: Generator) -> torch.Tensor:
        return _draw(self.shape, generator, self.device, self.source)

    def _resized_shape(self) -> tuple[int, ...]:
        if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0:
            return self.shape
        return (self.shape[0], self.seed_resize_from_h // 8, self.seed_resize_from_w // 8)

    def first(self) -> torch.Tensor:
        """The initial noise, (batch, C, H, W), on `device`."""
        self.is_first = False
        noise_shape = self._resized_shape()
        resized = noise_shape != self.shape
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            # Unresized noise is the image generator's first draw, so .next() continues the same stream.
            noise = self._fresh(seed, noise_shape) if resized else self._own(generator)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, self._fresh(subseed, noise_shape))
            if resized:
                noise = _paste_centred(self._own(generator), noise)
            xs.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [self._generator(s + self.eta_noise_seed_delta) for s in self.seeds]
        return torch.stack(xs).to(self.device)

    def next(self) -> torch.Tensor:
        """More noise, (batch, C, H, W), each image from its own generator; the first call gives `first()`."""
        if self.is_first:
            return self.first()
        return torch.stack([self._own(g) for g in self.generators]).to(self.device)


__all__ = [
    "RANDN_SOURCES",
    "Generator",
    "ImageRNG",
    "PhiloxGenerator",
    "create_generator",
    "get_fixed_seed",
    "manual_seed",
    "philox4x32",
    "randn",
    "randn_like",
    "randn_local",
    "randn_source",
    "randn_without_seed",
    "seeds_for_batch",
    "slerp",
    "subseeds_for_batch",
]
