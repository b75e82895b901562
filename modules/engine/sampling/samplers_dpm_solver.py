"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling"):
A1111's "DPM fast" (fixed steps, orders 3/2/1 as in the paper's "DPM-Solver-fast") and "DPM adaptive"
(embedded 2/3-order pairs with a PID step-size controller).

Both work in t = -log(sigma) on the noise prediction eps = (x - denoised) / sigma. They take the usual
sampler signature and read sigma_max = sigmas[0], sigma_min = the smallest non-zero sigma and (for "fast")
the step count from `sigmas`; like k-diffusion they stop at sigma_min, not at 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import Callback, DenoiserFn, NoiseSampler, batch_sigma, get_ancestral_step, report
from .noise import default_noise_sampler

Tensor = torch.Tensor


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


class _Solver:
    """The DPM-Solver 1/2/3-order single steps, sharing one eps evaluation per step through a cache."""

    def __init__(self, model: DenoiserFn, extra_args: dict[str, Any]) -> None:
        self.model, self.extra_args = model, extra_args

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, batch_sigma(x, sigma), **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        return x - _sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 3, r2: float = 2 / 3
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - _sigma(s2) * (r2 * h).expm1() * eps
            - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def step(self, order: int, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        return (self.step_1, self.step_2, self.step_3)[order - 1](x, t, t_next, cache)


def _sigma_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError("DPM fast/adaptive need at least one non-zero sigma")
    return positive.min(), sigmas[0]


def _ancestral_target(t: Tensor, t_next: Tensor, t_end: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Where the deterministic part of a step lands, and the noise to add after it."""
    if not eta:
        return t_next, torch.zeros_like(t)
    sd, _ = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_next_ = torch.minimum(t_end, _t(sd))
    return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


def fast_orders(nfe: int) -> list[int]:
    """The paper's DPM-Solver-fast plan: as many 3rd-order steps as the budget of model calls allows."""
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-fast with len(sigmas) - 1 model calls on steps evenly spaced in log-sigma."""
    nfe = len(sigmas) - 1
    if nfe < 1:
        return x
    solver = _Solver(model, extra_args or {})
    noise_sampler = noise_sampler or default_noise_sampler(x)
    sigma_min, sigma_max = _sigma_range(sigmas)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    orders = fast_orders(nfe)
    ts = torch.linspace(float(t_start), float(t_end), len(orders) + 1, device=sigmas.device)
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _ancestral_target(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        report(callback, x, i, _sigma(t), _sigma(t), x - _sigma(t) * eps)
        x = solver.step(order, x, t, t_next_, cache)
        x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


class PIDStepSizeController:
    """Step-size control from the error of an embedded pair (Söderlind's digital filter form; with the
    default coefficients it is the plain integral controller h *= err^(-1/order))."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float = 1,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(x: float) -> float:
        # Smoothly bounds the change factor to (1 - pi/2, 1 + pi/2).
        return 1 + math.atan(x - 1)

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = self.limiter(factor)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, int]]:
    """Adaptive DPM-Solver: each attempt compares an order-(k-1) and an order-k step and lets the
    controller accept it and/or resize h. The callback's "i" counts attempts, accepted or not."""
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    solver = _Solver(model, extra_args or {})
    noise_sampler = noise_sampler or default_noise_sampler(x)
    sigma_min, sigma_max = _sigma_range(sigmas)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    pid = PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    s, x_prev = t_start, x
    while s < t_end - 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, su = _ancestral_target(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low, x_high = solver.step_1(x, s, t_, cache), solver.step_2(x, s, t_, cache)
        else:
            x_low, x_high = solver.step_2(x, s, t_, cache, r1=1 / 3), solver.step_3(x, s, t_, cache)
        delta = torch.maximum(torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = ((x_low - x_high) / delta).pow(2).mean().sqrt()  # RMS norm, as in the paper
        report(callback, x, info["steps"], _sigma(s), _sigma(s), denoised, error=error, h=pid.h)
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t))
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += len(cache)
        info["steps"] += 1
    return (x, info) if return_info else x
