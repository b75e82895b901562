"""A1111's timestep samplers DDIM and PLMS, written over a k-diffusion denoiser.

A1111 runs these in the variance-preserving "timestep" space on eps predictions. Dividing that update by
sqrt(alphas_cumprod) turns it into the same update in sigma space, where eps = (x - denoised) / sigma:
DDIM(eta) is exactly an Euler-ancestral step with eta, PLMS is Adams-Bashforth on eps. The timestep grid
A1111 uses comes from `timestep_grid_sigmas` (the registry's sampler objects call it).
"""

from __future__ import annotations

from typing import Any

import torch

from .common import Callback, DenoiserFn, NoiseSampler, batch_sigma, get_ancestral_step, report, to_d
from .denoiser import DiscreteSchedule
from .noise import default_noise_sampler

Tensor = torch.Tensor


def a1111_timesteps(steps: int) -> list[int]:
    """A1111's DDIM/PLMS timesteps, ascending: 1, 1 + k, 1 + 2k, ... with k = 1000 // steps.

    For steps that do not divide 1000 this is more than `steps` timesteps (A1111 behaviour).
    """
    return [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]


def timestep_grid_sigmas(steps: int, schedule: DiscreteSchedule) -> Tensor:
    """Sigmas for A1111's DDIM/PLMS: its timesteps from the largest down, ending in 0.

    A1111 steps from each timestep to the next smaller one and stops at t=1 (sigma ~0.04, one step fewer
    than the timesteps); here that last target is 0, so the result is fully denoised.
    """
    timesteps = a1111_timesteps(steps)[::-1]
    starts = timesteps[:-1] or [len(schedule.sigmas) - 1]  # one step at least (A1111 would do none)
    sigmas = schedule.t_to_sigma(torch.tensor(starts, dtype=torch.float32))
    return torch.cat([sigmas, sigmas.new_zeros([1])])


@torch.no_grad()
def sample_ddim(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021). With eta > 0, fresh noise of DDIM's sigma_t(eta) is added each step."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + to_d(x, sigmas[i], denoised) * sigma_down
        if eta and levels[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


# Adams-Bashforth weights for the newest eps first, by number of points (PLMS, Liu et al. 2022).
_ADAMS_BASHFORTH = {
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@torch.no_grad()
def sample_plms(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Pseudo linear multistep: a Heun-like first step (two model calls), then 2nd- to 4th-order
    Adams-Bashforth combinations of past eps, each followed by a DDIM step."""
    extra_args = extra_args or {}
    old_eps: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        eps = to_d(x, sigma, denoised)
        report(callback, x, i, sigma, sigma, denoised)
        if not old_eps:
            eps_prime = eps
            if sigma_next > 0:  # the final step to 0 has nowhere to evaluate a second eps
                x_next = x + eps * (sigma_next - sigma)
                eps_next = to_d(x_next, sigma_next, model(x_next, batch_sigma(x, sigma_next), **extra_args))
                eps_prime = (eps + eps_next) / 2
        else:
            weights = _ADAMS_BASHFORTH[len(old_eps) + 1]
            eps_prime = sum(w * e for w, e in zip(weights, [eps, *reversed(old_eps)], strict=True))
        x = x + eps_prime * (sigma_next - sigma)
        old_eps = [*old_eps, eps][-3:]
    return x
