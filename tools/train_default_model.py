"""Train the bundled default model from scratch (issue 6): a small SD1-architecture model on the scene world.

    python tools/train_default_model.py --out runs/default --stage all --device cuda --time-budget-min 9 --resume
    python tools/train_default_model.py --out runs/default --stage none --export models/Stable-diffusion/x.safetensors

Stages checkpoint to <out>/vae.pt and <out>/unet.pt; re-run the same command with --resume after a time budget
ran out (or the process was killed) and it continues where it stopped. A finished stage is skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo root holds `modules` and `tools`

from tools.default_model import training  # noqa: E402

MB = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoints, loss CSVs and plots")
    p.add_argument("--stage", choices=["vae", "unet", "decoder", "all", "none"], default="all",
                   help="all: vae then unet (then decoder when --decoder-steps is given)")
    p.add_argument("--steps", type=int, default=None, help="total steps of each selected stage")
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--unet-steps", type=int, default=30000)
    p.add_argument("--decoder-steps", type=int, default=0, help="decoder fine-tune steps (encoder frozen)")
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128, help="batch size of the UNet stage")
    p.add_argument("--vae-lr", type=float, default=4e-4, help="peak learning rate of the VAE stage")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the UNet stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the stage checkpoints in --out")
    p.add_argument("--export", type=Path, default=None, help="write the single-file checkpoint here at the end")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--time-budget-min", type=float, default=None, help="checkpoint and stop before this many minutes")
    p.add_argument("--workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 2)))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the UNet and text encoder; 0 turns it off")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--warm-start", type=Path, default=None,
                   help="begin from this exported checkpoint (VAE kept, UNet and text encoder trained on)")
    p.add_argument("--no-ema-export", action="store_true", help="export the last weights instead of the EMA")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def report_sizes(model: training.ModelConfig) -> None:
    counts = training.parameter_counts(model)
    for name, n in counts.items():
        print(f"{name:>13}: {n / 1e6:6.2f} M parameters")
    size = training.projected_checkpoint_bytes(model)
    print(f"{'total':>13}: {sum(counts.values()) / 1e6:6.2f} M parameters, fp16 checkpoint ~{size / MB:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = training.ModelConfig(image_size=args.image_size)
    report_sizes(model)
    stages = {"all": ["vae", "unet"] + (["decoder"] if args.decoder_steps else []), "none": []}.get(
        args.stage, [args.stage])
    base = training.TrainConfig(
        out=args.out, batch_size=args.batch_size, seed=args.seed, device=args.device,
        time_budget_min=args.time_budget_min, resume=args.resume, workers=args.workers,
        caption_dropout=args.caption_dropout, ema_decay=args.ema_decay, save_every=args.save_every, model=model,
    )
    budget = training.Budget(args.time_budget_min)
    if args.warm_start and not args.resume:
        training.warm_start(args.out, args.warm_start, args.vae_steps, model)
        base = replace(base, resume=True)
    for stage in stages:
        steps = args.steps or {"vae": args.vae_steps, "unet": args.unet_steps, "decoder": args.decoder_steps}[stage]
        if base.resume and training.stage_done(args.out, stage, steps):
            print(f"[{stage}] already has {steps} steps, skipped")
            continue
        remaining = None if budget.limit is None else (budget.limit - budget.elapsed) / 60
        if remaining is not None and remaining < 0.5:
            print(f"[{stage}] no time left in this run; re-run with --resume")
            return 0
        vae = stage in ("vae", "decoder")
        tc = replace(base, stage=stage, steps=steps, lr=args.vae_lr if vae else args.lr,
                     batch_size=args.vae_batch_size if vae else args.batch_size, time_budget_min=remaining)
        result = training.train_stage(tc)
        print(f"[{stage}] stopped at step {result.step}/{steps}, last loss {result.last_loss}")
        if not result.done:
            print("not finished: re-run the same command with --resume")
            return 0
    if args.export:
        written, error = training.export(args.out, args.export, use_ema=not args.no_ema_export)
        print(f"exported {written} ({written.stat().st_size / MB:.1f} MB); loader round trip max error {error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
