"""CLIP vision encoders for IP-Adapter: found in the clip_vision folders, built as transformers'
`CLIPVisionModelWithProjection` with the config read off the weights, and the image-embedding step.

Folders, in this order: `models/clip_vision` (ComfyUI's and Forge's folder), `models/ControlNetPreprocessor/clip_vision`
and the A1111 extension's `extensions/sd-webui-controlnet/annotator/downloads/clip_vision` (where it keeps
`clip_h.pth` and `clip_g.pth`, both in transformers' layout). Files: `.safetensors`, or pickles (.pth/.bin/.pt)
through the restricted loader, in transformers' key layout (`vision_model.*` + `visual_projection.weight`; a whole
CLIPModel file gives its vision half, the text half is ignored). open_clip's own layout (`visual.transformer.*`) is
not supported: such files are left out with the reason (`refused()`).

The config comes from the shapes: width, depth, MLP width, patch size, image size and projection width are in
the tensors. The head count and the activation are not; they come from the known encoders (OpenAI ViT-L/14 and
ViT-B: quick_gelu; LAION ViT-H/14 and ViT-bigG/14: gelu; 16 heads for the 1024/1280/1664 widths, 12 for 768) and
otherwise 64 channels per head with gelu.

The picture is prepared exactly as transformers' CLIPImageProcessor does (built here with explicit arguments,
nothing downloaded): bicubic resize of the short side to the encoder's image size, centre crop, rescale to [0, 1],
CLIP's mean and std. This is what diffusers' IP-Adapter pipelines do; the A1111 extension instead squashes the
picture to 224x224 first, so for a non-square picture the two differ (cropped here, squashed there).

Loaded encoders are memory-owner handles in group "controlnet", cached per file while it is unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modules.controlnet import classify
from modules.models import checkpoint_files, memory
from modules.models.checkpoint_files import ModelFileError
from modules.models.registry import natural_sort_key

log = logging.getLogger(__name__)

FOLDER = "clip_vision"
# Encoders are held apart from the ControlNet/adapter models (as the extension keeps them with its
# preprocessors), so an IP-Adapter unit beside a ControlNet unit fits the default model cache of 2; one is kept.
MEMORY_GROUP = "clip_vision"
ENCODERS_KEPT = 1
EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# (hidden width, projection width) -> the encoder's usual name
KNOWN = {(1280, 1024): "ViT-H/14", (1664, 1280): "ViT-bigG/14", (1024, 768): "ViT-L/14"}
# the file names sd-webui-controlnet downloads each encoder to
EXTENSION_FILES = {"ViT-H/14": "clip_h.pth", "ViT-bigG/14": "clip_g.pth", "ViT-L/14": "clip_vitl.pth"}
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}
_QUICK_GELU_WIDTHS = (768, 1024)  # OpenAI's encoders; LAION's (H, bigG) use gelu
_IGNORED_KEYS = ("vision_model.embeddings.position_ids",)  # a buffer older transformers saved
_TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
_VISION_PREFIXES = ("vision_model.", "visual_projection.")
MAX_LAYERS = 128
MAX_IMAGE_SIZE = 1024
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EncoderFile:
    name: str  # file name without extension
    path: str
    hidden_size: int
    projection_dim: int
    image_size: int

    @property
    def kind(self) -> str | None:
        """"ViT-H/14", "ViT-bigG/14", "ViT-L/14", or None for another encoder."""
        return KNOWN.get((self.hidden_size, self.projection_dim))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind or f'{self.hidden_size}-wide'})"


def model_dirs() -> list[str]:
    """The folders holding CLIP vision encoders, existing ones only, each once."""
    from modules import paths
    from modules.controlnet.preprocessors import EXTENSION_DOWNLOADS, PREPROCESSOR_MODELS_FOLDER

    candidates = [os.path.join(paths.models_path, FOLDER),
                  os.path.join(paths.models_path, PREPROCESSOR_MODELS_FOLDER, FOLDER),
                  os.path.join(paths.extensions_dir, *EXTENSION_DOWNLOADS, FOLDER)]
    found, seen = [], set()
    for folder in candidates:
        real = os.path.realpath(folder)
        if os.path.isdir(folder) and real not in seen:
            seen.add(real)
            found.append(folder)
    return found


def vision_part(state: Mapping[str, Any]) -> dict[str, Any]:
    """The CLIPVisionModelWithProjection tensors of a file; ValueError says why a file is not one."""
    keys = list(state)
    if any(k.startswith(("visual.transformer.", "visual.conv1.")) for k in keys):
        raise ValueError("an open_clip checkpoint (visual.transformer.*), which is not supported; use the "
                         "transformers-format encoder (vision_model.*, visual_projection.weight)")
    vision = {k: v for k, v in state.items() if k.startswith(_VISION_PREFIXES) and k not in _IGNORED_KEYS}
    other = [k for k in keys if not k.startswith(_VISION_PREFIXES + _TEXT_PREFIXES) and k not in _IGNORED_KEYS]
    if not vision or other:
        example = ", ".join(other[:3]) if other else "no vision_model.* weights"
        raise ValueError(f"not a CLIP vision encoder in transformers' layout ({example})")
    if "visual_projection.weight" not in vision:
        raise ValueError("a CLIP vision model without its projection (visual_projection.weight)")
    return vision


def _shape(state: Mapping[str, Any], key: str, dims: int) -> tuple[int, ...]:
    value = state.get(key)
    shape = tuple(int(d) for d in getattr(value, "shape", ()))
    if len(shape) != dims:
        raise ValueError(f"{key} is missing or not {dims}-dimensional")
    return shape


def config_from_shapes(state: Mapping[str, Any]) -> Any:
    """The CLIPVisionConfig that the tensors (anything with .shape) were made for; ValueError when none fits."""
    from transformers import CLIPVisionConfig

    hidden, channels, patch, patch_w = _shape(state, "vision_model.embeddings.patch_embedding.weight", 4)
    positions, width = _shape(state, "vision_model.embeddings.position_embedding.weight", 2)
    projection, projected = _shape(state, "visual_projection.weight", 2)
    intermediate, _ = _shape(state, "vision_model.encoder.layers.0.mlp.fc1.weight", 2)
    layers = classify.count_indices(state, r"vision_model\.encoder\.layers\.(\d+)\.")
    side = math.isqrt(max(positions - 1, 0))
    if patch != patch_w or width != hidden or projected != hidden or side * side != positions - 1 or side == 0:
        raise ValueError("the embedding shapes do not describe a square ViT")
    if not 0 < layers <= MAX_LAYERS or not 0 < side * patch <= MAX_IMAGE_SIZE:
        raise ValueError(f"{layers} layers at {side * patch} pixels is not a CLIP vision encoder")
    heads = _HEADS.get(hidden) or (hidden // 64 if hidden % 64 == 0 else 0)
    if not heads:
        raise ValueError(f"width {hidden} has no known head count")
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_channels=channels, image_size=side * patch, patch_size=patch, projection_dim=projection,
        hidden_act="quick_gelu" if hidden in _QUICK_GELU_WIDTHS else "gelu", layer_norm_eps=1e-5)


# --- listing ---------------------------------------------------------------------------------------------------

_lock = threading.RLock()
_known: dict[tuple[str, int, int], EncoderFile | str] = {}  # (real path, mtime, size) -> file or why not
_refused: dict[str, str] = {}


def _stat_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def _describe(path: str) -> EncoderFile | str:
    from modules.controlnet.files import read_shapes

    try:
        config = config_from_shapes(vision_part(read_shapes(path)))
    except ModelFileError as e:
        return e.reason
    except (ValueError, OSError, RuntimeError, TypeError) as e:  # a listing must survive any one odd file
        return str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    name = os.path.splitext(os.path.basename(path))[0]
    return EncoderFile(name, os.path.abspath(path), config.hidden_size, config.projection_dim, config.image_size)


def list_encoders() -> list[EncoderFile]:
    """Every usable encoder, folder by folder, naturally sorted within each (files read once while unchanged)."""
    found: list[EncoderFile] = []
    refused: dict[str, str] = {}
    with _lock:
        for folder in model_dirs():
            names = sorted(os.listdir(folder), key=natural_sort_key)
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".") or not name.lower().endswith(EXTENSIONS) or not os.path.isfile(path):
                    continue
                try:
                    key = _stat_key(path)
                except OSError:
                    continue
                entry = _known.get(key)
                if entry is None:
                    entry = _known[key] = _describe(path)
                    if isinstance(entry, str):
                        log.warning("CLIP vision: %s is left out: %s", name, entry)
                if isinstance(entry, str):
                    refused[name] = entry
                else:
                    found.append(entry)
        _refused.clear()
        _refused.update(refused)
    return found


def refused() -> dict[str, str]:
    """Files in the clip_vision folders that are not usable encoders: file name -> why (as of the last listing)."""
    with _lock:
        return dict(_refused)


# --- loading and encoding --------------------------------------------------------------------------------------


@dataclass
class LoadedEncoder:
    file: EncoderFile
    model: torch.nn.Module  # transformers CLIPVisionModelWithProjection, eval mode
    device: torch.device
    dtype: torch.dtype
    file_key: tuple[str, int, int]
    _uncond_hidden: dict[tuple[str, torch.dtype], torch.Tensor] = field(default_factory=dict, repr=False)

    def processor(self) -> Any:
        return image_processor(self.file.image_size)


_cache: dict[str, LoadedEncoder] = {}
_load_lock = threading.Lock()


def image_processor(size: int = 224) -> Any:
    """transformers' CLIPImageProcessor with CLIP's settings spelled out (no config is read or downloaded)."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    return CLIPImageProcessor(do_resize=True, size={"shortest_edge": size}, resample=PILImageResampling.BICUBIC,
                              do_center_crop=True, crop_size={"height": size, "width": size}, do_rescale=True,
                              rescale_factor=1 / 255, do_normalize=True, image_mean=list(CLIP_MEAN),
                              image_std=list(CLIP_STD), do_convert_rgb=True)


def handle_name(file: EncoderFile) -> str:
    return f"{MEMORY_GROUP}:{FOLDER}:{os.path.realpath(file.path)}"


def _unloader(real_path: str):
    def unload() -> None:
        with _lock:
            _cache.pop(real_path, None)
    return unload


def build(file: EncoderFile, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The encoder of `file` from its tensors; ValueError when a key or shape does not fit."""
    from transformers import CLIPVisionModelWithProjection

    vision = vision_part(state)
    config = config_from_shapes(vision)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(vision))
    wrong = sorted(k for k in set(expected) & set(vision) if tuple(vision[k].shape) != expected[k])
    unexpected = sorted(set(vision) - set(expected))
    if missing or wrong or unexpected:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"{wrong[0]} is {tuple(vision[wrong[0]].shape)}, expected {expected[wrong[0]]}")
        raise ValueError(f"the weights do not fit a CLIP vision encoder ({detail})")
    if any(not v.is_floating_point() for v in vision.values()):
        raise ValueError("a weight is not floating point")
    model.load_state_dict(dict(vision), strict=True, assign=True)
    # buffers outside the state dict were made on the meta device with the model: make them for real
    embeddings = model.vision_model.embeddings
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        if name != "vision_model.embeddings.position_ids":
            raise ValueError(f"cannot build the buffer {name}")
        embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions).expand((1, -1)),
                                   persistent=False)
    return model.eval().requires_grad_(False)


def _move(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, handle: str) -> None:
    size = memory.module_size_bytes(model) * torch.tensor([], dtype=dtype).element_size()
    size //= max(1, next(model.parameters()).element_size())
    memory.owner.make_room(size, device, keep=[handle])
    memory.owner.run_with_oom_retry(lambda: model.to(device=device, dtype=dtype), device, keep=[handle])


def load(file: EncoderFile, device: torch.device, dtype: torch.dtype) -> LoadedEncoder:
    """The encoder of `file` on `device` in `dtype`, from the cache while the file is unchanged.
    ModelFileError names the file when it cannot be used."""
    device = torch.device(device)
    real = os.path.realpath(file.path)
    handle = handle_name(file)
    with _load_lock:
        try:
            key = _stat_key(file.path)
        except OSError as e:
            raise ModelFileError(file.path, f"the file is gone or unreadable ({e.strerror or e})") from e
        with _lock:
            loaded = _cache.get(real)
        if loaded is None or loaded.file_key != key or handle not in memory.owner:
            memory.owner.unload(handle)
            try:
                state = checkpoint_files.read_state_dict(file.path, "cpu")
                model = build(file, state)
            except ModelFileError:
                raise
            except (ValueError, KeyError, RuntimeError, TypeError) as e:
                raise ModelFileError(file.path, str(e).splitlines()[0][:400]) from e
            del state
            loaded = LoadedEncoder(file, model, torch.device("cpu"), next(model.parameters()).dtype, key)
            with _lock:
                _cache[real] = loaded
            log.info("loaded CLIP vision encoder %s", file.label)
        if loaded.device != device or loaded.dtype != dtype:
            _move(loaded.model, device, dtype, handle)
            loaded.device, loaded.dtype = device, dtype
            loaded._uncond_hidden.clear()
        memory.owner.register(handle, memory.module_size_bytes(loaded.model), _unloader(real), device,
                              group=MEMORY_GROUP)
        memory.owner.touch(handle)
    memory.owner.trim_group(MEMORY_GROUP, ENCODERS_KEPT)
    return loaded


def pixel_values(picture: np.ndarray, size: int = 224) -> torch.Tensor:
    """[1, 3, size, size] float32: an RGB uint8 picture as CLIPImageProcessor prepares it."""
    from PIL import Image

    return image_processor(size)(images=Image.fromarray(picture), return_tensors="pt").pixel_values


@torch.no_grad()
def encode(encoder: LoadedEncoder, picture: np.ndarray, hidden_states: bool,
           device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) image embeddings of an RGB uint8 picture, on `device` (default: the encoder's) in the
    encoder's dtype, as diffusers' pipelines make them: `image_embeds` [1, 1, projection] with zeros for the
    negative rows, or with `hidden_states` the penultimate layer's [1, 1, tokens, width] with that of an all-zero
    (normalised) picture for the negative rows."""
    device = torch.device(device) if device is not None else encoder.device
    model = encoder.model
    moved = encoder.device != device
    if moved:
        model.to(device)
    try:
        pixels = pixel_values(picture, encoder.file.image_size).to(device=device, dtype=encoder.dtype)
        if not hidden_states:
            cond = model(pixels).image_embeds
            return cond[:, None], torch.zeros_like(cond)[:, None]
        cond = model(pixels, output_hidden_states=True).hidden_states[-2]
        key = (str(device), encoder.dtype)
        uncond = encoder._uncond_hidden.get(key)
        if uncond is None:  # the same for every picture: computed once per device and dtype
            uncond = model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
            encoder._uncond_hidden[key] = uncond
        return cond[:, None], uncond[:, None]
    finally:
        if moved:
            model.to(encoder.device)


def unload_all() -> None:
    with _lock:
        files = [entry.file for entry in _cache.values()]
    for file in files:
        memory.owner.unload(handle_name(file))
