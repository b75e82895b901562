"""Soft edges (HED, PiDiNet), their "safe" and scribble forms, and line art (realistic, coarse, anime).

Networks come from controlnet_aux (the ControlNet 1.1 annotators the extension also ships); the weight files are
the extension's: hed/ControlNetHED.pth, pidinet/table5_pidinet.pth, lineart/sk_model.pth, lineart/sk_model2.pth,
lineart_anime/netG.pth. Pre- and post-processing follow the extension's processor functions: the image is scaled
so its short side is the processor resolution and edge-padded to a multiple of 64; the map comes back at the
scaled size.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from modules.controlnet.nets import loading
from modules.controlnet.preprocessor_images import hwc3, resize_image_with_pad


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """The extension's "safe" quantisation: edge strength in `step` levels, so faint texture becomes 0."""
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """Thin soft edges to one-pixel ridges (blur, keep local maxima along 4 directions, threshold)."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kernels = [np.array(k, dtype=np.uint8) for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]
    y = np.zeros_like(x)
    for kernel in kernels:
        np.putmask(y, cv2.dilate(x, kernel=kernel) == x, x)
    z = np.zeros_like(y, dtype=np.uint8)
    z[y > threshold] = 255
    return z


def scribble(edge: np.ndarray) -> np.ndarray:
    """The extension's scribble_hed / scribble_pidinet: thin, thicken a little, binarise."""
    result = nms(edge, 127, 3.0)
    result = cv2.GaussianBlur(result, (0, 0), 3.0)
    result[result > 4] = 255
    result[result < 255] = 0
    return result


def _to_unit_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).float().div(255.0).permute(2, 0, 1)[None]


# --- HED --------------------------------------------------------------------------------------------------------

def _build_hed(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.hed import ControlNetHED_Apache2

    return loading.fill(path, ControlNetHED_Apache2(), state, "ControlNet HED")


def hed_edges(image: np.ndarray, preprocessor: str, safe: bool = False) -> np.ndarray:
    """HxW uint8 soft edges of an RGB image at its own size (the network is the RGB-input ControlNet HED)."""
    network = loading.load_network(preprocessor, ("hed", "ControlNetHED.pth"), _build_hed)
    height, width = image.shape[:2]

    def infer() -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(loading.network_device(network)).float()
        projections = network(x.permute(2, 0, 1)[None])  # 0..255 input, the network subtracts its own mean
        return [p[0, 0].float().cpu().numpy() for p in projections]

    projections = loading.run(network, infer)
    stacked = np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in projections], 2)
    edge = 1.0 / (1.0 + np.exp(-np.mean(stacked, axis=2).astype(np.float64)))
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def softedge_hed(image: np.ndarray, resolution: int, _a: float, _b: float, safe: bool = False,
                 name: str = "softedge_hed") -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    return hwc3(remove_pad(hed_edges(padded, name, safe)))


def scribble_hed(image: np.ndarray, resolution: int, _a: float, _b: float) -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    return hwc3(scribble(remove_pad(hed_edges(padded, "scribble_hed"))))


# --- PiDiNet ----------------------------------------------------------------------------------------------------

def _build_pidinet(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.pidi.model import pidinet

    return loading.fill(path, pidinet(), loading.strip_prefix(state, "module."), "PiDiNet")


def pidinet_edges(image: np.ndarray, preprocessor: str, safe: bool = False, binary: bool = False) -> np.ndarray:
    """HxW uint8 soft edges; PiDiNet was trained on BGR input, as the extension feeds it."""
    network = loading.load_network(preprocessor, ("pidinet", "table5_pidinet.pth"), _build_pidinet)

    def infer() -> np.ndarray:
        x = _to_unit_tensor(image[:, :, ::-1], loading.network_device(network))
        return network(x)[-1][0, 0].float().cpu().numpy()

    edge = loading.run(network, infer)
    if binary:  # t2ia_sketch_pidi: the T2I-Adapter sketch model wants hard lines
        edge = (edge > 0.5).astype(np.float32)
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def softedge_pidinet(image: np.ndarray, resolution: int, _a: float, _b: float, safe: bool = False,
                     binary: bool = False, name: str = "softedge_pidinet") -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    return hwc3(remove_pad(pidinet_edges(padded, name, safe, binary)))


def scribble_pidinet(image: np.ndarray, resolution: int, _a: float, _b: float) -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    return hwc3(scribble(remove_pad(pidinet_edges(padded, "scribble_pidinet"))))


# --- line art ---------------------------------------------------------------------------------------------------

def _build_lineart(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.lineart import Generator

    return loading.fill(path, Generator(3, 1, 3), state, "line art")


def lineart(image: np.ndarray, resolution: int, _a: float, _b: float, coarse: bool = False,
            name: str = "lineart_realistic") -> np.ndarray:
    """Black lines on white: the network draws white on black and the extension inverts it."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    filename = "sk_model2.pth" if coarse else "sk_model.pth"
    network = loading.load_network(name, ("lineart", filename), _build_lineart)

    def infer() -> np.ndarray:
        return network(_to_unit_tensor(padded, loading.network_device(network)))[0, 0].float().cpu().numpy()

    line = (loading.run(network, infer) * 255.0).clip(0, 255).astype(np.uint8)
    return hwc3(255 - remove_pad(line))


def _build_lineart_anime(path: str, state: loading.StateDict) -> torch.nn.Module:
    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    network = UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    return loading.fill(path, network, loading.strip_prefix(state, "module."), "anime line art")


def lineart_anime(image: np.ndarray, resolution: int, _a: float, _b: float) -> np.ndarray:
    """The anime line U-Net works on sizes that are multiples of 256 (eight halvings)."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    network = loading.load_network("lineart_anime", ("lineart_anime", "netG.pth"), _build_lineart_anime)
    height, width = padded.shape[:2]
    fed = cv2.resize(padded, (256 * -(-width // 256), 256 * -(-height // 256)), interpolation=cv2.INTER_CUBIC)

    def infer() -> np.ndarray:
        x = torch.from_numpy(fed).to(loading.network_device(network)).float().div(127.5).sub(1.0)
        return (network(x.permute(2, 0, 1)[None])[0, 0] * 127.5 + 127.5).float().cpu().numpy()

    line = cv2.resize(loading.run(network, infer), (width, height), interpolation=cv2.INTER_CUBIC)
    return hwc3(255 - remove_pad(line.clip(0, 255).astype(np.uint8)))
