"""Small helpers shared by the sampler functions.

Conventions follow k-diffusion: a *denoiser* is `model(x, sigma, **extra_args) -> denoised`, where `x` is the
noisy latent in variance-exploding form (x = x0 + sigma * eps) and `sigma` has shape [batch].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

Callback = Callable[[dict[str, Any]], None]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DenoiserFn(Protocol):
    """What every sampler calls: returns the model's estimate of the clean latent."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


class InterruptedException(BaseException):
    """Raised (usually from a step callback) to stop sampling; A1111's name, a BaseException like there.

    `last_latent` carries the denoiser's latest estimate of the clean latent (None before the first step), so an
    interrupted or skipped image can still be decoded and kept, as A1111 does.
    """

    last_latent: torch.Tensor | None = None


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample value broadcasts over an image batch."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x[(...,) + (None,) * missing]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / append_dims(torch.as_tensor(sigma, device=x.device), x.ndim)


def get_ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step sigma_from -> sigma_to into a deterministic step down to sigma_down plus fresh noise
    of size sigma_up, so that sigma_down**2 + sigma_up**2 == sigma_to**2 (eta=1 is the DDPM posterior)."""
    if not eta:
        return sigma_to, torch.zeros_like(torch.as_tensor(sigma_to))
    sigma_up = torch.minimum(
        torch.as_tensor(sigma_to),
        eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5,
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def batch_sigma(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """A scalar sigma repeated for every sample in the batch: the shape denoisers expect."""
    return torch.as_tensor(sigma, device=x.device, dtype=x.dtype) * x.new_ones([x.shape[0]])


def report(
    callback: Callback | None,
    x: torch.Tensor,
    i: int,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
    denoised: torch.Tensor,
    **extra: Any,
) -> None:
    """One progress report per step; the callback may raise to interrupt sampling."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised, **extra})
