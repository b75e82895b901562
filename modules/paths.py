"""Where things live. A1111 extensions read these module attributes, so they stay plain attributes.

`configure()` is called once by the launcher after the command line is parsed (`--data-dir`, `--models-dir`);
before that, everything points inside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

script_path: str = str(Path(__file__).resolve().parent.parent)
configs_path: str = os.path.join(script_path, "configs")
data_path: str = script_path
models_path: str = os.path.join(data_path, "models")
extensions_dir: str = os.path.join(data_path, "extensions")
extensions_builtin_dir: str = os.path.join(script_path, "extensions-builtin")
sd_model_dir: str = os.path.join(models_path, "Stable-diffusion")
# The model this project trains and ships (issue 6): used when no other checkpoint is found, whatever --data-dir is.
BUNDLED_CHECKPOINT: str = os.path.join(script_path, "models", "Stable-diffusion", "default-shapes-v1.safetensors")
bundled_checkpoint: str = BUNDLED_CHECKPOINT  # "" turns the fallback off (the test suite does, outside its own tests)
vae_dir: str = os.path.join(models_path, "VAE")


def configure(data_dir: str | None = None, models_dir: str | None = None) -> None:
    """Point every derived path at `data_dir` / `models_dir` (A1111's --data-dir / --models-dir)."""
    global data_path, models_path, extensions_dir, sd_model_dir, vae_dir
    data_path = os.path.abspath(data_dir) if data_dir else script_path
    models_path = os.path.abspath(models_dir) if models_dir else os.path.join(data_path, "models")
    extensions_dir = os.path.join(data_path, "extensions")
    sd_model_dir = os.path.join(models_path, "Stable-diffusion")
    vae_dir = os.path.join(models_path, "VAE")


def data_file(name: str) -> str:
    """A file in the data dir: config.json, cache.json, styles.csv, params.txt ..."""
    return os.path.join(data_path, name)
