"""Where a depth estimator's weights live, and how a missing one is refused.

An estimator named NAME is looked for, in this order, in
    <models>/depth/NAME/                         (the Depth tab's folder)
    <models>/ControlNetPreprocessor/depth/NAME/  (so ControlNet users keep one copy)
as a model folder (config.json + model.safetensors, or a diffusers folder with model_index.json), or a folder
holding one weights file whose config ships with us; a single file <models>/depth/NAME.safetensors also counts.
Links are followed only while they stay inside the folder being searched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modules import paths

WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pth", ".pt")
# A model folder's weights under their usual names, preferred over any other file in it.
PREFERRED_WEIGHTS = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin")


class MissingDepthWeights(FileNotFoundError):
    """No weights for a depth estimator: the message names the estimator and the full expected path."""

    def __init__(self, name: str, expected: str, also: list[str] | None = None):
        where = f" (or {', '.join(also)})" if also else ""
        message = (f'depth estimator "{name}": no weights found. Put the model folder (config.json + '
                   f"model.safetensors, or one .safetensors file) at {expected}{where}")
        super().__init__(2, message, expected)
        self.name = name
        self.path = expected

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclass(frozen=True)
class Weights:
    """A found estimator: its folder (None for a single file), the weights file, and config.json if any."""

    name: str
    folder: str | None
    weights_file: str | None
    config_file: str | None

    @property
    def is_diffusers_folder(self) -> bool:
        return self.folder is not None and os.path.isfile(os.path.join(self.folder, "model_index.json"))


def depth_models_dir() -> str:
    return os.path.join(paths.models_path, "depth")


def controlnet_depth_dir() -> str:
    return os.path.join(paths.models_path, "ControlNetPreprocessor", "depth")


def search_folders(name: str) -> list[str]:
    """The folders searched for `name`, first one first (the first is the path a refusal names)."""
    return [os.path.join(depth_models_dir(), name), os.path.join(controlnet_depth_dir(), name)]


def _inside(root: str, path: str) -> bool:
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def _weights_in(folder: str) -> str | None:
    for preferred in PREFERRED_WEIGHTS:
        candidate = os.path.join(folder, preferred)
        if os.path.isfile(candidate) and _inside(folder, candidate):
            return candidate
    files = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith(WEIGHT_EXTENSIONS) and not f.startswith("."))
    for filename in files:
        candidate = os.path.join(folder, filename)
        if os.path.isfile(candidate) and _inside(folder, candidate):
            return candidate
    return None


def _safe_name(name: str) -> bool:
    return bool(name) and name == os.path.basename(name) and name not in (".", "..") and "\x00" not in name


def find(name: str) -> Weights:
    """The weights of estimator `name`, or MissingDepthWeights naming where they belong."""
    if not _safe_name(name):
        raise ValueError(f"not an estimator name: {name!r}")
    folders = search_folders(name)
    for folder in folders:
        parent = os.path.dirname(folder)
        if not os.path.isdir(folder) or not _inside(parent, folder):
            continue
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            return Weights(name, folder, None, None)
        weights_file = _weights_in(folder)
        if weights_file is not None:
            config = os.path.join(folder, "config.json")
            return Weights(name, folder, weights_file, config if os.path.isfile(config) else None)
    single = os.path.join(depth_models_dir(), name + ".safetensors")
    if os.path.isfile(single) and _inside(depth_models_dir(), single):
        return Weights(name, None, single, None)
    raise MissingDepthWeights(name, folders[0], folders[1:])


def display_path(path: str) -> str:
    """A path as people should see it: relative to the data dir when inside it (no server layout leaks)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(paths.data_path))
    return path if rel.startswith("..") else rel


def refusal(error: MissingDepthWeights) -> ValueError:
    """The refusal shown on the page and over the API: the estimator and where its weights belong."""
    return ValueError(f'Depth estimator "{error.name}" has no weights: put its model folder (config.json + '
                      f"model.safetensors) at {display_path(error.path)}")
