"""Depth preprocessors: adapters from the depth estimator registry (modules/depth/estimators.py) to
sd-webui-controlnet's depth maps (8-bit grey RGB, near = bright, at the processor resolution).

The estimator module is imported when a depth map is first asked for: its networks come from transformers and
are only needed then. A missing weight file surfaces as the registry's MissingWeights, naming the preprocessor.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from modules.controlnet.preprocessor_images import hwc3, resize_short_side
from modules.controlnet.preprocessor_registry import MissingWeights, Preprocessor, register

MIDAS_ESTIMATOR = "midas_dpt_hybrid"  # the extension's depth_midas network (dpt_hybrid-midas-501f0c75.pt)
# the extension ships the large Depth Anything V2; smaller ones serve people who only have those
DEPTH_ANYTHING_V2_ESTIMATORS = ("depth_anything_v2_large", "depth_anything_v2_base", "depth_anything_v2_small")


def depth_to_map(depth: np.ndarray) -> np.ndarray:
    """Relative inverse depth in [0, 1] (HxW float) to the extension's uint8 grey RGB map."""
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return hwc3((depth.clip(0.0, 1.0) * 255.0).round().astype(np.uint8))


def _missing_path(error: FileNotFoundError) -> str:
    return getattr(error, "path", None) or error.filename or str(error)


def _estimate(preprocessor: str, estimators: tuple[str, ...], image: np.ndarray, resolution: int) -> np.ndarray:
    """Run the first of `estimators` whose weights are present, on the image scaled to the resolution."""
    from modules.depth import estimators as depth_registry

    resized = resize_short_side(image, resolution)
    first_missing: FileNotFoundError | None = None
    for name in estimators:
        try:
            depth = depth_registry.estimate(name, Image.fromarray(resized), resolution)
        except depth_registry.MissingDepthWeights as error:
            first_missing = first_missing or error
            continue
        if depth.shape[:2] != resized.shape[:2]:
            raise RuntimeError(f'ControlNet preprocessor "{preprocessor}": the depth estimator "{name}" returned '
                               f"{depth.shape[:2]}, not the image's {resized.shape[:2]}")
        return depth_to_map(depth)
    assert first_missing is not None
    raise MissingWeights(preprocessor, _missing_path(first_missing)) from first_missing


def depth_midas(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    return _estimate("depth_midas", (MIDAS_ESTIMATOR,), image, resolution)


def depth_anything_v2(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    return _estimate("depth_anything_v2", DEPTH_ANYTHING_V2_ESTIMATORS, image, resolution)


register(Preprocessor("depth_midas", "Depth", depth_midas, model_free=False, aliases=("depth",)))
register(Preprocessor("depth_anything_v2", "Depth", depth_anything_v2, model_free=False))
