"""Swapping a loaded model's VAE for an external file, and back to the checkpoint's own.

External VAE files come in the original layout (`encoder.*` / `decoder.*`, or a whole checkpoint's
`first_stage_model.*`) or in diffusers layout. Shapes are checked before any weight is copied, so a VAE that does
not fit leaves the model exactly as it was.
"""

from __future__ import annotations

import torch

from modules.models import configs_from_weights as cfg
from modules.models import convert
from modules.models.checkpoint_files import ModelFileError, read_state_dict
from modules.models.detection import VAE_PREFIX
from modules.models.sd_model import StableDiffusionModel


def read_vae_weights(path: str, family: str) -> dict[str, torch.Tensor]:
    """A VAE file's weights in diffusers AutoencoderKL layout."""
    state_dict = read_state_dict(path)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in state_dict:
        return state_dict  # already diffusers layout
    if any(k.startswith(VAE_PREFIX) for k in state_dict):
        prefix = VAE_PREFIX
    elif "encoder.conv_in.weight" in state_dict and "decoder.conv_out.weight" in state_dict:
        prefix = ""
    else:
        raise ModelFileError(path, "not a VAE: no encoder/decoder weights found")
    try:
        config = cfg.vae_config(state_dict, prefix, family)
        return convert.vae_to_diffusers(state_dict, prefix, config)
    except (KeyError, ValueError) as e:
        raise ModelFileError(path, f"VAE weights are incomplete or malformed ({e!s:.200})") from e


def _check_fits(model_vae: torch.nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    own = model_vae.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ModelFileError(path, f"VAE lacks {len(missing)} weights this model needs (e.g. {missing[0]})")
    for key, tensor in own.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise ModelFileError(
                path,
                f"VAE does not fit this model: {key} is {tuple(weights[key].shape)}, the model needs "
                f"{tuple(tensor.shape)} (a VAE for a different model family?)",
            )


def _copy_into(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, param in module.state_dict().items():
            param.copy_(weights[key])


def apply_vae(model: StableDiffusionModel, vae_path: str | None) -> None:
    """Use `vae_path` as the model's VAE, or the checkpoint's own VAE when None."""
    if vae_path == model.vae_file:
        return
    if vae_path is None:
        if model.baked_vae_state is not None:
            _copy_into(model.vae, model.baked_vae_state)
        model.vae_file = None
        return
    weights = read_vae_weights(vae_path, model.spec.family)
    _check_fits(model.vae, weights, vae_path)
    if model.baked_vae_state is None:
        # Keep the checkpoint's own VAE on the CPU so "None"/"Automatic" can bring it back without a reload.
        model.baked_vae_state = {k: v.detach().to("cpu", copy=True) for k, v in model.vae.state_dict().items()}
    _copy_into(model.vae, weights)
    model.vae_file = vae_path
