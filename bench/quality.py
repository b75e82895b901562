"""Picture quality against a reference for the benchmarks: PSNR and SSIM of uint8 HxWx3 pictures (scikit-image)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def quality(picture: Any, reference: Any) -> dict[str, Any]:
    """{"psnr_db": dB (None when identical), "ssim", "identical"} of two pictures (arrays or PIL images)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = np.asarray(picture), np.asarray(reference)
    identical = bool(np.array_equal(a, b))
    psnr = math.inf if identical else float(peak_signal_noise_ratio(b, a, data_range=255))
    ssim = float(structural_similarity(b, a, channel_axis=2, data_range=255))
    return {"psnr_db": None if math.isinf(psnr) else round(psnr, 2), "ssim": round(ssim, 4), "identical": identical}
