"""Tiny random-weight depth estimators written the way users keep them: a transformers model folder
(config.json + model.safetensors) under models/depth/<name>/.

Same architectures as the real ones (BiT-hybrid DPT, ViT DPT, DINOv2 Depth Anything), a few thousand weights
each; seeded, so a test can rebuild the same network in memory and compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

TINY_CONFIGS: dict[str, dict] = {
    "dpt_hybrid": {
        "model_type": "dpt", "is_hybrid": True, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
        "intermediate_size": 64, "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [16, 32, 32, 32],
        "fusion_hidden_size": 16, "reassemble_factors": [1, 1, 1, 0.5], "readout_type": "project",
        "image_size": 384, "patch_size": 16, "backbone_featmap_shape": [1, 64, 24, 24], "neck_ignore_stages": [0, 1],
        "backbone_config": {"model_type": "bit", "global_padding": "same", "layer_type": "bottleneck",
                            "depths": [1, 1, 1], "hidden_sizes": [16, 32, 64, 128], "embedding_size": 16,
                            "num_groups": 8, "out_features": ["stage1", "stage2", "stage3"],
                            "embedding_dynamic_padding": True},
    },
    "dpt_large": {
        "model_type": "dpt", "is_hybrid": False, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
        "intermediate_size": 64, "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [8, 16, 32, 32],
        "fusion_hidden_size": 16, "reassemble_factors": [4, 2, 1, 0.5], "readout_type": "project",
        "image_size": 384, "patch_size": 16,
    },
    "depth_anything": {
        "model_type": "depth_anything", "patch_size": 14, "reassemble_hidden_size": 32,
        "neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16, "head_hidden_size": 8,
        "reassemble_factors": [4, 2, 1, 0.5], "depth_estimation_type": "relative",
        "backbone_config": {"model_type": "dinov2", "image_size": 518, "patch_size": 14, "hidden_size": 32,
                            "num_attention_heads": 2, "num_hidden_layers": 4, "out_indices": [1, 2, 3, 4],
                            "reshape_hidden_states": False},
    },
}
KIND_OF = {"midas_dpt_hybrid": "dpt_hybrid", "midas_dpt_large": "dpt_large",
           "depth_anything_v2_small": "depth_anything", "depth_anything_v2_base": "depth_anything",
           "depth_anything_v2_large": "depth_anything"}


def build_estimator(name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny network of estimator `name`, float32, eval mode, seeded weights (with a little noise on top of
    transformers' init so that no two tensors are equal)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation

    config = dict(TINY_CONFIGS[KIND_OF[name]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config["model_type"] == "dpt":
            model = DPTForDepthEstimation(DPTConfig(**{k: v for k, v in config.items() if k != "model_type"}))
        else:
            model = DepthAnythingForDepthEstimation(
                DepthAnythingConfig(**{k: v for k, v in config.items() if k != "model_type"}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
            # the heads end in ReLU: a positive bias on the last conv keeps random outputs from being all zero
            last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            last.bias.add_(1.0)
    return model.eval()


def write_estimator(models_dir: str | Path, name: str, seed: int = 0, root: str = "depth",
                    with_config: bool = True) -> Path:
    """Write estimator `name` as models/<root>/<name>/{config.json, model.safetensors}; returns the folder."""
    model = build_estimator(name, seed)
    folder = Path(models_dir) / root / name
    folder.mkdir(parents=True, exist_ok=True)
    if with_config:
        (folder / "config.json").write_text(json.dumps(TINY_CONFIGS[KIND_OF[name]], indent=1))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def scene(width: int = 96, height: int = 64) -> Image.Image:
    """A picture with structure: a bright disc in front of a horizontal gradient."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((xx - width * 0.6) ** 2 + (yy - height * 0.5) ** 2) < (min(width, height) * 0.3) ** 2
    r = np.where(disc, 240, x)
    g = np.where(disc, 40, 255 - x)
    b = np.full_like(x, 90)
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")


def write_marigold(models_dir: str | Path, seed: int = 0, root: str = "depth") -> Path:
    """A tiny Marigold depth pipeline folder (diffusers layout, safetensors) at models/<root>/marigold/."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from modules import paths

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",
                                                                                   "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=4, norm_num_groups=16)
        vae = AutoencoderKL(block_out_channels=(16, 32), latent_channels=4, norm_num_groups=16,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                            num_attention_heads=2, num_hidden_layers=2, projection_dim=32))
    tokenizer = CLIPTokenizer.from_pretrained(f"{paths.configs_path}/tokenizers/clip-vit-large-patch14",
                                              local_files_only=True)
    pipe = MarigoldDepthPipeline(unet=unet, vae=vae, scheduler=DDIMScheduler(prediction_type="v_prediction"),
                                 text_encoder=text, tokenizer=tokenizer, prediction_type="depth",
                                 default_denoising_steps=2, default_processing_resolution=64)
    folder = Path(models_dir) / root / "marigold"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
