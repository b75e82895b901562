"""mlsd: straight line segments (M-LSD large, mlsd/mlsd_large_512_fp32.pth, network from controlnet_aux), drawn
white on black. Threshold A is the score a line's centre needs, threshold B the length (in pixels of the
network's half-resolution map) a line must exceed: the extension's "MLSD Value" and "MLSD Distance" thresholds.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from modules.controlnet.nets import loading
from modules.controlnet.preprocessor_images import hwc3, resize_image_with_pad

WEIGHTS = ("mlsd", "mlsd_large_512_fp32.pth")
TOP_K = 200  # candidate line centres, as the extension decodes them
KERNEL = 3  # local-maximum window for centres


def _build(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return loading.fill(path, MobileV2_MLSD_Large(), state, "M-LSD")


def lines_from_output(output: torch.Tensor, score_threshold: float, distance_threshold: float) -> np.ndarray:
    """Segments (x0, y0, x1, y1) in the network map's pixels from its output (1, 9+, h, w): channel 0 the
    centre score logits, 1..4 the displacement to both ends. Shape (N, 4), N may be 0."""
    from controlnet_aux.mlsd.utils import deccode_output_score_and_ptss

    centres, scores, displacement = deccode_output_score_and_ptss(output, min(TOP_K, output[0, 0].numel()), KERNEL)
    length = np.sqrt(np.sum((displacement[:, :, :2] - displacement[:, :, 2:]) ** 2, axis=-1))
    segments = [[x + displacement[y, x, 0], y + displacement[y, x, 1], x + displacement[y, x, 2],
                 y + displacement[y, x, 3]]
                for (y, x), score in zip(centres, scores, strict=True)
                if score > score_threshold and length[y, x] > distance_threshold]
    return np.array(segments, dtype=np.float64).reshape(-1, 4)


def mlsd(image: np.ndarray, resolution: int, value_threshold: float, distance_threshold: float) -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    network = loading.load_network("mlsd", WEIGHTS, _build)
    height, width = padded.shape[:2]

    def infer() -> torch.Tensor:
        # RGB plus a constant fourth channel, in [-1, 1], as M-LSD was trained
        x = np.concatenate([padded, np.full((height, width, 1), 1.0)], axis=-1).astype(np.float32) / 127.5 - 1.0
        x = torch.from_numpy(x).permute(2, 0, 1)[None].to(loading.network_device(network))
        return network(x).float().cpu()

    output = loading.run(network, infer)
    segments = lines_from_output(output, value_threshold, distance_threshold)
    # the map is at half the input size
    factor = np.array([width / output.shape[3], height / output.shape[2]] * 2)
    drawn = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in segments * factor:
        cv2.line(drawn, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return hwc3(remove_pad(drawn))
