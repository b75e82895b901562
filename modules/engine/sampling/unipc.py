"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"), multistep, data prediction, variants bh1 (A1111's default) and bh2 (diffusers' default).

Written in sigma space: with lambda = -log(sigma), the paper's x_t / alpha_t update becomes
x_next = (sigma_next / sigma) * x - expm1(-h) * m0 - B(h) * sum(rho_k * D_k), where the m are denoised
estimates and D_k their scaled differences. Each step costs one model call: the corrector's evaluation at the
new point is reused as the next step's newest estimate; the last step (to sigma 0) is predictor-only.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import Callback, DenoiserFn, NoiseSampler, batch_sigma, report
from .denoiser import DiscreteSchedule

Tensor = torch.Tensor
VARIANTS = ("bh1", "bh2")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


def unipc_sigmas(steps: int, schedule: DiscreteSchedule, skip_type: str = "time_uniform") -> Tensor:
    """A1111's UniPC time grid: `steps` steps from the last training timestep to the first, spaced
    uniformly (or quadratically) in time or uniformly in log-SNR; the final noise level is replaced by 0."""
    t_max = float(len(schedule.sigmas) - 1)
    if skip_type == "logSNR":
        log_sigmas = torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps + 1)
        sigmas = log_sigmas.exp()
    elif skip_type in ("time_uniform", "time_quadratic"):
        # Continuous time runs from 1 to 1/N and maps to timestep (time - 1/N) * N.
        n = len(schedule.sigmas)
        power = 2 if skip_type == "time_quadratic" else 1
        times = torch.linspace(1.0 ** (1 / power), (1 / n) ** (1 / power), steps + 1, dtype=torch.float64) ** power
        timesteps = ((times - 1 / n) * n).clamp(0, t_max).to(torch.float32)
        sigmas = schedule.t_to_sigma(timesteps)
    else:
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
    return torch.cat([sigmas[:-1], sigmas.new_zeros([1])])


def _coefficients(rks: list[float], h: float, order: int, variant: str) -> tuple[Tensor, Tensor, float, float]:
    """The UniPC linear system: R[i, k] = r_k^i and b_i = i! * phi_{i+1}(h) / B(h) (data prediction, hh=-h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    r = torch.tensor([*rks, 1.0], dtype=torch.float64)
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), h_phi_1, b_h


def _weighted(coeffs: Tensor, tensors: list[Tensor]) -> Tensor | float:
    return sum(float(c) * t for c, t in zip(coeffs, tensors, strict=True)) if tensors else 0.0


@torch.no_grad()
def sample_unipc(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
) -> Tensor:
    if variant not in VARIANTS:
        raise ValueError(f"UniPC variant must be one of {VARIANTS}, got {variant!r}")
    extra_args = extra_args or {}
    steps = len(sigmas) - 1
    order = max(1, min(order, steps))
    lambdas = [-math.log(float(s)) if s > 0 else math.inf for s in sigmas]

    denoised = model(x, batch_sigma(x, sigmas[0]), **extra_args)
    history: list[tuple[float, Tensor]] = [(lambdas[0], denoised)]  # (lambda, denoised), newest last
    for step in range(1, steps + 1):
        sigma, sigma_next = sigmas[step - 1], sigmas[step]
        lam0, m0 = history[-1]
        report(callback, x, step - 1, sigma, sigma, m0)
        if sigma_next == 0:
            x = m0  # the data-prediction update at sigma 0 is the newest estimate itself
            break
        step_order = step if step < order else order
        if lower_order_final and step >= order:
            step_order = min(order, steps + 1 - step)
        step_order = min(step_order, len(history))
        h = lambdas[step] - lam0
        rks = [(history[-(k + 1)][0] - lam0) / h for k in range(1, step_order)]
        d1s = [(history[-(k + 1)][1] - m0) / rk for k, rk in zip(range(1, step_order), rks, strict=True)]
        r_mat, b, h_phi_1, b_h = _coefficients(rks, h, step_order, variant)

        x_base = float(sigma_next / sigma) * x - h_phi_1 * m0
        # Predictor (UniP): order 2 uses rho = 1/2, higher orders solve the system without its last row/column.
        if d1s:
            rhos_p = torch.tensor([0.5]) if step_order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
            x_next = x_base - b_h * _weighted(rhos_p, d1s)
        else:
            x_next = x_base
        if step == steps:
            x = x_next
            break
        # Corrector (UniC): evaluate at the predicted point and redo the step with that estimate included.
        m_next = model(x_next, batch_sigma(x, sigma_next), **extra_args)
        rhos_c = torch.tensor([0.5]) if step_order == 1 else torch.linalg.solve(r_mat, b)
        corr = _weighted(rhos_c[:-1], d1s) + float(rhos_c[-1]) * (m_next - m0)
        x = x_base - b_h * corr
        history = [*history, (lambdas[step], m_next)][-order:]
    return x
