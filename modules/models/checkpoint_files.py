"""Reading model files from disk, treating every file as hostile until checked.

`.safetensors` is the first-class format: its header is validated before any tensor is touched. Pickled formats
(`.ckpt`, `.pt`, `.pth`, `.bin`) go only through `torch.load(weights_only=True)`, whose unpickler refuses any
global that is not on an allow-list; a file that wants to run code is refused with a message, never executed.
Every failure is a `ModelFileError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit; larger means a corrupt or hostile file
_SAFETENSORS_DTYPES = {
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
}


class ModelFileError(Exception):
    """A model file could not be used. The message names the file (never its full path) and the reason."""

    def __init__(self, path: str, reason: str, name: str | None = None):
        self.path = path
        self.reason = reason
        # `name`: how the user knows the file (a checkpoint's title); the message reaches API clients and the page
        self.name = name or os.path.basename(path)
        super().__init__(f"{self.name}: {reason}")


class ModelFileMissingError(ModelFileError):
    """A model that was listed but whose file is gone (deleted or moved since the list was made)."""


class _InertPickleObject:
    """Stands in for harmless training-time objects some .ckpt files carry (Lightning callbacks, ...).

    The restricted unpickler builds one of these instead of importing the real class; it does nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# Globals that real Stable Diffusion .ckpt files reference and that are safe to build as inert stand-ins.
_INERT_PICKLE_GLOBALS = [
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
]


def _allow_listed_globals() -> list:
    import numpy

    safe: list = [(type(f"Inert_{i}", (_InertPickleObject,), {}), name) for i, name in enumerate(_INERT_PICKLE_GLOBALS)]
    # numpy scalars and dtypes appear in training metadata (e.g. a float64 epoch counter); they cannot run code.
    scalar = numpy._core.multiarray.scalar
    safe += [numpy.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    safe += [numpy.dtypes.Float64DType, numpy.dtypes.Int64DType, numpy.dtypes.Float32DType]
    return safe


def validate_safetensors_header(path: str) -> dict[str, Any]:
    """Check a .safetensors header against the file and return it, without reading any tensor data."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelFileError(path, f"not a valid .safetensors file: only {size} bytes long (empty or truncated)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > size:
                raise ModelFileError(
                    path,
                    f"not a valid .safetensors file: header claims {header_len} bytes but the file has {size} "
                    "(truncated, corrupt, or not a safetensors file)",
                )
            raw = f.read(header_len)
    except OSError as e:
        raise ModelFileError(path, f"cannot be read: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not a valid .safetensors file: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a valid .safetensors file: header is not a JSON object")
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _SAFETENSORS_DTYPES:
            raise ModelFileError(path, f"not a valid .safetensors file: tensor {name!r} has a bad entry")
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise ModelFileError(
                path, f"truncated or corrupt: tensor {name!r} lies outside the file's {data_len} bytes of data"
            )
    return header


_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


def read_state_dict_shapes(path: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a .safetensors file as data-less meta tensors (names, shapes, dtypes) from its header.

    Enough to detect, plan and check a whole load without reading the data. None for formats without a header.
    """
    if not path.lower().endswith(SAFETENSORS_EXTENSIONS) or not os.path.isfile(path):
        return None
    header = validate_safetensors_header(path)
    return {
        name: torch.empty(entry["shape"], dtype=_TORCH_DTYPES.get(entry["dtype"], torch.float32), device="meta")
        for name, entry in header.items()
        if name != "__metadata__"
    }


def read_safetensors_metadata(path: str) -> dict[str, str]:
    meta = validate_safetensors_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _load_safetensors(path: str, device: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    validate_safetensors_header(path)
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ModelFileError(path, f"corrupt .safetensors data: {e}") from e


def _load_pickle(path: str, device: str) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):
        # Legacy (pre-1.6) torch files are a bare pickle stream; anything else is not a torch file at all.
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":
            raise ModelFileError(path, "truncated or corrupt checkpoint: the zip archive is damaged")
        if len(magic) < 2 or magic[0] != 0x80:
            raise ModelFileError(path, "not a PyTorch checkpoint (neither a zip archive nor a pickle stream)")
    try:
        with torch.serialization.safe_globals(_allow_listed_globals()):
            return torch.load(path, map_location=device, weights_only=True, mmap=None)
    except pickle.UnpicklingError as e:
        detail = str(e).split("\n")
        culprit = next((line.strip() for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0])
        raise ModelFileError(
            path,
            "refused: this pickled file asks to build objects outside the safe allow-list, so it could run code "
            f"when loaded ({culprit[:200]}). Use a .safetensors version of the model.",
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, struct.error) as e:
        raise ModelFileError(path, f"truncated or corrupt checkpoint: {str(e).splitlines()[0][:300]}") from e


def read_state_dict(path: str, device: str = "cpu") -> dict[str, Any]:
    """Load the tensors of a model file (safetensors or restricted pickle) as a flat dict."""
    if not os.path.isfile(path):
        raise ModelFileError(path, "file not found")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_EXTENSIONS):
        state = _load_safetensors(path, device)
    elif lower.endswith(PICKLE_EXTENSIONS):
        state = _load_pickle(path, device)
    else:
        raise ModelFileError(path, f"unsupported file type {os.path.splitext(path)[1]!r}; use .safetensors or .ckpt")
    return unwrap_state_dict(path, state)


def unwrap_state_dict(path: str, state: Any) -> dict[str, Any]:
    """Training checkpoints nest weights under "state_dict"; flatten that and keep only tensors and plain values."""
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        extra = {k: v for k, v in state.items() if k in ("global_step",)}
        state = dict(state["state_dict"], **extra)
    if not isinstance(state, Mapping):
        raise ModelFileError(path, f"does not hold a dictionary of weights (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(path, "holds no weight tensors")
    if "global_step" in state and isinstance(state["global_step"], int):
        tensors["global_step"] = torch.tensor(state["global_step"])
    return tensors
