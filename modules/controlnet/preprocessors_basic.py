"""The ControlNet preprocessors that need no weights, registered at import with sd-webui-controlnet's names,
sliders and output semantics (detected maps are RGB uint8; edge/line maps are white on black).

Left out on purpose: reference_only / reference_adain (they act inside the UNet's attention, not on the image),
inpaint_only+lama (needs the LaMa network), inpaint_global_harmonious and tile_colorfix(+sharp) (identity here; their
effect is engine work that does not exist yet, so listing them would promise what does not happen).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from modules.controlnet.preprocessor_images import hwc3, resize_image_with_pad, resize_short_side
from modules.controlnet.preprocessor_registry import Preprocessor, Slider, register

SHUFFLE_GRID = 256  # the extension's noise disk cell size in pixels
LINE_TYPES = ("Lineart", "Scribble/Sketch", "MLSD")  # besides Canny, where the extension also offers invert


def identity(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    return image


def invert(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    """Black lines on white (a drawing) to the white-on-black lines the line models expect."""
    return 255 - image


def canny(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    padded, remove_pad = resize_image_with_pad(image, resolution)
    return hwc3(remove_pad(cv2.Canny(padded, float(low), float(high))))


def threshold(image: np.ndarray, resolution: int, level: float, b: float) -> np.ndarray:
    """White where every channel is brighter than the level, black elsewhere."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    result = np.where(padded.min(axis=2) > level, 255, 0).astype(np.uint8)
    return hwc3(remove_pad(result))


def scribble(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    """The old "scribble" module: dark strokes of a user drawing become white lines on black."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    result = np.where(padded.min(axis=2) < 127, 255, 0).astype(np.uint8)
    return hwc3(remove_pad(result))


def scribble_xdog(image: np.ndarray, resolution: int, level: float, b: float) -> np.ndarray:
    """Difference of Gaussians (sigma 0.5 and 5), binarised: a scribble from a photo without any network."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    x = padded.astype(np.float32)
    fine = cv2.GaussianBlur(x, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(x, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.where(2 * (255 - dog.astype(np.int32)) > level, 255, 0).astype(np.uint8)
    return hwc3(remove_pad(result))


def lineart_standard(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    """Lines as how much darker a pixel is than its blurred surroundings, scaled by the typical line strength."""
    padded, remove_pad = resize_image_with_pad(image, resolution)
    x = padded.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0  # a flat image has no lines
    result = (intensity / scale * 127).clip(0, 255).astype(np.uint8)
    return hwc3(remove_pad(result))


def tile_resample(image: np.ndarray, resolution: int, rate: float, b: float) -> np.ndarray:
    """Down-sample by `rate` (below 1.1 the image is kept), for the tile model to fill in detail."""
    if rate < 1.1:
        return image
    height, width = image.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def blur_gaussian(image: np.ndarray, resolution: int, sigma: float, b: float) -> np.ndarray:
    resized = resize_short_side(image, resolution)
    return cv2.GaussianBlur(resized, (0, 0), float(sigma))


def color_grid(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    """The T2I-Adapter colour grid: the image reduced to cells of 64 pixels, each one flat colour."""
    resized = resize_short_side(image, resolution)
    height, width = resized.shape[:2]
    cells = cv2.resize(resized, (max(1, width // 64), max(1, height // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)


def _gamma_grey(channel: np.ndarray, gamma: float) -> np.ndarray:
    grey = (np.power(channel.astype(np.float32) / 255.0, gamma) * 255.0).clip(0, 255).astype(np.uint8)
    return hwc3(grey)


def recolor_luminance(image: np.ndarray, resolution: int, gamma: float, b: float) -> np.ndarray:
    """Grey from CIELAB lightness, gamma corrected (the recolor model paints colour back in)."""
    return _gamma_grey(cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[:, :, 0], gamma)


def recolor_intensity(image: np.ndarray, resolution: int, gamma: float, b: float) -> np.ndarray:
    """Grey from HSV value (the brightest channel), gamma corrected."""
    return _gamma_grey(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[:, :, 2], gamma)


def _noise_disk(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid blown up with cubic interpolation."""
    grid = rng.uniform(0.0, 1.0, size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    noise = cv2.resize(grid, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell:cell + height, cell:cell + width]
    noise = noise - noise.min()
    peak = float(noise.max())
    return noise / peak if peak > 0 else noise


def content_shuffle(image: np.ndarray, resolution: int, seed: int) -> np.ndarray:
    """Scramble the image with a smooth random flow field (OpenCV remap), keeping its colours and textures but
    not its layout. The same image, resolution and seed give the same result."""
    resized = resize_short_side(hwc3(image), resolution)
    height, width = resized.shape[:2]
    rng = np.random.default_rng(seed)
    map_x = _noise_disk(rng, height, width, SHUFFLE_GRID) * float(width - 1)
    map_y = _noise_disk(rng, height, width, SHUFFLE_GRID) * float(height - 1)
    return cv2.remap(resized, map_x, map_y, cv2.INTER_LINEAR)


def shuffle(image: np.ndarray, resolution: int, a: float, b: float) -> np.ndarray:
    # seeded from the image, so a preview and the generation that follows it see the same shuffle
    seed = int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:8], "little")
    return content_shuffle(image, resolution, seed)


def _register_all() -> None:
    res_none = {"resolution": None}
    register(Preprocessor("none", "All", identity, **res_none))
    register(Preprocessor("invert (from white bg & black line)", "Canny", invert, aliases=("invert",),
                          also_control_types=LINE_TYPES, **res_none))
    register(Preprocessor("canny", "Canny", canny,
                          slider_a=Slider("Canny Low Threshold", 1, 255, 100, 1),
                          slider_b=Slider("Canny High Threshold", 1, 255, 200, 1)))
    register(Preprocessor("threshold", "All", threshold, slider_a=Slider("Binarization Threshold", 0, 255, 127, 1)))
    register(Preprocessor("scribble", "Scribble/Sketch", scribble))
    register(Preprocessor("scribble_xdog", "Scribble/Sketch", scribble_xdog,
                          slider_a=Slider("XDoG Threshold", 1, 64, 32, 1)))
    register(Preprocessor("lineart_standard (from white bg & black line)", "Lineart", lineart_standard,
                          aliases=("lineart_standard",)))
    register(Preprocessor("tile_resample", "Tile/Blur", tile_resample,
                          slider_a=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01), **res_none))
    register(Preprocessor("blur_gaussian", "Tile/Blur", blur_gaussian, slider_a=Slider("Sigma", 0.01, 64.0, 9.0, 0.01)))
    register(Preprocessor("t2ia_color_grid", "T2I-Adapter", color_grid, aliases=("color",)))
    register(Preprocessor("shuffle", "Shuffle", shuffle))
    register(Preprocessor("recolor_luminance", "Recolor", recolor_luminance,
                          slider_a=Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001), **res_none))
    register(Preprocessor("recolor_intensity", "Recolor", recolor_intensity,
                          slider_a=Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001), **res_none))
    # the runtime applies the unit's mask; the preprocessor hands the image on unchanged, as the extension's does
    register(Preprocessor("inpaint_only", "Inpaint", identity, **res_none))


_register_all()
