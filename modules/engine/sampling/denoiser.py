"""Turn a raw UNet (eps- or v-prediction, called with a timestep) into a k-diffusion denoiser.

The discrete DDPM schedule is described by its sigmas, sigma_t = sqrt((1 - alphas_cumprod_t) / alphas_cumprod_t).
A denoiser called at any (continuous) sigma finds the matching fractional timestep by interpolating in
log-sigma, scales the input to unit variance, runs the model and converts its output into `denoised`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .common import append_dims, append_zero

ModelFn = Callable[..., torch.Tensor]
PREDICTION_TYPES = ("epsilon", "v_prediction")

# A zero-terminal-SNR schedule has alphas_cumprod[-1] == 0 (infinite sigma); A1111 and ComfyUI replace it
# with this value, which gives sigma_max ~ 4500.
ZERO_SNR_ALPHAS_CUMPROD = 4.8973451890853435e-08


def make_alphas_cumprod(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    beta_schedule: str = "scaled_linear",
    trained_betas: list[float] | None = None,
) -> torch.Tensor:
    """alphas_cumprod for a diffusers-style config. The SD default is scaled_linear 0.00085..0.012.

    Computed in float64 and rounded to float32 at the end, as the original LDM code does.
    """
    n = num_train_timesteps
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    elif beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t + s) / (1 + s)) * pi / 2), s = 0.008, betas <= 0.999
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=torch.float64
        )
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1:
    shift and scale sqrt(alphas_cumprod) so the last timestep is pure noise, keeping the first unchanged."""
    sqrt_ac = alphas_cumprod.to(torch.float64).sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    return (sqrt_ac**2).to(alphas_cumprod.dtype)


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """alphas_cumprod from a diffusers scheduler config (scheduler_config.json) dict."""
    ac = make_alphas_cumprod(
        num_train_timesteps=config.get("num_train_timesteps", 1000),
        beta_start=config.get("beta_start", 0.00085),
        beta_end=config.get("beta_end", 0.012),
        beta_schedule=config.get("beta_schedule", "scaled_linear"),
        trained_betas=config.get("trained_betas"),
    )
    if config.get("rescale_betas_zero_snr", False):
        ac = rescale_zero_terminal_snr(ac)
    return ac


class DiscreteSchedule:
    """The model's training noise levels and the sigma <-> timestep maps between them.

    `sigmas` is ascending: sigmas[t] is the noise level of training timestep t.
    """

    def __init__(self, alphas_cumprod: torch.Tensor | None = None, quantize: bool = False) -> None:
        ac = make_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).detach()
        ac = ac.to(device="cpu", dtype=torch.float32).clone()
        if ac[-1] <= 0:
            ac[-1] = ZERO_SNR_ALPHAS_CUMPROD
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.quantize = quantize
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Small per-device copies, so every step does not copy the table to the GPU.
        if device not in self._tables:
            self._tables[device] = (self.sigmas.to(device), self.log_sigmas.to(device))
        return self._tables[device]

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Fractional timestep of `sigma`: linear interpolation of t over log-sigma between the two nearest
        training noise levels (or the nearest one when quantizing)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        quantize = self.quantize if quantize is None else quantize
        _, log_sigmas = self._on(sigma.device)
        log_sigma = sigma.log()
        if quantize:
            dists = log_sigma - log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape).to(torch.float32)
        # the last training level at or below sigma (levels ascend): one search instead of a cumulative sum over
        # all thousand levels, which cost more GPU time per step than the rest of this function
        low_idx = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(
            min=0, max=log_sigmas.shape[0] - 2).view(log_sigma.shape)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level at a fractional timestep: log-linear interpolation between training noise levels."""
        t = torch.as_tensor(t, dtype=torch.float32)
        _, log_sigmas = self._on(t.device)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
        return log_sigma.exp()

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """n noise levels at evenly spaced timesteps from the last to the first, then 0 (k-diffusion's and
        A1111's "uniform" schedule). With n=None, every training noise level."""
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n)
        return append_zero(self.t_to_sigma(t))


class Denoiser(DiscreteSchedule):
    """k-diffusion form of an eps- or v-prediction model: `denoised = denoiser(x, sigma, **cond)`.

    `model_fn(x_in, t, **cond)` gets the unit-variance input x_in = x / sqrt(sigma^2 + 1) and a float
    timestep tensor of shape [batch] (fractional unless `quantize`); it returns the raw model output.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        alphas_cumprod: torch.Tensor | None = None,
        prediction_type: str = "epsilon",
        quantize: bool = False,
        is_sdxl: bool = False,
    ) -> None:
        super().__init__(alphas_cumprod, quantize=quantize)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.inner_model = model_fn
        self.prediction_type = prediction_type
        self.is_sdxl = is_sdxl  # only the Align Your Steps schedule looks at this

    @classmethod
    def from_scheduler_config(cls, model_fn: ModelFn, config: Mapping[str, Any], **kwargs: Any) -> Denoiser:
        """Build from a diffusers scheduler config dict (betas, prediction_type, rescale_betas_zero_snr)."""
        kwargs.setdefault("prediction_type", config.get("prediction_type", "epsilon"))
        return cls(model_fn, alphas_cumprod_from_config(config), **kwargs)

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in) with denoised = c_skip * x + c_out * model(c_in * x); sigma_data = 1."""
        c_in = 1 / (sigma**2 + 1) ** 0.5
        if self.prediction_type == "v_prediction":
            return 1 / (sigma**2 + 1), -sigma * c_in, c_in
        return torch.ones_like(sigma), -sigma, c_in

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.get_scalings(sigma))
        output = self.inner_model(x * c_in, self.sigma_to_t(sigma), **cond)
        return c_skip * x + c_out * output

    forward = __call__
