"""Noise sources for ancestral and SDE samplers.

Samplers never call `torch.randn` themselves: they ask a `noise_sampler(sigma, sigma_next)` for unit-variance
noise shaped like x. The engine builds one from the job's seeds, so a seed reproduces an image exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch

from .common import NoiseSampler

log = logging.getLogger(__name__)


def _randn(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    # Drawn in float32 on the generator's own device, so the numbers do not depend on the latent's dtype.
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)


def default_noise_sampler(
    x: torch.Tensor, seed: int | None = None, generator: torch.Generator | None = None
) -> NoiseSampler:
    """Each call draws the next x-shaped sample from one generator (seeded with `seed`, 0 if not given)."""
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0 if seed is None else int(seed))

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return _randn(x.shape, generator).to(device=x.device, dtype=x.dtype)

    return sample


def generator_noise_sampler(x: torch.Tensor, generators: Sequence[torch.Generator]) -> NoiseSampler:
    """One generator per batch item (A1111's ImageRNG): an image's noise does not depend on its batch mates."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per batch item: got {len(generators)} for batch {x.shape[0]}")

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        noise = torch.stack([_randn(x.shape[1:], g).to(x.device) for g in generators])
        return noise.to(dtype=x.dtype)

    return sample


class BrownianTreeNoiseSampler:
    """Noise from a seeded Brownian motion over sigma (torchsde's BrownianTree), as k-diffusion/A1111 use
    for the DPM++ SDE family: querying nested intervals gives consistent increments, so the result hardly
    changes with the step count, and one tree per seed keeps batch items independent of each other."""

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: float | torch.Tensor,
        sigma_max: float | torch.Tensor,
        seed: int | Sequence[int] | None = None,
        cpu: bool = False,
    ) -> None:
        import torchsde  # optional dependency: imported here so the rest of the package works without it

        self.device, self.dtype = x.device, x.dtype
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1
        if t0 > t1:
            t0, t1, self.sign = t1, t0, -1
        self.batched = isinstance(seed, Sequence)
        seeds = list(seed) if self.batched else [seed]
        if self.batched and len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per batch item: got {len(seeds)} for batch {x.shape[0]}")
        w0 = torch.zeros_like(x[0] if self.batched else x, dtype=torch.float32)
        if cpu:
            w0 = w0.cpu()
        seeds = [0 if s is None else int(s) for s in seeds]  # unseeded would break reproducibility
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = self.sign
        if t0 > t1:
            t0, t1, sign = t1, t0, -sign
        with warnings.catch_warnings():
            # Sigmas recomputed as exp(-(-log sigma)) can miss the tree's range by rounding; torchsde then
            # clamps to the range (what we want) but warns on every query.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(t0, t1) for tree in self.trees]) * sign
        if not self.batched:
            w = w[0]
        # W(t1) - W(t0) has variance |t1 - t0|: normalise to unit variance.
        return (w / (t1 - t0).abs().sqrt()).to(device=self.device, dtype=self.dtype)


def brownian_tree_noise_sampler(
    x: torch.Tensor,
    sigma_min: float | torch.Tensor,
    sigma_max: float | torch.Tensor,
    seed: int | Sequence[int] | None = None,
    cpu: bool = False,
) -> NoiseSampler:
    """A Brownian-tree noise sampler, or plain seeded Gaussian noise when torchsde is not installed."""
    try:
        return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=cpu)
    except ImportError:
        log.warning("torchsde is not installed: SDE samplers use plain Gaussian noise (results differ from A1111)")
        if isinstance(seed, Sequence):
            gens = [torch.Generator(device=x.device).manual_seed(int(s)) for s in seed]
            return generator_noise_sampler(x, gens)
        return default_noise_sampler(x, seed=seed)
