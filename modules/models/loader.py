"""Build a `StableDiffusionModel` from a single-file checkpoint or a diffusers folder, offline.

Modules are constructed on the meta device (no memory, no random init) and then take the checkpoint's tensors
directly (`load_state_dict(assign=True)`), already in the target dtype and on the target device. Every config and
tokenizer comes from the weights and `configs/`; nothing is fetched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules import paths
from modules.devices import Precision
from modules.models import configs_from_weights as cfg
from modules.models import convert
from modules.models.checkpoint_files import (
    PICKLE_EXTENSIONS,
    SAFETENSORS_EXTENSIONS,
    ModelFileError,
    check_pickle_file,
    read_state_dict,
    read_state_dict_shapes,
)
from modules.models.detection import (
    FAMILY_NAMES,
    REFINER_TEXT_PREFIX,
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT1_PREFIX,
    SDXL_TEXT2_PREFIX,
    VAE_PREFIX,
    VARIANT_BY_IN_CHANNELS,
    ModelSpec,
    NotStableDiffusionError,
    detect_family,
    probe_v_prediction,
)
from modules.models.sd_model import StableDiffusionModel
from modules.models.sidecar import read_sidecar

TOKENIZER_DIRS = {"clip-l": "clip-vit-large-patch14", "open-clip": "open-clip"}


@cache
def load_tokenizer(kind: str) -> CLIPTokenizer:
    """The bundled CLIP tokenizer: 'clip-l' pads with <|endoftext|>, 'open-clip' pads with '!'."""
    folder = os.path.join(paths.configs_path, "tokenizers", TOKENIZER_DIRS[kind])
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def default_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's training schedule ("scaled linear" betas)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def materialize(
    factory: Callable[[], torch.nn.Module],
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    what: str,
    path: str,
) -> torch.nn.Module:
    """Construct a module without allocating and give it the checkpoint's tensors in place."""
    with init_empty_weights(include_buffers=False):
        module = factory()
    cast = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, non_blocking=True)
        for k, v in state_dict.items()
    }
    try:
        result = module.load_state_dict(cast, strict=False, assign=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:300])
        raise ModelFileError(path, f"{what} weights do not fit together: {first}") from e
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise ModelFileError(
            path, f"incomplete checkpoint: the {what} lacks {len(missing)} weights (e.g. {', '.join(missing[:3])})"
        )
    if result.unexpected_keys:
        raise ModelFileError(
            path,
            f"the {what} has {len(result.unexpected_keys)} weights the detected architecture does not use "
            f"(e.g. {', '.join(result.unexpected_keys[:3])})",
        )
    module.to(device)  # buffers built outside the meta context
    module.requires_grad_(False)
    return module.eval()


def _text_encoders(
    state_dict: dict[str, torch.Tensor], spec: ModelSpec, dtype: torch.dtype, device: torch.device, path: str
) -> tuple[list[torch.nn.Module], list[CLIPTokenizer]]:
    def clip_l(prefix: str) -> torch.nn.Module:
        convert.normalise_legacy_clip_keys(state_dict, prefix)
        config = CLIPTextConfig(**cfg.clip_l_config(state_dict, prefix))
        weights = convert.clip_l_to_diffusers(state_dict, prefix)
        return materialize(lambda: CLIPTextModel(config), weights, dtype, device, "CLIP text encoder", path)

    def open_clip(prefix: str, drop_last: bool, with_projection: bool) -> torch.nn.Module:
        config = CLIPTextConfig(**cfg.open_clip_config(state_dict, prefix, drop_last_layer=drop_last))
        weights = convert.open_clip_to_diffusers(state_dict, prefix, config.num_hidden_layers, with_projection)
        model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        return materialize(lambda: model_cls(config), weights, dtype, device, "OpenCLIP text encoder", path)

    if spec.family == "sd1":
        return [clip_l(SD1_TEXT_PREFIX)], [load_tokenizer("clip-l")]
    if spec.family == "sd2":
        return [open_clip(SD2_TEXT_PREFIX, drop_last=True, with_projection=False)], [load_tokenizer("open-clip")]
    if spec.family == "sdxl":
        return (
            [clip_l(SDXL_TEXT1_PREFIX), open_clip(SDXL_TEXT2_PREFIX, drop_last=False, with_projection=True)],
            [load_tokenizer("clip-l"), load_tokenizer("open-clip")],
        )
    return [open_clip(REFINER_TEXT_PREFIX, drop_last=False, with_projection=True)], [load_tokenizer("open-clip")]


def _apply_sidecar(spec: ModelSpec, checkpoint_path: str) -> None:
    overrides, sidecar = read_sidecar(checkpoint_path)
    if not sidecar:
        return
    family = overrides.pop("family", None)
    if family and family != spec.family:
        raise ModelFileError(
            sidecar,
            f"says the model is {FAMILY_NAMES.get(family, family)} but the weights are {FAMILY_NAMES[spec.family]}",
        )
    if overrides.get("prediction_type"):
        spec.prediction_type = overrides.pop("prediction_type")
        spec.prediction_source = f"sidecar {os.path.basename(sidecar)}"
    spec.overrides = overrides


def check_loadable(path: str, precision: Precision) -> None:
    """Refuse what can be refused before loading: a .safetensors checkpoint's whole load runs on the meta device
    (header only, no data read); a pickled one gets the checks that need no unpickling (torch version, zip
    directory); a diffusers folder, those checks for the pickled weights it would load.

    Raises the same ModelFileError a real load would for a wrong, foreign, hostile or incomplete file, in a
    fraction of the time, so the model manager can refuse a bad file before it lets go of the current model.
    """
    shapes = read_state_dict_shapes(path)
    if shapes is not None:
        meta = Precision(torch.device("meta"), precision.unet, precision.text_encoder, precision.vae, precision.sdxl_vae)
        load_single_file(path, meta, state_dict=shapes)
    elif os.path.isdir(path):
        check_diffusers_weights(path)
    elif not os.path.exists(path):
        raise ModelFileError(path, "file not found")
    elif path.lower().endswith(PICKLE_EXTENSIONS):
        check_pickle_file(path)


def load_single_file(
    path: str, precision: Precision, checkpoint_info=None, state_dict: dict[str, torch.Tensor] | None = None
) -> StableDiffusionModel:
    device = precision.device
    if state_dict is None:
        # Straight to the GPU when possible: the dtype casts then run there, and no CPU copy is made.
        read_device = str(device) if device.type == "cuda" and path.lower().endswith(".safetensors") else "cpu"
        state_dict = read_state_dict(path, device=read_device)
    try:
        spec = detect_family(state_dict)
    except NotStableDiffusionError as e:
        raise ModelFileError(path, str(e)) from e
    _apply_sidecar(spec, path)

    try:
        unet_config = cfg.unet_config(state_dict, spec)
        vae_config = cfg.vae_config(state_dict, VAE_PREFIX, spec.family)
        unet_weights = convert.unet_to_diffusers(state_dict, unet_config)
        vae_weights = convert.vae_to_diffusers(state_dict, VAE_PREFIX, vae_config)
    except (KeyError, ValueError, StopIteration, IndexError) as e:
        raise ModelFileError(path, f"{FAMILY_NAMES[spec.family]} weights are incomplete or malformed ({e!s:.200})") from e
    vae_config.update(spec.overrides.get("vae", {}))

    unet = materialize(lambda: UNet2DConditionModel(**unet_config), unet_weights, precision.unet, device, "UNet", path)
    del unet_weights
    if spec.prediction_type is None and device.type != "meta":
        is_v = probe_v_prediction(unet, unet_config["cross_attention_dim"])
        spec.prediction_type = "v_prediction" if is_v else "epsilon"
        spec.prediction_source = "UNet probe"
        if is_v:
            _enable_attention_upcast(unet)

    vae_dtype = precision.sdxl_vae if spec.is_sdxl else precision.vae
    vae = materialize(lambda: AutoencoderKL(**vae_config), vae_weights, vae_dtype, device, "VAE", path)
    del vae_weights
    text_encoders, tokenizers = _text_encoders(state_dict, spec, precision.text_encoder, device, path)

    alphas = state_dict.get("alphas_cumprod")
    usable = alphas is not None and alphas.numel() == 1000 and alphas.device.type != "meta"
    alphas_cumprod = alphas.float().cpu() if usable else default_alphas_cumprod()
    del state_dict
    return StableDiffusionModel(
        spec=spec, unet=unet, vae=vae, text_encoders=text_encoders, tokenizers=tokenizers,
        alphas_cumprod=alphas_cumprod, checkpoint_info=checkpoint_info,
    )


def _enable_attention_upcast(unet: torch.nn.Module) -> None:
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if isinstance(module, Attention):
            module.upcast_attention = True
    unet.register_to_config(upcast_attention=True)


def _family_from_diffusers(folder: str, unet: UNet2DConditionModel, index: dict) -> ModelSpec:
    has_te2 = "text_encoder_2" in index and index["text_encoder_2"][0] is not None
    has_te1 = "text_encoder" in index and index["text_encoder"][0] is not None
    if unet.config.addition_embed_type == "text_time":
        family = "sdxl" if has_te1 and has_te2 else "sdxl_refiner"
    elif unet.config.use_linear_projection:
        family = "sd2"
    else:
        family = "sd1"
    variant = VARIANT_BY_IN_CHANNELS.get(unet.config.in_channels)
    if variant is None:
        raise ModelFileError(folder, f"UNet takes {unet.config.in_channels} input channels, which no known variant uses")
    scheduler_file = os.path.join(folder, "scheduler", "scheduler_config.json")
    prediction = "epsilon"
    if os.path.isfile(scheduler_file):
        with open(scheduler_file, encoding="utf-8") as f:
            prediction = json.load(f).get("prediction_type", "epsilon")
    return ModelSpec(family=family, variant=variant, prediction_type=prediction, prediction_source="scheduler config")


def check_diffusers_weights(folder: str) -> None:
    """A component folder without .safetensors weights makes diffusers/transformers torch.load its pickled ones:
    those get the same checks as a .ckpt (torch floor, zip directory) first, named by their place in the folder."""
    for sub in sorted(os.listdir(folder)):
        component = os.path.join(folder, sub)
        if sub.startswith(".") or not os.path.isdir(component):
            continue
        files = sorted(os.listdir(component))
        if any(f.lower().endswith(SAFETENSORS_EXTENSIONS) for f in files):
            continue
        for f in files:
            full = os.path.join(component, f)
            if f.lower().endswith(PICKLE_EXTENSIONS) and os.path.isfile(full):
                try:
                    check_pickle_file(full)
                except ModelFileError as e:
                    raise ModelFileError(full, e.reason, name=f"{os.path.basename(folder)}/{sub}/{f}") from e


def load_diffusers_folder(folder: str, precision: Precision, checkpoint_info=None) -> StableDiffusionModel:
    check_diffusers_weights(folder)
    index_file = os.path.join(folder, "model_index.json")
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFileError(folder, f"model_index.json is missing or not JSON ({e})") from e
    device = precision.device
    common = {"local_files_only": True, "use_safetensors": None}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=precision.unet, **common)
        spec = _family_from_diffusers(folder, unet, index)
        vae_dtype = precision.sdxl_vae if spec.is_sdxl else precision.vae
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype, **common)
        text_encoders, tokenizers = [], []
        for sub, tok_kind in (("text_encoder", "clip-l"), ("text_encoder_2", "open-clip")):
            if sub not in index or index[sub][0] is None:
                continue
            te_cls = CLIPTextModelWithProjection if index[sub][1] == "CLIPTextModelWithProjection" else CLIPTextModel
            te = te_cls.from_pretrained(folder, subfolder=sub, torch_dtype=precision.text_encoder, local_files_only=True)
            text_encoders.append(te)
            kind = "open-clip" if spec.family in ("sd2", "sdxl_refiner") else tok_kind
            tokenizers.append(load_tokenizer(kind))
    except (OSError, ValueError) as e:
        raise ModelFileError(folder, f"diffusers folder could not be loaded offline: {str(e).splitlines()[0][:300]}") from e
    for module in (unet, vae, *text_encoders):
        module.to(device).requires_grad_(False).eval()
    return StableDiffusionModel(
        spec=spec, unet=unet, vae=vae, text_encoders=text_encoders, tokenizers=tokenizers,
        alphas_cumprod=default_alphas_cumprod(), checkpoint_info=checkpoint_info,
    )


def load_model(path: str, precision: Precision, checkpoint_info=None) -> StableDiffusionModel:
    """Load whatever `path` is: a single-file checkpoint or a diffusers folder."""
    if os.path.isdir(path):
        return load_diffusers_folder(path, precision, checkpoint_info)
    return load_single_file(path, precision, checkpoint_info)
