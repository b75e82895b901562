"""A1111's face restoration API (`modules.face_restoration`): `FaceRestoration`, `restore_faces(np_image)`, and
the list `shared.face_restorers` that extensions append to.

`refresh()` puts the built-in restorers (GFPGAN, CodeFormer; modules.face_restoration_models) whose model file is
on disk into `shared.face_restorers`, keeping restorers that extensions added. A restorer that is asked for but
absent is refused by name with where to put its file (`FaceRestorationError`), never silently skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

from modules import shared

# A1111's names, re-exported where extensions look for them; they live below the restorers so that
# modules.face_restoration_models can import them without importing this module.
from modules.face_restoration_base import FaceRestoration, FaceRestorationError  # noqa: F401

log = logging.getLogger(__name__)

INFOTEXT_KEY = "Face restoration"  # A1111's infotext key; the value is the restorer's name




def _builtin_types() -> tuple[type, ...]:
    from modules import face_restoration_models

    return tuple(face_restoration_models.BUILTIN)


def refresh() -> list[Any]:
    """Fill `shared.face_restorers` from the model folders: built-ins with a file, then what extensions added.
    The list object is kept (extensions may hold it)."""
    from modules import face_restoration_models

    builtin = _builtin_types()
    others = [r for r in shared.face_restorers if not isinstance(r, builtin)]
    found = face_restoration_models.restorers_on_disk()
    shared.face_restorers[:] = [*found, *others]
    return shared.face_restorers


def available_names() -> list[str]:
    return [r.name() for r in shared.face_restorers]


def known_names() -> list[str]:
    """Every restorer name the setting may hold: the built-ins (present or not: an absent one is refused by name
    when used, saying where its file goes), then those extensions added."""
    from modules import face_restoration_models

    names = [cls.label for cls in face_restoration_models.BUILTIN]
    return names + [n for n in available_names() if n not in names]


def api_items() -> list[dict[str, Any]]:
    """/sdapi/v1/face-restorers, A1111's shape: [{name, cmd_dir}] (cmd_dir: the folder its file came from)."""
    refresh()  # a file dropped in since start-up shows at once, as the model lists do after a refresh
    return [{"name": r.name(), "cmd_dir": getattr(r, "cmd_dir", None)} for r in shared.face_restorers]


def selected_name() -> str:
    return str(shared.opts.data.get("face_restoration_model") or "CodeFormer")


def find(name: str | None = None) -> FaceRestoration:
    """The restorer called `name` (default: the setting face_restoration_model); FaceRestorationError saying
    what to do when it is not there."""
    from modules import face_restoration_models

    name = name or selected_name()
    for restorer in shared.face_restorers:
        if restorer.name() == name:
            return restorer
    missing = face_restoration_models.missing_message(name)
    if missing is not None:
        raise FaceRestorationError(missing)
    names = ", ".join(available_names()) or "none (no model files)"
    raise FaceRestorationError(f"unknown face restoration model {name!r}; available: {names}")


def restore_faces(np_image: np.ndarray) -> np.ndarray:
    """A1111's entry point: the picture with its faces restored by the selected restorer."""
    restorer = find()
    try:
        return restorer.restore(np_image)
    finally:
        if shared.opts.data.get("face_restoration_unload", False):
            unload = getattr(restorer, "send_model_to_cpu", None)
            if unload is not None:
                unload()


def wanted(p: Any) -> bool:
    """Whether a generation request asks for face restoration: its `restore_faces`, else the setting
    face_restoration (A1111: None means "as in settings")."""
    value = getattr(p, "restore_faces", None)
    if value is None:
        value = shared.opts.data.get("face_restoration", False)
    return bool(value)


def postprocess_generated(p: Any, image: Image.Image) -> Image.Image:
    """The stage in a generation right after decoding each picture (A1111's place, before the scripts'
    postprocess_image): faces restored and `Face restoration: <name>` recorded in the infotext."""
    if not wanted(p):
        return image
    restorer = find()
    p.face_restoration_model = restorer.name()  # the infotext writes it after Seed, A1111's fixed place
    restored = restore_faces(np.asarray(image.convert("RGB"), dtype=np.uint8))
    out = Image.fromarray(restored)
    out.info.update(image.info)
    return out
