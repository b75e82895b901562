"""normal_bae: surface normals from Bae et al.'s network (EfficientNet-B5 encoder, trained on ScanNet), as
ControlNet 1.1's normalbae model expects them; weights normal_bae/scannet.pt, network from controlnet_aux."""

from __future__ import annotations

import types

import numpy as np
import torch

from modules.controlnet.nets import loading
from modules.controlnet.preprocessor_images import hwc3, resize_image_with_pad

WEIGHTS = ("normal_bae", "scannet.pt")
# ImageNet statistics the EfficientNet encoder was trained with
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _build(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.normalbae.nets.NNET import NNET

    # the inference settings of the published checkpoint (the extension's and controlnet_aux's)
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    return loading.fill(path, NNET(args), loading.strip_prefix(state, "module."), "normal_bae")


def normal_bae(image: np.ndarray, resolution: int, _a: float, _b: float) -> np.ndarray:
    """RGB = (x, y, z) of the unit normal mapped from [-1, 1] to [0, 255]."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    network = loading.load_network("normal_bae", WEIGHTS, _build)

    def infer() -> np.ndarray:
        device = loading.network_device(network)
        x = torch.from_numpy(padded).to(device).float().div(255.0).permute(2, 0, 1)[None]
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        normal = network((x - mean) / std)[0][-1][:, :3]
        return ((normal + 1) * 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()

    normal = loading.run(network, infer)
    return hwc3(remove_pad((normal * 255.0).clip(0, 255).astype(np.uint8)))
