"""A1111's `modules.sd_models`: the checkpoint list and the current model, as extensions expect them.

The work is done below (`modules.models.registry`, `.loader`, `.manager`); this module wires those to the
process-wide settings (`shared.opts`, `shared.cmd_opts`) and keeps `shared.sd_model` current.
"""

from __future__ import annotations

import logging
import os

from modules import devices, shared
from modules.models import registry, vae_registry
from modules.models.checkpoint_files import ModelFileError
from modules.models.manager import CachePolicy, ModelManager
from modules.models.registry import (  # noqa: F401  (re-exported A1111 names)
    CheckpointInfo,
    checkpoint_aliases,
    checkpoint_alisases,
    checkpoint_tiles,
    checkpoints_list,
    get_closet_checkpoint_match,
    list_models,
    model_hash,
)
from modules.models.sd_model import StableDiffusionModel

log = logging.getLogger(__name__)


class NoCheckpointError(FileNotFoundError):
    pass


def current_precision() -> devices.Precision:
    prefer_bf16 = str(getattr(shared.opts, "model_precision", "float16")) == "bfloat16"
    precision = devices.precision_from_cmd_opts(shared.cmd_opts, prefer_bf16=prefer_bf16)
    devices.configure(precision)
    return precision


def current_policy() -> CachePolicy:
    return CachePolicy(
        limit=int(getattr(shared.opts, "sd_checkpoints_limit", 1)),
        keep_in_cpu=bool(getattr(shared.opts, "sd_checkpoints_keep_in_cpu", True)),
    )


manager = ModelManager(precision=current_precision, policy=current_policy)


class ModelData:
    """A1111's `sd_models.model_data`: the current model and those kept loaded."""

    @property
    def sd_model(self) -> StableDiffusionModel | None:
        return manager.current

    @property
    def loaded_sd_models(self) -> list[str]:
        return manager.loaded_filenames


model_data = ModelData()


def select_checkpoint() -> CheckpointInfo:
    """The checkpoint to use: the one in settings if it exists, else --ckpt, else the first found."""
    if not checkpoints_list:
        list_models()
    preferred = getattr(shared.opts, "sd_model_checkpoint", None)
    info = registry.select_checkpoint(preferred)
    if info is None:
        raise NoCheckpointError(
            "No checkpoints found. Put a .safetensors checkpoint in "
            f"{os.path.join(shared.models_path, 'Stable-diffusion')} (or use --ckpt / --ckpt-dir)."
        )
    if preferred and preferred not in (info.title, info.name, info.model_name, info.short_title):
        log.warning("Checkpoint %s not found; loading %s instead", preferred, info.title)
    return info


def _vae_path_for(info: CheckpointInfo) -> str | None:
    choice = str(getattr(shared.opts, "sd_vae", "Automatic") or "Automatic")
    return vae_registry.resolve_vae(info.filename, choice, getattr(shared.cmd_opts, "vae_path", None)).path


def _apply_attention(model: StableDiffusionModel) -> None:
    backend = devices.attention_backend(
        bool(getattr(shared.cmd_opts, "xformers", False)),
        str(getattr(shared.opts, "cross_attention_optimization", "Automatic")),
    )
    if backend == "xformers" and model.attention != "xformers":
        model.unet.enable_xformers_memory_efficient_attention()
        model.vae.enable_xformers_memory_efficient_attention()
    model.attention = backend  # diffusers' default processors already use torch SDPA


def load_model(checkpoint_info: CheckpointInfo | None = None) -> StableDiffusionModel:
    """Load (or switch to) a checkpoint and make it `shared.sd_model`.

    Raises ModelFileError/ValueError with a readable message; the previous model then stays current.
    """
    info = checkpoint_info or select_checkpoint()
    if not getattr(shared.cmd_opts, "no_hashing", False):
        info.calculate_shorthash()
    try:
        model = manager.load(info, vae_path=_vae_path_for(info))
    finally:
        shared.sd_model = manager.current  # after a failure: whatever the manager kept or brought back
    _apply_attention(model)
    shared.sd_model = model
    shared.opts.data["sd_model_checkpoint"] = info.title
    shared.opts.data["sd_checkpoint_hash"] = info.sha256
    log.info("Loaded %s (%s) on %s", info.title, model.spec.display_name, model.device)
    return model


def reload_model_weights(sd_model=None, info: CheckpointInfo | None = None, forced_reload: bool = False):
    """A1111 name: switch to `info` (or the checkpoint in settings)."""
    info = info or select_checkpoint()
    if forced_reload:
        manager.unload()
    return load_model(info)


def reload_vae_weights(sd_model=None, vae_file: str | None = None) -> None:
    """Re-apply the VAE choice from settings (or `vae_file`) to the current model."""
    model = manager.current
    if model is None:
        return
    path = vae_file if vae_file is not None else _vae_path_for(model.checkpoint_info)
    manager.load(model.checkpoint_info, vae_path=path)


def unload_model_weights(sd_model=None, info=None) -> None:
    manager.unload()
    shared.sd_model = None


__all__ = [
    "CheckpointInfo", "ModelFileError", "NoCheckpointError", "checkpoint_aliases", "checkpoint_alisases",
    "checkpoint_tiles", "checkpoints_list", "get_closet_checkpoint_match", "list_models", "load_model",
    "manager", "model_data", "model_hash", "reload_model_weights", "reload_vae_weights", "select_checkpoint",
    "unload_model_weights",
]
