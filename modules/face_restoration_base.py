"""A1111's face-restoration base class and the error a refused restoration raises (re-exported by
modules.face_restoration; here so that the restorers in modules.face_restoration_models need not import it)."""

from __future__ import annotations

import numpy as np


class FaceRestorationError(ValueError):
    """Face restoration was asked for and cannot be done (no model file, an unknown restorer, a bad file)."""


class FaceRestoration:
    """Base class (A1111's names): `name()` shown in settings and infotext, `restore(np_image)` on an RGB uint8
    HxWx3 array, returning one of the same shape."""

    def name(self) -> str:
        return "None"

    def restore(self, np_image: np.ndarray) -> np.ndarray:
        return np_image
