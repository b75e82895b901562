"""The built-in face restorers, GFPGAN and CodeFormer, loaded with spandrel from their A1111 folders.

- GFPGAN (Apache-2.0): `models/GFPGAN` or `--gfpgan-models-path`, e.g. GFPGANv1.4.pth; spandrel's GFPGAN
  architecture (GFPGANv1Clean).
- CodeFormer (S-Lab License 1.0, non-commercial): `models/Codeformer` or `--codeformer-models-path`, e.g.
  codeformer-v0.1.0.pth; spandrel_extra_arches' CodeFormer architecture.

Files are read through the restricted loader (modules.models.checkpoint_files); spandrel decides the architecture
from the weights, and a file of another architecture is refused by name. A restorer exists only when its folder
holds a file; which file: the usual release name, else the last (natural order) whose name has the restorer's
name in it, else the last model file (A1111's folders also hold facexlib's detection/parsing weights, which are
skipped by that rule). Models stay loaded between uses; the setting face_restoration_unload moves them back to
the CPU after each picture.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import numpy as np

from modules import face_detection, paths, shared
from modules.face_restoration_base import FaceRestoration, FaceRestorationError

MODEL_EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors", ".sft")


@functools.cache
def _install_extra_arches() -> None:
    import spandrel_extra_arches

    # others (the upscaler registry) may install them too: duplicates are fine
    spandrel_extra_arches.install(ignore_duplicates=True)


def read_weights(path: str) -> dict[str, Any]:
    """The tensors of a .pth/.safetensors file, through the restricted loader, which unwraps `params_ema` and
    the like (GFPGAN and CodeFormer releases nest them so)."""
    from modules.models import checkpoint_files as cf

    return cf.read_state_dict(path)


def _natural(name: str) -> list[Any]:
    return shared.natural_sort_key(name)


class SpandrelFaceRestorer(FaceRestoration):
    """A restorer over one model file; subclasses say which architecture, folder and file name."""

    label = ""
    arch_id = ""
    folder_name = ""  # under the models folder (A1111's spelling)
    folder_flag = ""  # the command-line flag that moves the folder
    release_file = ""  # the file A1111 downloads, named in messages

    def __init__(self, model_path: str):
        self.model_path = model_path
        self.cmd_dir = os.path.dirname(model_path)  # A1111's attribute, shown by /sdapi/v1/face-restorers
        self.descriptor: Any = None
        self._lock = threading.RLock()

    def name(self) -> str:
        return self.label

    # --- where the file is -----------------------------------------------------------------------------------

    @classmethod
    def folder(cls) -> str:
        flag = cls.folder_flag.lstrip("-").replace("-", "_")
        return getattr(shared.cmd_opts, flag, None) or os.path.join(paths.models_path, cls.folder_name)

    @classmethod
    def shown_folder(cls) -> str:
        """How messages name the folder: models/<name>, or the flag that moved it (never a full path)."""
        default = os.path.join(paths.models_path, cls.folder_name)
        if os.path.abspath(cls.folder()) == os.path.abspath(default):
            return f"models/{cls.folder_name}"
        return f"the {cls.folder_flag} folder"

    @classmethod
    def model_file(cls) -> str | None:
        folder = cls.folder()
        if not os.path.isdir(folder):
            return None
        files = sorted((f for f in os.listdir(folder) if f.lower().endswith(MODEL_EXTENSIONS) and not f.startswith(".")
                        and os.path.isfile(os.path.join(folder, f))), key=_natural)
        if not files:
            return None
        by_release = [f for f in files if f.lower() == cls.release_file.lower()]
        by_name = [f for f in files if cls.label.lower() in f.lower()]
        return os.path.join(folder, (by_release or by_name or files)[-1])

    @classmethod
    def missing_message(cls) -> str:
        return f"no {cls.label} model in {cls.shown_folder()}: put {cls.release_file} there"

    # --- loading ---------------------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> FaceRestorationError:
        return FaceRestorationError(f"{self.label} model {os.path.basename(self.model_path)}: {reason}")

    @property
    def _handle(self) -> str:
        return f"face:{self.model_path}"

    def load(self) -> Any:
        """The spandrel descriptor of the file, loaded on first use, on the device in the dtype to run in. The
        memory owner knows it (group "face") and may drop it when another network needs the room."""
        from modules.models import memory

        with self._lock:
            if self.descriptor is None:
                self.descriptor = self._load()
                memory.owner.register(self._handle, memory.module_size_bytes(self.descriptor.model), self._forget,
                                      self.descriptor.device, group="face")
            else:
                memory.owner.touch(self._handle)
            return self.descriptor

    def _forget(self) -> None:
        """The memory owner's unload: the next restore loads the file again."""
        with self._lock:
            self.descriptor = None

    def _load(self) -> Any:
        import spandrel

        from modules.models.checkpoint_files import ModelFileError

        _install_extra_arches()
        try:
            state = read_weights(self.model_path)
        except ModelFileError as e:
            raise self._refuse(e.reason) from e
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(state)
        except spandrel.UnsupportedModelError as e:
            raise self._refuse(f"not a {self.label} model (spandrel knows no architecture with these weights)") from e
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            raise self._refuse(f"the weights do not fit the {self.label} architecture ({str(e)[:200]})") from e
        if descriptor.architecture.id != self.arch_id:
            raise self._refuse(f"it is a {descriptor.architecture.name} model, not a {self.label} model")
        descriptor.eval()
        device, dtype = _placement(descriptor)
        descriptor.to(device)
        descriptor.to(dtype)
        return descriptor

    def send_model_to_cpu(self) -> None:
        with self._lock:
            if self.descriptor is not None:
                self.descriptor.to("cpu")

    # --- running ---------------------------------------------------------------------------------------------

    def restore(self, np_image: np.ndarray, w: float | None = None) -> np.ndarray:
        """Every face in the RGB uint8 picture restored (A1111's signature; `w` is CodeFormer's weight)."""
        descriptor = self.load()
        device, dtype = _placement(descriptor)
        if descriptor.device != device:  # moved to the CPU by face_restoration_unload
            descriptor.to(device)
        return face_detection.restore_each_face(np_image, lambda face: self._restore_face(descriptor, face, w))

    def _restore_face(self, descriptor: Any, face: np.ndarray, w: float | None) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)[None]
        x = (x.to(descriptor.device, torch.float32) / 127.5 - 1.0).to(descriptor.dtype)  # the nets take [-1, 1]
        with torch.inference_mode():
            y = self._forward(descriptor.model, x, w)
        y = ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return y[0].permute(1, 2, 0).cpu().numpy()

    def _forward(self, model: Any, x: Any, w: float | None) -> Any:
        raise NotImplementedError


def _placement(descriptor: Any) -> tuple[Any, Any]:
    """(device, dtype): the web UI's device; half precision on CUDA where the architecture allows it (else
    bfloat16 where allowed and the GPU has it), float32 on the CPU or with --no-half."""
    import torch

    from modules import devices

    device = devices.device
    if device.type != "cuda" or getattr(shared.cmd_opts, "no_half", False):
        return device, torch.float32
    if descriptor.supports_half:
        return device, torch.float16
    if descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


class GFPGANRestorer(SpandrelFaceRestorer):
    label = "GFPGAN"
    arch_id = "GFPGAN"
    folder_name = "GFPGAN"
    folder_flag = "--gfpgan-models-path"
    release_file = "GFPGANv1.4.pth"

    def _forward(self, model: Any, x: Any, w: float | None) -> Any:
        # fixed noise (the file's buffers): the same picture restores the same way every time
        return model(x, return_rgb=False, randomize_noise=False)[0]


class CodeFormerRestorer(SpandrelFaceRestorer):
    label = "CodeFormer"
    arch_id = "CodeFormer"
    folder_name = "Codeformer"
    folder_flag = "--codeformer-models-path"
    release_file = "codeformer-v0.1.0.pth"

    def restore(self, np_image: np.ndarray, w: float | None = None) -> np.ndarray:
        if w is None:
            w = float(shared.opts.data.get("code_former_weight", 0.5))
        if not 0.0 <= w <= 1.0:
            raise FaceRestorationError(f"CodeFormer weight {w:g} is outside 0..1")
        return super().restore(np_image, w)

    def _forward(self, model: Any, x: Any, w: float | None) -> Any:
        # weight: 0 = the most change (pure codebook), 1 = the most faithful to the input
        return model(x, weight=0.5 if w is None else w, adain=True)[0]


BUILTIN: list[type[SpandrelFaceRestorer]] = [CodeFormerRestorer, GFPGANRestorer]
_instances: dict[tuple[type, str], SpandrelFaceRestorer] = {}  # a refresh keeps an already loaded model


def restorers_on_disk() -> list[SpandrelFaceRestorer]:
    found = []
    for cls in BUILTIN:
        path = cls.model_file()
        if path is None:
            continue
        key = (cls, os.path.abspath(path))
        found.append(_instances.setdefault(key, cls(path)))
    return found


def missing_message(name: str) -> str | None:
    """What to do when a built-in restorer is asked for and absent; None for names that are not built in."""
    for cls in BUILTIN:
        if cls.label == name:
            return cls.missing_message()
    return None
