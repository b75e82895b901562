"""Classifier-free guidance around the UNet, with A1111's per-step semantics.

`modules.engine.unet_call` is the single function boundary where the network runs: latents and conditioning in,
model output out. Everything per step (which prompt-editing text applies, AND-composition weights, inpainting
masks, interrupts, extension callbacks) happens in `CFGDenoiser` around it, so the boundary can be compiled or
captured in a CUDA graph without touching the semantics. Each call of the inner model also says which rows are
negative-prompt rows and which step it is, for the UNet hooks (ControlNet's control modes and guidance window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from modules import prompt_parser
from modules.engine import hooks
from modules.engine.sampling.common import InterruptedException
from modules.engine.unet_call import unet_call  # noqa: F401  (the name extensions and tests reach here)


@dataclass
class StepConditioning:
    """What the denoiser needs at one step, per request."""

    cond: prompt_parser.MulticondLearnedConditioning
    uncond: list[list[prompt_parser.ScheduledPromptConditioning]]
    cfg_scale: float
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL time ids (cond and uncond rows), see engine
    added_uncond: dict[str, torch.Tensor] | None = None
    image_cond: torch.Tensor | None = None  # inpainting-model channels, [batch, c, h, w]


class CFGDenoiser:
    """k-diffusion denoiser: denoised = uncond + Σ weight·cfg·(cond_i − uncond), per image of the batch."""

    def __init__(self, inner: Any, conditioning: StepConditioning, *, is_sdxl: bool,
                 should_stop: Callable[[], bool] = lambda: False,
                 mask: torch.Tensor | None = None, nmask: torch.Tensor | None = None,
                 init_latent: torch.Tensor | None = None):
        self.inner_model = inner  # samplers reach the schedule through .inner_model
        self.c = conditioning
        self.is_sdxl = is_sdxl
        self.should_stop = should_stop
        self.mask, self.nmask, self.init_latent = mask, nmask, init_latent
        self.step = 0
        self.total_steps = 0  # how many steps the sampler runs in all; set by the caller, reported to hooks
        self.last_latent: torch.Tensor | None = None  # the latest denoised estimate, kept for interruptions

    def _context(self, conds: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(conds, dict):
            return conds["crossattn"], conds["vector"]
        return conds, None

    def _skips_uncond(self, sigma: torch.Tensor, s_min_uncond: float) -> bool:
        """A1111's NGMS: on every other step, once the noise is below s_min_uncond, the negative prompt's pass
        is left out (the picture is nearly done; the cond result stands in for it, at guidance 1)."""
        return bool(s_min_uncond > 0 and self.step % 2 and float(sigma[0]) < s_min_uncond)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, s_min_uncond: float = 0.0, **_: Any) -> torch.Tensor:
        if self.should_stop():
            stop = InterruptedException()
            stop.last_latent = self.last_latent
            raise stop
        conds_list, cond_batch = prompt_parser.reconstruct_multicond_batch(self.c.cond, self.step)
        uncond_batch = prompt_parser.reconstruct_cond_batch(self.c.uncond, self.step)
        cond_ctx, cond_vec = self._context(cond_batch)
        uncond_ctx, uncond_vec = self._context(uncond_batch)
        batch = x.shape[0]
        repeats = [len(c) for c in conds_list]
        sigma = sigma.expand(batch) if sigma.ndim == 0 else sigma

        x_in = torch.cat([x[i : i + 1].expand(n, -1, -1, -1) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([sigma[i : i + 1].expand(n) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = None
        if self.c.image_cond is not None:
            ic = self.c.image_cond
            image_cond_in = torch.cat([ic[i : i + 1].expand(n, -1, -1, -1) for i, n in enumerate(repeats)] + [ic])

        if hooks.registered("cfg_denoiser"):
            params = hooks.run("cfg_denoiser", hooks.CFGDenoiserParams(
                x_in, image_cond_in, sigma_in, self.step, self.total_steps, cond_batch, uncond_batch, self))
            x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        skip_uncond = self._skips_uncond(sigma, s_min_uncond)
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]
            image_cond_in = None if image_cond_in is None else image_cond_in[:-batch]

        added_in = None
        if self.is_sdxl:
            time_cond = torch.cat([self.c.added_cond["time_ids"][i : i + 1].expand(n, -1) for i, n in enumerate(repeats)])
            added_in = {
                "text_embeds": cond_vec if skip_uncond else torch.cat([cond_vec, uncond_vec]),
                "time_ids": time_cond if skip_uncond else torch.cat([time_cond, self.c.added_uncond["time_ids"]]),
            }

        n_cond = x_in.shape[0] - (0 if skip_uncond else batch)
        uncond_rows = torch.arange(x_in.shape[0], device=x_in.device) >= n_cond
        step_info = {"step": self.step, "total_steps": self.total_steps}
        if skip_uncond:
            out = self.inner_model(x_in, sigma_in, context=cond_ctx, added=added_in, image_cond=image_cond_in,
                                   uncond_rows=uncond_rows, **step_info)
            out = torch.cat([out, out[[conds[0][0] for conds in conds_list]]])  # each image's first cond as uncond
        elif cond_ctx.shape[1] == uncond_ctx.shape[1]:
            out = self.inner_model(x_in, sigma_in, context=torch.cat([cond_ctx, uncond_ctx]), added=added_in,
                                   image_cond=image_cond_in, uncond_rows=uncond_rows, **step_info)
        else:
            # Different prompt lengths (chunk counts): two passes, as A1111 does by default.
            parts = []
            for rows, context in ((slice(0, n_cond), cond_ctx), (slice(n_cond, None), uncond_ctx)):
                parts.append(self.inner_model(
                    x_in[rows], sigma_in[rows], context=context,
                    added={k: v[rows] for k, v in added_in.items()} if added_in else None,
                    image_cond=None if image_cond_in is None else image_cond_in[rows],
                    uncond_rows=uncond_rows[rows], **step_info))
            out = torch.cat(parts)

        if hooks.registered("cfg_denoised"):
            out = hooks.run("cfg_denoised", hooks.CFGDenoisedParams(out, self.step, self.total_steps,
                                                                    self.inner_model)).x
        denoised_uncond = out[-batch:]
        denoised = denoised_uncond.clone()
        cfg_scale = 1.0 if skip_uncond else self.c.cfg_scale
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (out[cond_index] - denoised_uncond[i]) * (weight * cfg_scale)
        if self.mask is not None:
            # Inpainting with an ordinary model: keep the original where the mask says so (A1111's mask = keep).
            denoised = self.init_latent * self.mask + self.nmask * denoised
        if hooks.registered("cfg_after_cfg"):
            denoised = hooks.run("cfg_after_cfg", hooks.AfterCFGCallbackParams(denoised, self.step,
                                                                               self.total_steps)).x
        self.step += 1
        self.last_latent = denoised
        return denoised
