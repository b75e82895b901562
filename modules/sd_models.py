"""A1111's `modules.sd_models`: the checkpoint list and the current model, as extensions expect them.

The work is done below (`modules.models.registry`, `.loader`, `.manager`); this module wires those to the
process-wide settings (`shared.opts`, `shared.cmd_opts`) and keeps `shared.sd_model` current.
"""

from __future__ import annotations

import logging
import os

from modules import attention_choices, attention_optimization, devices, shared
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


def _no_checkpoints() -> NoCheckpointError:
    return NoCheckpointError(
        "No checkpoints found. Put a .safetensors checkpoint in "
        f"{os.path.join(shared.models_path, 'Stable-diffusion')} (or use --ckpt / --ckpt-dir)."
    )


def select_checkpoint() -> CheckpointInfo:
    """The checkpoint to use: the one in settings if it exists, else --ckpt, else the first found."""
    if not checkpoints_list:
        list_models()
    preferred = getattr(shared.opts, "sd_model_checkpoint", None)
    info = registry.select_checkpoint(preferred)
    if info is None:
        raise _no_checkpoints()
    if preferred and preferred not in (info.title, info.name, info.model_name, info.short_title):
        log.warning("Checkpoint %s not found; loading %s instead", preferred, info.title)
    return info


def _vae_path_for(info: CheckpointInfo) -> str | None:
    choice = str(getattr(shared.opts, "sd_vae", "Automatic") or "Automatic")
    return vae_registry.resolve_vae(info.filename, choice, getattr(shared.cmd_opts, "vae_path", None)).path


def apply_attention(model: StableDiffusionModel | None = None) -> None:
    """Put the "Cross attention optimization" and "Upcast cross attention layer to float32" settings into effect
    (modules.attention_optimization): SDPA's kernels process-wide, the UNet's attention precision, and xformers'
    processors on the UNet and VAE of `model` (default: the current one) when that is the choice (xformers runs
    in 16 bits: the upcast applies to SDPA). Runs after each load and at the start of each job."""
    choice = attention_choices.resolve(str(shared.opts.cross_attention_optimization), shared.cmd_opts)
    attention_optimization.apply(choice)
    attention_optimization.set_upcast(bool(shared.opts.upcast_attn))
    model = model if model is not None else shared.sd_model
    if model is None:
        return
    wanted = "xformers" if choice == attention_choices.XFORMERS else "sdpa"
    if wanted == model.attention:
        return
    for network in (model.unet, model.vae):
        if wanted == "xformers":
            network.enable_xformers_memory_efficient_attention()
        else:  # diffusers' default processors, which call torch's SDPA
            network.disable_xformers_memory_efficient_attention()
    from modules.engine.unet_graph import bump_structure_version

    bump_structure_version(model.unet)  # graphs and compiled forwards recorded the old processors
    model.attention = wanted


def load_model(checkpoint_info: CheckpointInfo | None = None) -> StableDiffusionModel:
    """Load (or switch to) a checkpoint and make it `shared.sd_model`.

    With `checkpoint_info`: that one, or ModelFileError/ValueError with a readable message; the previous model
    then stays current. Without: the first checkpoint of `registry.checkpoint_candidates()` that loads, files
    that cannot be loaded skipped and reported (see `startup_notices()`); NoCheckpointError when none loads.
    """
    if checkpoint_info is None:
        return _load_first_usable()
    return _load(checkpoint_info, _vae_path_for(checkpoint_info))


def _load(info: CheckpointInfo, vae_path: str | None) -> StableDiffusionModel:
    try:
        model = manager.load(info, vae_path=vae_path)
    except BaseException:
        _settings_name_current_model()
        raise
    finally:
        shared.sd_model = manager.current  # after a failure: whatever the manager kept or brought back
    apply_attention(model)
    _hash(info)  # after the load: a corrupt file is refused from its header without reading gigabytes first
    shared.sd_model = model
    shared.opts.data["sd_model_checkpoint"] = info.title
    shared.opts.data["sd_checkpoint_hash"] = info.sha256
    log.info("Loaded %s (%s) on %s", info.title, model.spec.display_name, model.device)
    from modules import script_callbacks

    script_callbacks.model_loaded_callback(model)
    return model


def _settings_name_current_model() -> None:
    """After a failed load the setting names the model still in use: a caller may have set it before loading
    (override_settings does), and the UI, infotext and the settings restore after a job all read it."""
    current = manager.current
    if current is not None:
        shared.opts.data["sd_model_checkpoint"] = current.checkpoint_info.title


def _hash(info: CheckpointInfo) -> None:
    if getattr(shared.cmd_opts, "no_hashing", False):
        return
    try:
        info.calculate_shorthash()
    except OSError as e:  # the file went away after it loaded: the model in memory works without its hash
        log.warning("Could not hash the checkpoint %s: %s", info.name, e.strerror or type(e).__name__)


# --- the automatic choice: start-up, and load_model() without a checkpoint ---------------------------------

# Failures that say a checkpoint file cannot be used; anything else (out of memory, a bug) is not skipped.
FILE_FAILURES = (ModelFileError, ValueError, OSError)

_notices: list[str] = []  # replaced by each automatic choice; read by the UI through startup_notices()


class NoUsableCheckpointError(NoCheckpointError):
    """Checkpoints are listed, but not one of them could be loaded."""


def startup_notices() -> list[str]:
    """What the last automatic checkpoint choice skipped and why, one sentence each, for the page to show.

    Empty when the first choice loaded. File names are relative to the models folder, never full paths.
    """
    return list(_notices)


def _failure_reason(info: CheckpointInfo, e: BaseException) -> str:
    """Why `info` did not load, without this machine's paths (the text reaches the page and API clients)."""
    if isinstance(e, ModelFileError):
        same_file = os.path.basename(e.path) == os.path.basename(info.filename)
        text = e.reason if same_file else str(e)  # e.g. its config sidecar: keep that file's name
    elif isinstance(e, OSError):
        text = e.strerror or type(e).__name__
    else:
        text = str(e) or type(e).__name__
    return text.replace(info.filename, info.name).rstrip(".")


def _is_current(info: CheckpointInfo) -> bool:
    current = manager.current
    return current is not None and current.checkpoint_info.filename == info.filename


def _load_first_usable() -> StableDiffusionModel:
    """The checkpoint in settings, else the next listed one that loads (the bundled model last): one corrupt
    file must not leave the server without a model. Each skipped file is logged and kept as a notice."""
    if not checkpoints_list:
        list_models()
    preferred = getattr(shared.opts, "sd_model_checkpoint", None)
    candidates = registry.checkpoint_candidates(preferred)
    if not candidates:
        _notices[:] = []
        raise _no_checkpoints()
    notices: list[str] = []
    if preferred and registry.find_checkpoint(preferred) is None:
        _note(notices, f"The checkpoint in settings, {preferred}, is not in the checkpoint list")
    skipped: list[str] = []
    for info in candidates:
        vae_path = _vae_path_for(info)  # a VAE setting naming nothing is no fault of the checkpoint: it raises
        try:
            model = _load(info, vae_path)
        except FILE_FAILURES as e:
            if _is_current(info):  # the checkpoint loaded; only the VAE in settings did not fit it
                _note(notices, f"Loaded {info.title}, but {str(e).rstrip('.')}")
                _notices[:] = notices
                return manager.current
            reason = _failure_reason(info, e)
            skipped.append(f"{info.name} ({reason})")
            _note(notices, f"Could not load the checkpoint: {info.name}: {reason}. Skipped it")
            continue
        if notices:
            _note(notices, f"Loaded {info.title} instead")
        _notices[:] = notices
        return model
    _note(notices, "No checkpoint could be loaded, so nothing can be generated until one is fixed or added")
    _notices[:] = notices
    raise NoUsableCheckpointError(f"No checkpoint could be loaded: {'; '.join(skipped)}")


def _note(notices: list[str], text: str) -> None:
    notices.append(text + ".")
    log.warning("%s", notices[-1])


def reload_model_weights(sd_model=None, info: CheckpointInfo | None = None, forced_reload: bool = False):
    """A1111 name: switch to `info` (or, as load_model() does, the checkpoint in settings or the next usable)."""
    if forced_reload:
        manager.unload()
    return load_model(info)


def apply_weight_storage() -> StableDiffusionModel | None:
    """The "FP8 weight" setting on the current model: converts it to 8-bit weights, or loads it again from its
    file when the setting no longer wants them. Returns the current model."""
    from modules.models import fp8_storage

    model = manager.current
    if model is None or fp8_storage.settle(model):  # converted in place, or already as the settings ask
        return model
    return load_model(model.checkpoint_info)


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
    "manager", "model_data", "model_hash", "NoUsableCheckpointError", "reload_model_weights", "reload_vae_weights",
    "select_checkpoint", "startup_notices", "unload_model_weights",
]
