"""What the tests of the built-in scripts share: a data dir with tiny SD1 checkpoints (the first one loaded),
a built-in script loaded the way the app loads it, its default arguments, a small txt2img request."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules import paths, processing, scripts, sd_models

SD1 = {"family": "sd1", "seed": 3}


@contextlib.contextmanager
def tiny_data_dir(isolated_data_dir, root: Path, names: tuple[str, ...] = ("sd1.safetensors",)) -> Iterator[Path]:
    checkpoints = {name: {**SD1, "seed": 3 + 6 * i} for i, name in enumerate(names)}
    with isolated_data_dir(root, checkpoints, {"live_previews_enable": False}) as data:
        sd_models.load_model(sd_models.get_closet_checkpoint_match(names[0]))
        yield data


def load_builtin(file_name: str) -> tuple[Any, scripts.Script]:
    """(module, Script instance) of scripts/<file_name>."""
    module = scripts.load_module(os.path.join(paths.script_path, "scripts", file_name))
    script = module.Script()
    script.filename = module.__file__
    return module, script


def default_args(script: scripts.Script, is_img2img: bool = False) -> list[Any]:
    """The values of the script's controls as the page opens with them."""
    with gr.Blocks():
        controls = script.ui(is_img2img)
    return [getattr(c, "value", None) for c in controls]


def txt2img(**kw: Any) -> processing.StableDiffusionProcessingTxt2Img:
    fields = {"negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
              "seed": -1, "cfg_scale": 7.0, "do_not_save_samples": True}
    fields.update(kw)
    return processing.StableDiffusionProcessingTxt2Img(**fields)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)
