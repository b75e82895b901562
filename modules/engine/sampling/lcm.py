"""LCM (Latent Consistency Models, Luo et al. 2023) as A1111 runs it.

A consistency model maps any noisy latent straight to a clean one, so each step is "denoise fully, then
renoise to the next sigma". The model was distilled on a 50-timestep grid (every 20th training timestep,
ending at 999), and its output is mixed with the input by the consistency boundary condition
c_skip(t) * x + c_out(t) * denoised, with sigma_data = 0.5 and timesteps scaled by 10.
"""

from __future__ import annotations

from typing import Any

import torch

from .common import Callback, DenoiserFn, NoiseSampler, append_dims, append_zero, batch_sigma, report
from .denoiser import Denoiser, DiscreteSchedule, ModelFn
from .noise import default_noise_sampler

Tensor = torch.Tensor
ORIGINAL_STEPS = 50
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


class LCMDenoiser(Denoiser):
    """A Denoiser whose noise levels are the 50 LCM timesteps; the model always gets one of them."""

    def __init__(
        self,
        model_fn: ModelFn,
        alphas_cumprod: Tensor | None = None,
        prediction_type: str = "epsilon",
        is_sdxl: bool = False,
        original_steps: int = ORIGINAL_STEPS,
    ) -> None:
        full = DiscreteSchedule(alphas_cumprod)
        n = len(full.alphas_cumprod)
        self.skip_steps = n // original_steps
        # Grid timesteps skip-1, 2*skip-1, ..., n-1 (19, 39, ..., 999 for SD).
        grid = torch.arange(original_steps) * self.skip_steps + (self.skip_steps - 1)
        super().__init__(model_fn, full.alphas_cumprod[grid], prediction_type, quantize=True, is_sdxl=is_sdxl)

    def sigma_to_t(self, sigma: Tensor, quantize: bool | None = None) -> Tensor:
        """Training timestep (0..999) of the nearest grid noise level."""
        return super().sigma_to_t(sigma, quantize=True) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        index = ((t - (self.skip_steps - 1)) / self.skip_steps).clamp(0, len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def get_sigmas(self, n: int | None = None) -> Tensor:
        """n sigmas at timesteps evenly spaced from 999 down to the first grid timestep, then 0."""
        if n is None:
            return append_zero(self.sigmas.flip(0))
        start = self.sigma_to_t(torch.tensor(self.sigma_max))
        end = self.sigma_to_t(torch.tensor(self.sigma_min))
        return append_zero(self.t_to_sigma(torch.linspace(float(start), float(end), n)))

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        denoised = super().__call__(x, sigma, **cond)
        scaled_t = append_dims(self.sigma_to_t(sigma).to(x.dtype), x.ndim) * TIMESTEP_SCALING
        c_skip = SIGMA_DATA**2 / (scaled_t**2 + SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + SIGMA_DATA**2) ** 0.5
        return c_out * denoised + c_skip * x

    forward = __call__


@torch.no_grad()
def sample_lcm(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Denoise, then add fresh noise at the next sigma (none after the last step)."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if levels[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x
