"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"), as A1111 runs it.

Heun ODE steps, plus "restart" intervals: at a chosen low noise level the latent is pushed back up to a
higher level with fresh noise and the stretch is solved again, which contracts accumulated error. With 20+
steps and no explicit `restart_list`, A1111's choice is used: the main schedule is rebuilt as Karras with
fewer steps and the freed steps are spent on restarts from sigma ~0.1 up to sigma ~2.
"""

from __future__ import annotations

from typing import Any

import torch

from .common import Callback, DenoiserFn, NoiseSampler, batch_sigma, report, to_d
from .noise import default_noise_sampler
from .schedules import karras

Tensor = torch.Tensor
RestartList = dict[float, list[float]]  # {sigma to restart at: [restart_steps, restart_times, sigma to go up to]}


def default_restart_plan(sigmas: Tensor) -> tuple[Tensor, RestartList]:
    """A1111's automatic plan for a schedule of len(sigmas) - 1 steps."""
    steps = len(sigmas) - 1
    if steps < 20:
        return sigmas, {}
    restart_steps, restart_times = 9, 1
    if steps >= 36:
        restart_steps, restart_times = steps // 4, 2
    main = karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0])).to(sigmas.device)
    return main, {0.1: [restart_steps + 1, restart_times, 2]}


def _nearest_index(sigmas: Tensor, value: float) -> int:
    return int(torch.argmin((sigmas - value).abs()))


def plan_steps(sigmas: Tensor, restart_list: RestartList) -> list[tuple[Tensor, Tensor]]:
    """The (sigma, sigma_next) pairs to solve, restart stretches inserted after the step that reaches them."""
    restarts = {_nearest_index(sigmas, key): value for key, value in restart_list.items()}
    pairs: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in restarts:
            continue
        restart_steps, restart_times, restart_max = restarts[i + 1]
        min_idx, max_idx = i + 1, _nearest_index(sigmas, restart_max)
        if max_idx >= min_idx:
            continue  # the upper level is not above the restart point: nothing to redo
        stretch = karras(int(restart_steps), float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1].to(sigmas.device)
        for _ in range(int(restart_times)):
            pairs.extend(zip(stretch[:-1], stretch[1:], strict=True))
    return pairs


@torch.no_grad()
def sample_restart(
    model: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    restart_list: RestartList | None = None,
) -> Tensor:
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    if restart_list is None:
        sigmas, restart_list = default_restart_plan(sigmas)
    last_sigma = None
    for i, (sigma, sigma_next) in enumerate(plan_steps(sigmas, restart_list)):
        if last_sigma is not None and last_sigma < sigma:
            # Restart: renoise from the level we reached back up to the stretch's start.
            x = x + noise_sampler(last_sigma, sigma) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, batch_sigma(x, sigma), **extra_args)
        d = to_d(x, sigma, denoised)
        report(callback, x, i, sigma, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, batch_sigma(x, sigma_next), **extra_args))
            x = x + (d + d_2) / 2 * dt
        last_sigma = sigma_next
    return x
