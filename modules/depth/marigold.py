"""Marigold depth (prs-eth/marigold-depth-*) through diffusers' own MarigoldDepthPipeline.

The weights are a diffusers pipeline folder (model_index.json, unet/, vae/, scheduler/, text_encoder/,
tokenizer/) as the Hub repo holds it, under models/depth/marigold/. Only `.safetensors` weights are read (a
folder with pickled .bin weights is refused by name), offline, and the folder must describe a
MarigoldDepthPipeline whose prediction type is depth or disparity.

Marigold predicts affine-invariant depth (0 near, 1 far) or disparity; the registry's convention is relative
inverse depth (larger = nearer), so depth is turned around (1 - d): the order of near and far is what a depth
map says, and every consumer min-max normalises it. Sampling is seeded, so one picture always gives one map.
"""

from __future__ import annotations

import json
import os
import threading

import torch
from PIL import Image

from modules.depth.weights import Weights
from modules.models.checkpoint_files import ModelFileError

PIPELINE_CLASS = "MarigoldDepthPipeline"
MAX_INDEX_BYTES = 64 * 1024
SEED = 2024


def _check_folder(folder: str) -> dict:
    index_path = os.path.join(folder, "model_index.json")
    if os.path.getsize(index_path) > MAX_INDEX_BYTES:
        raise ModelFileError(index_path, "is too large to be a pipeline index")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFileError(index_path, f"is not a readable pipeline index ({e})") from None
    if not isinstance(index, dict) or index.get("_class_name") != PIPELINE_CLASS:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise ModelFileError(index_path, f"describes a {found!r} pipeline, not {PIPELINE_CLASS}")
    for part in ("unet", "vae", "text_encoder"):
        sub = os.path.join(folder, part)
        names = os.listdir(sub) if os.path.isdir(sub) else []
        if not any(n.endswith(".safetensors") for n in names):
            raise ModelFileError(sub, "has no .safetensors weights (pickled weights are not read)")
    return index


class MarigoldEstimator:
    def __init__(self, pipe, prediction_type: str):
        self.pipe = pipe
        self.prediction_type = prediction_type
        self.device = torch.device("cpu")
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        from modules.models.memory import module_size_bytes

        return sum(module_size_bytes(m) for m in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder))

    def to(self, device: torch.device, half: bool) -> None:
        dtype = torch.float16 if half and device.type == "cuda" else torch.float32
        self.pipe.to(device=device, dtype=dtype)
        self.device = device

    @torch.inference_mode()
    def predict(self, image: Image.Image, resolution: int) -> torch.Tensor:
        """[h, w] relative inverse depth at the processing size (long side = `resolution`, Marigold's rule)."""
        with self._lock:
            generator = torch.Generator(self.device).manual_seed(SEED)
            out = self.pipe(image, processing_resolution=int(resolution), match_input_resolution=False,
                            ensemble_size=1, output_type="pt", generator=generator)
        prediction = out.prediction[0, 0].float()
        return 1.0 - prediction if self.prediction_type == "depth" else prediction


def load(weights: Weights) -> MarigoldEstimator:
    from diffusers import MarigoldDepthPipeline

    if weights.folder is None or not weights.is_diffusers_folder:
        raise ModelFileError(weights.weights_file or weights.name, "Marigold needs its diffusers pipeline folder "
                                                                   "(model_index.json, unet/, vae/, ...)")
    _check_folder(weights.folder)
    try:
        pipe = MarigoldDepthPipeline.from_pretrained(weights.folder, local_files_only=True, use_safetensors=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ModelFileError(weights.folder, f"could not be loaded as Marigold: {str(e).splitlines()[0][:300]}") \
            from None
    prediction_type = pipe.config.prediction_type or "depth"
    if prediction_type not in ("depth", "disparity"):
        raise ModelFileError(weights.folder, f"predicts {prediction_type!r}, not depth")
    pipe.set_progress_bar_config(disable=True)
    return MarigoldEstimator(pipe, prediction_type)
