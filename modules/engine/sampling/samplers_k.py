"""k-diffusion samplers: short pure functions over a denoiser.

Each takes `(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, **options)`,
walks the sigmas (x starts at noise level sigmas[0]) and returns the latent at sigmas[-1]. `callback` is
called once per step, after the step's first model call, with the x that step started from (k-diffusion's
convention). All randomness comes from `noise_sampler(sigma, sigma_next)`; without one, a seeded default.
`disable` (k-diffusion's progress-bar switch) is accepted and ignored: progress goes through the callback.

Algorithms: Karras et al. 2022 (Euler, Heun, churn), DPM-Solver (Lu et al. 2022: DPM2 is its 2nd-order
single-step form in sigma), DPM-Solver++ (Lu et al. 2022b: 2S, 2M, SDE variants), linear multistep (LMS).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .common import Callback, DenoiserFn, NoiseSampler, batch_sigma, get_ancestral_step, report, to_d
from .noise import default_noise_sampler

# Type aliases keep the long, shared signatures readable.
Tensor = torch.Tensor
ExtraArgs = dict[str, Any] | None


def _t(sigma: Tensor) -> Tensor:
    """DPM-Solver's time variable: t = -log(sigma) (half the log-SNR)."""
    return -sigma.log()


def _sigma(t: Tensor) -> Tensor:
    return (-t).exp()


def _churn_gamma(sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al.'s stochastic "churn": how far to raise the noise level before a step."""
    if s_churn <= 0:
        return 0.0
    return min(s_churn / n_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def _raise_noise(
    x: Tensor, sigma: Tensor, gamma: float, s_churn: float, s_noise: float, noise_sampler: NoiseSampler
) -> tuple[Tensor, Tensor]:
    """Add fresh noise taking x from sigma up to sigma_hat = sigma * (1 + gamma).

    With churn on, noise is drawn on every step even where gamma is 0 (outside s_tmin..s_tmax), as
    k-diffusion does, so a seed gives the same image as there."""
    sigma_hat = sigma * (gamma + 1)
    if s_churn > 0:
        eps = noise_sampler(sigma, sigma_hat) * s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without the Heun correction)."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    n = len(sigmas) - 1
    for i in range(n):
        gamma = _churn_gamma(levels[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _raise_noise(x, sigmas[i], gamma, s_churn, s_noise, noise_sampler)
        denoised = model(x, batch_sigma(x, sigma_hat), **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler step down to sigma_down, then fresh noise up to sigma_next (eta=1: the DDPM posterior noise)."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if levels[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Karras et al. 2022, Algorithm 2: Heun's 2nd-order method, Euler on the last step (sigma_next = 0)."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    n = len(sigmas) - 1
    for i in range(n):
        gamma = _churn_gamma(levels[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _raise_noise(x, sigmas[i], gamma, s_churn, s_noise, noise_sampler)
        denoised = model(x, batch_sigma(x, sigma_hat), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if levels[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, batch_sigma(x, sigmas[i + 1]), **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Midpoint method with the midpoint taken in log-sigma (DPM-Solver-2 form)."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    n = len(sigmas) - 1
    for i in range(n):
        gamma = _churn_gamma(levels[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _raise_noise(x, sigmas[i], gamma, s_churn, s_noise, noise_sampler)
        denoised = model(x, batch_sigma(x, sigma_hat), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = _dpm_2_step(model, x, d, sigma_hat, sigmas[i + 1], extra_args)
    return x


def _dpm_2_step(model: DenoiserFn, x: Tensor, d: Tensor, sigma: Tensor, sigma_to: Tensor, extra_args: dict) -> Tensor:
    """From sigma to sigma_to using the slope at the log-sigma midpoint; plain Euler when sigma_to is 0."""
    if sigma_to == 0:
        return x + d * (sigma_to - sigma)
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, batch_sigma(x, sigma_mid), **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM2 step down to sigma_down, then fresh noise up to sigma_next."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = _dpm_2_step(model, x, to_d(x, sigmas[i], denoised), sigmas[i], sigma_down, extra_args)
        if sigma_down > 0:  # k-diffusion adds noise only after a real DPM2 step (not after the final Euler)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial through t[i], t[i-1], ... that is 1 at
    t[i-j]: the weight of the j-th most recent derivative in an Adams-Bashforth step (exact, in float64)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly *= np.polynomial.Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over up to `order` past derivatives."""
    extra_args = extra_args or {}
    sigmas_np = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=False))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S) single-step 2nd order to sigma_down, then ancestral noise to sigma_next."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # Exponential-integrator steps in t = -log(sigma) with the data prediction; midpoint r = 1/2.
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, batch_sigma(x, _sigma(s)), **extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if levels[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M): multistep 2nd order, the previous denoised as the second point; 1st order on the
    first step and on the final step to sigma 0."""
    extra_args = extra_args or {}
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            denoised_d = denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 1 / 2,
) -> Tensor:
    """DPM-Solver++ (stochastic, single-step 2nd order): an ancestral sub-step to t + r*h, then the full
    step from the same start using both denoised estimates. Two model calls per step."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        s = t + (t_next - t) * r

        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, batch_sigma(x, _sigma(s)), **extra_args)

        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE: the multistep data-prediction update of the reverse SDE, with the 2nd-order
    correction in "midpoint" or "heun" form."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            decay = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + decay * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (decay / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * decay * (1 / r) * (denoised - old_denoised)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: ExtraArgs = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE: like 2M SDE with a 3rd-order correction from the two previous denoised."""
    extra_args = extra_args or {}
    levels = sigmas.tolist()  # compared on the host: comparing a device tensor waits for the GPU every step
    noise_sampler = noise_sampler or default_noise_sampler(x)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, batch_sigma(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
    return x


__all__ = [
    "linear_multistep_coeff",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
]
