"""Depth estimators that transformers implements: MiDaS v3 (DPT-Hybrid, DPT-Large) through DPTForDepthEstimation
and Depth Anything V2 through DepthAnythingForDepthEstimation. No network is written here.

A model is built from its config (the folder's config.json when there is one, else the config we ship in
configs/<name>.json) on the meta device, and the weights file, read through the restricted loader, must fill
every parameter with the right shape: a file of another model, a truncated one or an edited one is refused
with a ModelFileError naming it. Both families predict relative inverse depth (larger = nearer).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import torch
from PIL import Image

from modules.depth.weights import Weights
from modules.models.checkpoint_files import ModelFileError, json_nesting_depth, read_state_dict

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
MAX_CONFIG_BYTES = 256 * 1024  # a real config.json is a few KB
MAX_CONFIG_NESTING = 8
MAX_CONFIG_INT = 65536  # widths, sizes, ids
MAX_LAYERS = 128  # transformer layers / BiT blocks per stage
MAX_RESOLUTION = 2048  # processing side in pixels; ViT attention grows with its square
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a family wants its input: normalisation, and the processing size's shape."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    square: bool  # transformers' DPT (ViT) reassembles a square token grid only
    multiple: int  # the processing size is a multiple of this (patch size, or the fusion's strides)


MIDAS = Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), square=True, multiple=32)
DEPTH_ANYTHING = Preprocess(IMAGENET_MEAN, IMAGENET_STD, square=False, multiple=14)
MODEL_TYPES = {"dpt": MIDAS, "depth_anything": DEPTH_ANYTHING}


def read_config(weights: Weights, model_type: str) -> dict:
    """The config dict: the folder's config.json, else ours. Must be JSON of the expected model type."""
    path = weights.config_file or os.path.join(CONFIG_DIR, f"{weights.name}.json")
    if not os.path.isfile(path):
        raise ModelFileError(path, f"no config for depth estimator {weights.name!r}")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ModelFileError(path, f"config is larger than {MAX_CONFIG_BYTES // 1024} KB; not a model config")
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if json_nesting_depth(raw) > MAX_CONFIG_NESTING:
        raise ModelFileError(path, "config nests too deep; not a model config")
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(path, f"config is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != model_type:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ModelFileError(path, f"config is for a {found!r} model, not {model_type!r}")
    _check_sizes(path, config)
    return config


def build_config(config: dict):
    from transformers import DepthAnythingConfig, DPTConfig

    cls = DPTConfig if config["model_type"] == "dpt" else DepthAnythingConfig
    values = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("transformers_version",)}
    try:
        return cls(**values)
    except Exception as e:  # transformers' strict config classes raise their own error types
        raise ValueError(f"config rejected by transformers: {str(e).splitlines()[0][:300]}") from None


def _check_sizes(path: str, config: dict) -> None:
    """Numbers a real config never reaches: building the model (even on the meta device) is refused first."""
    def walk(value, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            if len(value) > 64:
                raise ModelFileError(path, f"config list {key!r} has {len(value)} entries")
            for v in value:
                walk(v, key)
        elif isinstance(value, int) and not isinstance(value, bool):
            limit = MAX_LAYERS if "layers" in key or key == "depths" else MAX_CONFIG_INT
            if value > limit:
                raise ModelFileError(path, f"config value {key}={value} is beyond any real model ({limit})")
    walk(config)


def _model_class(model_type: str):
    from transformers import DepthAnythingForDepthEstimation, DPTForDepthEstimation

    return DPTForDepthEstimation if model_type == "dpt" else DepthAnythingForDepthEstimation


def build_model(model_type: str, config: dict, state_dict: dict[str, torch.Tensor], path: str) -> torch.nn.Module:
    """The network of `config` holding exactly the tensors of `state_dict` (float32, CPU, eval mode)."""
    try:
        hf_config = build_config(config)
    except ValueError as e:
        raise ModelFileError(path, str(e)) from None
    with torch.device("meta"):
        model = _model_class(model_type)(hf_config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(path, f"does not fit {type(model).__name__} with this config ({len(missing)} weights "
                                   f"missing, {len(unexpected)} unexpected: {detail}); a model folder needs its "
                                   "own config.json next to the weights")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ModelFileError(path, f"weight {key} has shape {tuple(state_dict[key].shape)}, the config "
                                       f"needs {tuple(tensor.shape)}")
    floats = {k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()}
    model.load_state_dict(floats, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # a non-persistent buffer the file cannot hold: not a model we know how to build
        raise ModelFileError(path, f"cannot be built: {leftovers[:3]} have no values")
    return model.eval()


def processing_size(width: int, height: int, resolution: int, pre: Preprocess) -> tuple[int, int]:
    """(width, height) the network sees: `resolution` on the short side (square for DPT), rounded to the
    family's multiple."""
    resolution = max(pre.multiple, min(int(resolution), MAX_RESOLUTION))

    def rounded(value: float) -> int:
        return max(pre.multiple, int(round(value / pre.multiple)) * pre.multiple)

    if pre.square:
        side = rounded(resolution)
        return side, side
    scale = resolution / min(width, height)
    return rounded(width * scale), rounded(height * scale)


class TransformersEstimator:
    """One loaded DPT / Depth Anything network. `predict` is serialised: DPT-Hybrid's input size is an
    attribute of the model, set per call."""

    def __init__(self, name: str, model: torch.nn.Module, pre: Preprocess):
        self.name = name
        self.model = model
        self.pre = pre
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.autocast = False
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        from modules.models.memory import module_size_bytes

        return module_size_bytes(self.model)

    def to(self, device: torch.device, half: bool) -> None:
        """Move to `device`. Half precision on CUDA: Depth Anything in fp16 weights; MiDaS keeps float32 weights
        under fp16 autocast (its BiT backbone's normalisations are not fp16-safe, diffusers does the same)."""
        use_half = half and device.type == "cuda"
        self.dtype = torch.float16 if use_half and self.pre is DEPTH_ANYTHING else torch.float32
        self.autocast = use_half and self.pre is MIDAS
        self.model.to(device=device, dtype=self.dtype)
        self.device = device

    def pixel_values(self, image: Image.Image, resolution: int) -> torch.Tensor:
        """The normalised [1, 3, h, w] input, resized with transformers' DPT image processor (bicubic)."""
        from transformers import DPTImageProcessor

        width, height = processing_size(image.width, image.height, resolution, self.pre)
        processor = DPTImageProcessor(do_resize=True, size={"height": height, "width": width},
                                      keep_aspect_ratio=False, ensure_multiple_of=1,
                                      resample=Image.Resampling.BICUBIC, do_rescale=True, rescale_factor=1 / 255,
                                      do_normalize=True, image_mean=list(self.pre.mean), image_std=list(self.pre.std),
                                      do_pad=False)
        return processor(images=image.convert("RGB"), return_tensors="pt").pixel_values

    @torch.inference_mode()
    def predict(self, image: Image.Image, resolution: int) -> torch.Tensor:
        """Relative inverse depth [h, w] float32 at the processing size, on the model's device."""
        pixels = self.pixel_values(image, resolution).to(self.device, self.dtype)
        with self._lock:
            embeddings = getattr(getattr(self.model, "dpt", None), "embeddings", None)
            if embeddings is not None and hasattr(embeddings, "image_size"):
                # DPT-Hybrid checks the input against its configured size; its position embeddings are resized
                # to the token grid anyway, so any square size a multiple of 32 is valid.
                embeddings.image_size = tuple(pixels.shape[-2:])
            ctx = torch.autocast(self.device.type, dtype=torch.float16) if self.autocast \
                else torch.autocast(self.device.type, enabled=False)
            with ctx:
                depth = self.model(pixel_values=pixels).predicted_depth
        return depth[0].float()


def load(weights: Weights, model_type: str) -> TransformersEstimator:
    """Build estimator `weights.name` (model_type "dpt" or "depth_anything") on the CPU in float32."""
    if weights.weights_file is None:
        raise ModelFileError(weights.folder or weights.name, "holds no weights file (.safetensors)")
    config = read_config(weights, model_type)
    state_dict = read_state_dict(weights.weights_file, "cpu")
    model = build_model(model_type, config, state_dict, weights.weights_file)
    return TransformersEstimator(weights.name, model, MODEL_TYPES[model_type])
