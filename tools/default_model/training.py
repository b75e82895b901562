"""Train the bundled default model from scratch: a small Stable Diffusion 1 architecture on the scene world.

Resumable stages share one output folder:
- "vae": AutoencoderKL on rendered scenes (L1 + MSE reconstruction, a small KL term);
- "decoder" (optional, any time after "vae"): the VAE decoder trained on, the encoder frozen, so the latent
  space the UNet learned stays the same;
- "unet": the VAE frozen, UNet2DConditionModel and the CLIP text encoder trained together with the standard
  epsilon-prediction DDPM loss on SD's scaled-linear schedule, latents scaled by 1 / (measured latent std).

Each stage checkpoints (weights, optimizer, step) to ``<out>/<stage>.pt`` and logs losses to ``<out>/loss_<stage>.csv``
(plus a PNG when matplotlib is installed). ``export`` writes the original single-file layout with a JSON sidecar
for what the loader cannot read from the weights, and checks that the loader gives back the same UNet.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

STAGES = ("vae", "unet", "decoder")  # decoder: an optional fine-tune of the VAE decoder, encoder frozen
FP16_BYTES = 2
TIMESTEPS = 1000
# Schedule buffers ldm_export adds for SD1 (betas, alphas_cumprod, ... and posterior terms): 1000 fp16 values each.
SCHEDULE_BUFFER_BYTES = 11 * TIMESTEPS * FP16_BYTES

SceneSource = Callable[[np.random.Generator, int], tuple[Image.Image, str]]  # (rng, size) -> image, caption


@dataclass
class ModelConfig:
    """Sizes of the three networks. Defaults: about 18.7 M parameters, a ~37.5 MB fp16 checkpoint."""

    image_size: int = 256
    unet_channels: tuple[int, ...] = (64, 128, 160)
    unet_layers: int = 1
    # Cross-attention at the two coarser levels only: attention on the 32x32 latent costs most on the CPU.
    unet_attention: tuple[bool, ...] = (False, True, True)
    head_channels: int = 32
    text_hidden: int = 128  # the 49408-token embedding dominates the text encoder's size
    text_layers: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64, 128)  # four levels: 8 pixels per latent cell, as in SD
    vae_layers: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    @property
    def attention_heads(self) -> list[int]:
        return [max(1, c // self.head_channels) for c in self.unet_channels]


@dataclass
class TrainConfig:
    out: Path
    stage: str = "vae"
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    time_budget_min: float | None = None
    resume: bool = False
    workers: int = 0
    caption_dropout: float = 0.1  # empty caption, so the model learns the unconditional branch for CFG
    kl_weight: float = 1e-6
    ema_decay: float = 0.0  # 0 disables EMA
    warmup_steps: int = 100
    save_every: int = 500
    log_every: int = 10
    model: ModelConfig = field(default_factory=ModelConfig)


# ---------------------------------------------------------------- networks


def unet_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention)]
    return {
        "sample_size": cfg.latent_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": tuple(cfg.unet_channels),
        "layers_per_block": cfg.unet_layers,
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "cross_attention_dim": cfg.text_hidden,
        "attention_head_dim": cfg.attention_heads,  # diffusers' legacy name: the number of heads
        "use_linear_projection": False,  # SD1 layout: conv proj_in
    }


def vae_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    levels = len(cfg.vae_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": tuple(cfg.vae_channels),
        "layers_per_block": cfg.vae_layers,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": cfg.image_size,
        "scaling_factor": 1.0,  # replaced by the measured value before the UNet stage
    }


def text_config(cfg: ModelConfig) -> CLIPTextConfig:
    # What the loader infers for SD1 (CLIP-L layout): 64 channels per head, quick_gelu, CLIP vocabulary.
    return CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_attention_heads=cfg.text_hidden // 64,
        num_hidden_layers=cfg.text_layers,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(**unet_kwargs(cfg))


def build_vae(cfg: ModelConfig) -> AutoencoderKL:
    return AutoencoderKL(**vae_kwargs(cfg))


def build_text_encoder(cfg: ModelConfig) -> CLIPTextModel:
    return CLIPTextModel(text_config(cfg))


def _float_numel(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters (float state-dict entries) per network; built on the meta device, so instant."""
    with torch.device("meta"):
        return {
            "unet": _float_numel(build_unet(cfg)),
            "vae": _float_numel(build_vae(cfg)),
            "text_encoder": _float_numel(build_text_encoder(cfg)),
        }


def projected_checkpoint_bytes(cfg: ModelConfig) -> int:
    """Size of the exported fp16 single file, give or take the safetensors header."""
    return sum(parameter_counts(cfg).values()) * FP16_BYTES + SCHEDULE_BUFFER_BYTES


# ---------------------------------------------------------------- data


def scene_world_source() -> SceneSource:
    """Scenes from tools.default_model.scenes, never the held-out combinations (they test generalisation)."""
    from tools.default_model import scenes

    def make(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
        scene = scenes.sample_scene(rng, exclude_held_out=True)
        # 2x supersampling renders five times faster than the default 4x, with edges nearly as clean: the
        # loader's workers, not the GPU, bound the step time otherwise.
        return scenes.render(scene, size=size, supersample=2), scenes.caption(scene)

    return make


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class SceneDataset(torch.utils.data.IterableDataset):
    """An endless stream of (image in [-1, 1], caption), seeded per worker so workers never repeat each other."""

    def __init__(self, source: SceneSource, size: int, seed: int) -> None:
        self.source = source
        self.size = size
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            image, text = self.source(rng, self.size)
            yield image_to_tensor(image, self.size), text


def collate_tokenized(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images stacked, captions tokenized: runs in the loader's workers, off the training loop's critical path."""
    images, captions = zip(*batch, strict=True)
    return torch.stack(images), tokenize(list(captions))


def make_loader(source: SceneSource, tc: TrainConfig, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # The data seed moves with the start step, so a resumed run sees new scenes rather than replaying old ones.
    data_seed = tc.seed * 1_000_003 + STAGES.index(tc.stage) * 10_007 + start_step + 1
    dataset = SceneDataset(source, tc.model.image_size, data_seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=tc.batch_size,
        num_workers=tc.workers,
        collate_fn=collate_tokenized,
        pin_memory=tc.device.startswith("cuda"),
        persistent_workers=tc.workers > 0,
        prefetch_factor=4 if tc.workers > 0 else None,
    )
    return iter(loader)


def tokenize(captions: list[str]) -> torch.Tensor:
    from modules.models.loader import load_tokenizer

    tokenizer = load_tokenizer("clip-l")
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def drop_captions(ids: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace a share p of the tokenized captions with the empty caption, the unconditional branch of CFG."""
    drop = torch.rand(ids.shape[0], generator=gen) < p
    out = ids.clone()
    out[drop] = _empty_caption_ids()
    return out


@functools.cache
def _empty_caption_ids() -> torch.Tensor:
    return tokenize([""])[0]  # once, not every step


# ---------------------------------------------------------------- losses


def alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule (beta 0.00085 .. 0.012, 1000 steps), the one the engine samples with."""
    from modules.models.loader import default_alphas_cumprod

    return default_alphas_cumprod(TIMESTEPS)


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample()).sample.float()
    l1 = F.l1_loss(recon, images)
    mse = F.mse_loss(recon, images)
    kl = posterior.kl().mean()
    loss = l1 + mse + kl_weight * kl
    # Tensors, not floats: reading them would wait for the GPU every step; the loop reads them when it logs.
    return loss, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}


def diffusion_loss(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    context: torch.Tensor,
    schedule: torch.Tensor,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard DDPM epsilon loss: noise the latents at a uniform random timestep, predict the noise."""
    b = latents.shape[0]
    t = torch.randint(0, TIMESTEPS, (b,), generator=gen, device="cpu").to(latents.device)
    noise = torch.randn(latents.shape, generator=gen, device="cpu").to(latents.device, latents.dtype)
    a = schedule.to(latents.device)[t].view(b, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    pred = unet(noisy, t, encoder_hidden_states=context).sample
    return F.mse_loss(pred.float(), noise.float())


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, batches: list[torch.Tensor]) -> float:
    """1 / std of the latents, so the UNet sees unit-variance inputs (SD's 0.18215 was measured the same way)."""
    latents = torch.cat([vae.encode(x).latent_dist.sample() for x in batches])
    return float(1.0 / latents.float().std())


# ---------------------------------------------------------------- training loop helpers


def lr_at(step: int, tc: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total - tc.warmup_steps))
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Ema:
    """Exponential moving average of the trainable weights, with the usual warm-up of the decay."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {
            name: {k: p.detach().float().clone() for k, p in m.named_parameters()} for name, m in modules.items()
        }

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for name, m in modules.items():
            shadow = self.shadow[name]
            pairs = [(shadow[k], p) for k, p in m.named_parameters() if k in shadow]
            # One fused kernel per module rather than one per tensor: the update runs every step.
            torch._foreach_lerp_([s for s, _ in pairs], [p.detach().float() for _, p in pairs], 1 - d)


def save_atomic(obj: Any, path: Path) -> None:
    # A run killed mid-save must leave the previous checkpoint intact.
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_path(out: Path, stage: str) -> Path:
    return Path(out) / f"{stage}.pt"


def load_checkpoint(out: Path, stage: str) -> dict[str, Any] | None:
    path = checkpoint_path(out, stage)
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


class LossLog:
    """Appends rows to ``loss_<stage>.csv``; a fresh (non-resumed) run starts the file over."""

    def __init__(self, out: Path, stage: str, fresh: bool, columns: list[str]) -> None:
        self.path = Path(out) / f"loss_{stage}.csv"
        self.columns = ["step", "loss", "lr", "seconds", *columns]
        if fresh or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])

    def plot(self) -> Path | None:
        """PNG of the loss curve next to the CSV; skipped without matplotlib (the CSV is the record)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        steps, losses = read_loss_csv(self.path)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, losses, linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.path.stem)
        png = self.path.with_suffix(".png")
        fig.savefig(png, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return png


def read_loss_csv(path: Path) -> tuple[list[int], list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def _autocast(device: torch.device):
    # bf16 autocast on CUDA (no loss scaling needed); full fp32 on the CPU.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class Budget:
    def __init__(self, minutes: float | None) -> None:
        self.start = time.monotonic()
        self.limit = None if minutes is None else minutes * 60.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def spent(self, reserve_s: float) -> bool:
        return self.limit is not None and self.elapsed + reserve_s >= self.limit


# ---------------------------------------------------------------- stages


@dataclass
class StageResult:
    stage: str
    step: int
    done: bool
    last_loss: float | None


def _prepare(tc: TrainConfig) -> tuple[torch.device, dict[str, Any] | None]:
    Path(tc.out).mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(tc.out, tc.stage)
    if ckpt is not None and not tc.resume:
        raise FileExistsError(f"{checkpoint_path(tc.out, tc.stage)} exists: pass --resume, or use a new --out folder")
    if ckpt is not None and ModelConfig.from_dict(ckpt["model_config"]) != tc.model:
        raise ValueError("the checkpoint was trained with other model sizes than the ones asked for now")
    torch.manual_seed(tc.seed + (ckpt["step"] if ckpt else 0))
    device = torch.device(tc.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # whatever autocast leaves in fp32 still runs on tensor cores
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions once
    return device, ckpt


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float, device: torch.device):
    # The fused CUDA kernel updates all parameters in one launch; the CPU takes the default implementation.
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=True if device.type == "cuda" else None
    )


def train_vae(tc: TrainConfig, source: SceneSource) -> StageResult:
    """The "vae" stage from scratch, or the "decoder" stage: the finished VAE's decoder trained on alone."""
    device, ckpt = _prepare(tc)
    decoder_only = tc.stage == "decoder"
    vae = build_vae(tc.model)
    step, scaling = 0, None
    if ckpt:
        vae.load_state_dict(ckpt["vae"])
        step, scaling = ckpt["step"], ckpt.get("scaling_factor")
    elif decoder_only:
        start = load_checkpoint(tc.out, "vae")
        if start is None:
            raise FileNotFoundError(f"no VAE checkpoint in {tc.out}: run the vae stage first")
        vae.load_state_dict(start["vae"])
        scaling = start.get("scaling_factor")
    vae.to(device).train()
    if decoder_only:
        vae.encoder.requires_grad_(False).eval()
        vae.quant_conv.requires_grad_(False)
    opt = make_optimizer([p for p in vae.parameters() if p.requires_grad], tc.lr, 0.0, device)
    if ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    log = LossLog(tc.out, tc.stage, fresh=ckpt is None, columns=["l1", "mse", "kl"])
    gen = torch.Generator().manual_seed(tc.seed)

    def save(step: int, done: bool) -> None:
        save_atomic(
            {
                "stage": tc.stage,
                "step": step,
                "done": done,
                "vae": vae.state_dict(),
                "optimizer": opt.state_dict(),
                "vae_config": dict(vae.config),
                "model_config": asdict(tc.model),
                "scaling_factor": scaling,
            },
            checkpoint_path(tc.out, tc.stage),
        )

    result = _run(tc, step, source, gen, save, log, lambda images, _: _vae_step(vae, images, tc, device), opt)
    return result


def _vae_step(vae: AutoencoderKL, images: torch.Tensor, tc: TrainConfig, device: torch.device):
    with _autocast(device):
        return vae_loss(vae, images.to(device, non_blocking=True), tc.kl_weight)


def finished_vae(out: Path, model: ModelConfig) -> AutoencoderKL:
    # A decoder fine-tune, when there is one, holds the same encoder and a better decoder.
    ckpt = load_checkpoint(out, "decoder") or load_checkpoint(out, "vae")
    if ckpt is None:
        raise FileNotFoundError(f"no VAE checkpoint in {out}: run the vae stage first")
    vae = build_vae(model)
    vae.load_state_dict(ckpt["vae"])
    if ckpt.get("scaling_factor"):
        vae.register_to_config(scaling_factor=ckpt["scaling_factor"])
    return vae


def train_unet(tc: TrainConfig, source: SceneSource) -> StageResult:
    device, ckpt = _prepare(tc)
    vae = finished_vae(tc.out, tc.model).to(device).eval().requires_grad_(False)
    unet, text_encoder = build_unet(tc.model), build_text_encoder(tc.model)
    step = 0
    if ckpt:
        unet.load_state_dict(ckpt["unet"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        step = ckpt["step"]
        scaling = float(ckpt["scaling_factor"])
    else:
        batches = [b for b, _ in _take(make_loader(source, tc, -1), 4)]
        scaling = measure_scaling_factor(vae, [b.to(device) for b in batches])
        print(f"latent scaling factor: {scaling:.5f}")
    vae.register_to_config(scaling_factor=scaling)
    unet.to(device).train()
    text_encoder.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = make_optimizer(params, tc.lr, 0.01, device)
    nets = {"unet": unet, "text_encoder": text_encoder}
    ema = Ema(nets, tc.ema_decay) if tc.ema_decay > 0 else None
    if ckpt:
        if ckpt.get("optimizer"):  # absent after a warm start from an exported file
            opt.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema"):
            ema.shadow = ckpt["ema"]
    log = LossLog(tc.out, "unet", fresh=ckpt is None, columns=[])
    gen = torch.Generator().manual_seed(tc.seed + step)
    schedule = alphas_cumprod()

    def one_step(images: torch.Tensor, ids: torch.Tensor):
        ids = drop_captions(ids, tc.caption_dropout, gen).to(device, non_blocking=True)
        with torch.no_grad(), _autocast(device):
            latents = vae.encode(images.to(device, non_blocking=True)).latent_dist.sample() * scaling
        with _autocast(device):
            context = text_encoder(ids).last_hidden_state
            loss = diffusion_loss(unet, latents.float(), context, schedule, gen)
        return loss, {}

    def save(step: int, done: bool) -> None:
        save_atomic(
            {
                "stage": "unet",
                "step": step,
                "done": done,
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "optimizer": opt.state_dict(),
                "ema": ema.shadow if ema else None,
                "scaling_factor": scaling,
                "model_config": asdict(tc.model),
            },
            checkpoint_path(tc.out, "unet"),
        )

    def after_step(s: int) -> None:
        if ema is not None:
            ema.update(nets, s)

    return _run(tc, step, source, gen, save, log, one_step, opt, after_step)


def _take(it: Iterator, n: int) -> list:
    return [next(it) for _ in range(n)]


def _run(tc, start, source, gen, save, log, step_fn, opt, after_step=None) -> StageResult:
    """The loop both stages share: lr schedule, backward, logging, periodic and budget-driven checkpoints."""
    budget = Budget(tc.time_budget_min)
    params = [p for group in opt.param_groups for p in group["params"]]
    data = make_loader(source, tc, start)
    step, last, step_seconds, loss = start, None, 0.0, None
    save_seconds = 5.0
    while step < tc.steps:
        # Leave room for one more step and the final save, so a hard kill never lands mid-save.
        if budget.spent(reserve_s=2 * step_seconds + 2 * save_seconds + 10):
            print(f"[{tc.stage}] time budget spent at step {step}/{tc.steps}: checkpointing")
            break
        t0 = time.monotonic()
        images, extra = next(data)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc, tc.steps)
        loss, parts = step_fn(images, extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if after_step:
            after_step(step)
        step_seconds = 0.9 * step_seconds + 0.1 * (time.monotonic() - t0) if step > start + 1 else time.monotonic() - t0
        if step % tc.log_every == 0 or step == tc.steps or step == start + 1:
            # Reading the loss waits for the GPU, so it happens only here: between logs the CPU runs ahead.
            last = loss.item()
            if not math.isfinite(last):
                raise FloatingPointError(f"[{tc.stage}] loss is {last} at step {step}")
            parts = {k: float(v) for k, v in parts.items()}
            log.write({"step": step, "loss": last, "lr": opt.param_groups[0]["lr"], "seconds": budget.elapsed, **parts})
            print(f"[{tc.stage}] step {step}/{tc.steps} loss {last:.4f} ({step_seconds:.3f} s/step)", flush=True)
        if step % tc.save_every == 0 and step < tc.steps:
            t_save = time.monotonic()
            save(step, False)
            save_seconds = time.monotonic() - t_save
    if loss is not None:
        last = float(loss.item())
    save(step, step >= tc.steps)
    log.plot()
    return StageResult(tc.stage, step, step >= tc.steps, last)


def train_stage(tc: TrainConfig, source: SceneSource | None = None) -> StageResult:
    source = source or scene_world_source()
    if tc.stage in ("vae", "decoder"):
        return train_vae(tc, source)
    if tc.stage == "unet":
        return train_unet(tc, source)
    raise ValueError(f"unknown stage {tc.stage!r}; expected one of {STAGES}")


def stage_done(out: Path, stage: str, steps: int) -> bool:
    """True when the stage's checkpoint already holds ``steps`` steps (asking for more continues it)."""
    ckpt = load_checkpoint(out, stage)
    return bool(ckpt and ckpt["step"] >= steps)


# ---------------------------------------------------------------- export


def warm_start(out: Path, path: Path, vae_steps: int, model: ModelConfig) -> None:
    """Seed <out> from an exported checkpoint: the VAE stage counts as done, the UNet stage restarts at step 0.

    For continuing a run on a machine that has only the exported file (no optimizer state): the UNet and text
    encoder go on from the file's weights, with a fresh optimizer and learning-rate warm-up.
    """
    from modules.devices import Precision
    from modules.models.loader import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        if checkpoint_path(out, stage).exists():
            raise FileExistsError(f"{checkpoint_path(out, stage)} exists: warm starts go into a new --out folder")
    f32 = torch.float32
    loaded = load_model(str(path), Precision(torch.device("cpu"), f32, f32, f32, f32))
    unet, vae, text_encoder = build_unet(model), build_vae(model), build_text_encoder(model)
    unet.load_state_dict(loaded.unet.state_dict())
    vae.load_state_dict(loaded.vae.state_dict())
    text_encoder.load_state_dict(loaded.text_encoders[0].state_dict(), strict=False)
    scaling = float(loaded.vae.config.scaling_factor)
    config = asdict(model)
    save_atomic({"stage": "vae", "step": vae_steps, "done": True, "vae": vae.state_dict(), "model_config": config,
                 "scaling_factor": scaling}, checkpoint_path(out, "vae"))
    save_atomic({"stage": "unet", "step": 0, "done": False, "unet": unet.state_dict(),
                 "text_encoder": text_encoder.state_dict(), "optimizer": None, "ema": None,
                 "scaling_factor": scaling, "model_config": config}, checkpoint_path(out, "unet"))


def trained_modules(out: Path, use_ema: bool = True) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    ckpt = load_checkpoint(out, "unet")
    if ckpt is None:
        raise FileNotFoundError(f"no UNet checkpoint in {out}: run the unet stage first")
    model = ModelConfig.from_dict(ckpt["model_config"])
    vae = finished_vae(out, model)
    vae.register_to_config(scaling_factor=float(ckpt["scaling_factor"]))
    unet, text_encoder = build_unet(model), build_text_encoder(model)
    unet.load_state_dict(ckpt["unet"])
    text_encoder.load_state_dict(ckpt["text_encoder"])
    if use_ema and ckpt.get("ema"):
        # EMA weights generalise better than the last step's; strict=False keeps non-float buffers as they are.
        unet.load_state_dict(ckpt["ema"]["unet"], strict=False)
        text_encoder.load_state_dict(ckpt["ema"]["text_encoder"], strict=False)
    return unet.eval(), vae.eval(), text_encoder.eval()


def sidecar_config(unet: UNet2DConditionModel, vae: AutoencoderKL) -> dict[str, Any]:
    """What the loader cannot read from the weights: head counts, latent scale, native size, prediction type."""
    return {
        "family": "sd1",
        "prediction_type": "epsilon",
        "unet": {
            "attention_head_dim": list(unet.config.attention_head_dim),
            "sample_size": int(unet.config.sample_size),
        },
        "vae": {"scaling_factor": float(vae.config.scaling_factor), "sample_size": int(vae.config.sample_size)},
        "description": "Bundled default model, trained from scratch on the procedural scene world.",
    }


def write_export(path: Path, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> Path:
    from modules.models.ldm_export import write_checkpoint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = Path(write_checkpoint(path, "sd1", unet, vae, [text_encoder], dtype=torch.float16))
    with open(written.with_suffix(".json"), "w", encoding="utf-8") as f:
        json.dump(sidecar_config(unet, vae), f, indent=2)
        f.write("\n")
    return written


@torch.no_grad()
def verify_export(path: Path, unet: UNet2DConditionModel, atol: float = 1e-2) -> float:
    """Load the file as a user would and compare one UNet forward with the trained module; returns the max error."""
    from modules.devices import Precision
    from modules.models.loader import load_model

    f32 = torch.float32
    loaded = load_model(str(path), Precision(torch.device("cpu"), f32, f32, f32, f32))
    reference = copy.deepcopy(unet).to("cpu").float().eval()
    with torch.no_grad():  # the file holds fp16 weights: round the reference's the same way
        for p in reference.parameters():
            p.copy_(p.half().float())
    gen = torch.Generator().manual_seed(0)
    size = int(unet.config.sample_size)
    x = torch.randn(1, 4, size, size, generator=gen)
    context = torch.randn(1, 77, int(unet.config.cross_attention_dim), generator=gen)
    t = torch.tensor([500])
    expected = reference(x, t, encoder_hidden_states=context).sample
    got = loaded.unet(x, t, encoder_hidden_states=context).sample
    error = float((expected - got).abs().max())
    if error > atol:
        raise AssertionError(f"exported UNet differs from the trained one by {error:.4g} (> {atol})")
    if abs(float(loaded.vae.config.scaling_factor) - float(unet_scaling(path))) > 1e-6:
        raise AssertionError("the loader did not take the VAE scaling factor from the sidecar")
    return error


def unet_scaling(path: Path) -> float:
    with open(Path(path).with_suffix(".json"), encoding="utf-8") as f:
        return float(json.load(f)["vae"]["scaling_factor"])


def export(out: Path, path: Path, use_ema: bool = True) -> tuple[Path, float]:
    unet, vae, text_encoder = trained_modules(out, use_ema)
    written = write_export(path, unet, vae, text_encoder)
    return written, verify_export(written, unet)
