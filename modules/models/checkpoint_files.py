"""Reading model files from disk, treating every file as hostile until checked.

`.safetensors` is the first-class format: its header is validated before any tensor is touched. Pickled formats
(`.ckpt`, `.pt`, `.pth`, `.bin`) go only through `torch.load(weights_only=True)`, whose unpickler refuses any
global that is not on an allow-list; a file that wants to run code is refused with a message, never executed.
That loader had known bypasses before torch 2.6, so on an older torch pickled files are refused outright.

Nothing a file claims is believed before it is checked against the file itself: a .safetensors header's size,
nesting, shapes and offsets; a zip checkpoint's entry count, names and unpacked sizes (from its central directory,
before torch inflates anything). Every failure is a `ModelFileError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit; larger means a corrupt or hostile file
# A real header nests 3 deep (header -> tensor entry -> shape list); json.loads recurses once per level, so a
# header nested thousands deep would exhaust the stack before it could be refused. Checked on the raw bytes.
MAX_HEADER_DEPTH = 8
MAX_TENSOR_DIMS = 32
MAX_TENSOR_DIM = 2**40  # far beyond any real tensor; stops a zero-sized tensor from claiming an absurd shape
# Bits per element of every dtype the format defines (sub-byte types pack several elements into a byte).
_SAFETENSORS_DTYPE_BITS = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U8": 8, "U16": 16,
    "U32": 32, "U64": 64, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6,
    "F6_E3M2": 6, "C64": 64,
}

# Pickled files: torch.load(weights_only=True) is only trusted from this torch on (CVE-2025-32434 and others).
TORCH_PICKLE_FLOOR = (2, 6)

# Zip checkpoints. torch writes every entry uncompressed (ZIP_STORED), one per tensor storage: a few thousand
# for the largest real checkpoints. Anything compressed hard, or unpacking to far more than the file holds, is
# a zip bomb: refused from the central directory before torch inflates a byte.
MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_NAME = 1024
MAX_DEFLATE_RATIO = 10
MAX_UNPACKED_TOTAL = 64 * 1024**3
UNPACKED_SLACK = 64 * 1024**2


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


# --- the torch floor for pickled files ---------------------------------------------------------------------


def installed_torch_version() -> str:
    return str(torch.__version__)


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version string ("2.6.0+cu124" -> (2, 6, 0)); () when it cannot be read."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        pass
    else:
        try:
            return Version(version).release
        except InvalidVersion:
            pass
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def torch_loads_pickles_safely(version: str | None = None) -> bool:
    """Whether this torch's weights_only loader has no known bypass (2.6 or newer)."""
    return version_tuple(installed_torch_version() if version is None else version) >= TORCH_PICKLE_FLOOR


def require_safe_torch(path: str) -> None:
    if not torch_loads_pickles_safely():
        raise ModelFileError(
            path,
            f"a pickled model file needs torch 2.6 or newer (installed: {installed_torch_version()}): an older "
            "torch can be made to run code by a crafted one. Upgrade torch, or use a .safetensors version.",
        )


# --- .safetensors headers ---------------------------------------------------------------------------------

_QUOTE = ord('"')
_SCAN_CHUNK = 4 * 1024 * 1024


def json_nesting_depth(raw: bytes) -> int:
    """How deep JSON text nests arrays and objects (brackets inside strings not counted), from the raw bytes.

    Vectorised, in chunks: a 100 MB header costs a few chunk-sized buffers and no Python loop per byte, and
    text that is not JSON at all gets an answer too (json.loads then says what is wrong with it).
    """
    import numpy

    # Escaped backslashes, then escaped quotes, go first (left to right, as a JSON reader pairs them): after
    # that every quote left opens or closes a string.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    step = numpy.zeros(256, dtype=numpy.int32)
    step[list(b"[{")] = 1
    step[list(b"]}")] = -1
    codes = numpy.frombuffer(text, dtype=numpy.uint8)
    deepest = depth = parity = 0
    for start in range(0, len(codes), _SCAN_CHUNK):
        part = codes[start:start + _SCAN_CHUNK]
        quotes = numpy.cumsum(part == _QUOTE, dtype=numpy.uint8)  # wraps at 256; only its parity matters
        steps = step[part]
        steps = steps[(((quotes + parity) & 1) == 0) & (steps != 0)]
        if steps.size:
            running = numpy.cumsum(steps) + depth
            deepest, depth = max(deepest, int(running.max())), int(running[-1])
        parity = (parity + int(quotes[-1])) & 1
    return deepest


def _read_header_bytes(path: str) -> tuple[bytes, int]:
    """The raw JSON header and the file size, after checking the length prefix against the file."""
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
            return f.read(header_len), size
    except OSError as e:
        raise ModelFileError(path, f"cannot be read: {e.strerror or e}") from e


def _parse_header(path: str, raw: bytes) -> dict[str, Any]:
    if json_nesting_depth(raw) > MAX_HEADER_DEPTH:
        raise ModelFileError(
            path, f"not a valid .safetensors file: header nests more than {MAX_HEADER_DEPTH} levels deep (a real "
                  "one nests 3)"
        )
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(path, f"not a valid .safetensors file: header is not JSON ({e!s:.200})") from e
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a valid .safetensors file: header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ModelFileError(path, "not a valid .safetensors file: __metadata__ must map names to strings")
    return header


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_nbytes(path: str, name: str, entry: Any) -> int:
    """The byte size an entry's dtype and shape call for, after checking both."""
    bad = f"not a valid .safetensors file: tensor {name[:200]!r}"
    if not isinstance(entry, dict):
        raise ModelFileError(path, f"{bad} has a bad entry")
    bits = _SAFETENSORS_DTYPE_BITS.get(entry.get("dtype"))  # type: ignore[arg-type]
    if bits is None:
        raise ModelFileError(path, f"{bad} has an unknown dtype {str(entry.get('dtype'))[:40]!r}")
    shape = entry.get("shape")
    if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS
            and all(_is_count(d) and d <= MAX_TENSOR_DIM for d in shape)):
        raise ModelFileError(path, f"{bad} has an impossible shape {str(shape)[:100]} (dimensions must be whole "
                                   f"numbers from 0, at most {MAX_TENSOR_DIMS} of them)")
    numel = 1
    for d in shape:
        numel *= d
    if numel * bits % 8:
        raise ModelFileError(path, f"{bad}: {numel} elements of {entry['dtype']} do not fill whole bytes")
    return numel * bits // 8


def _check_layout(path: str, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """Tensors must tile the data exactly, as safetensors requires: no overlaps, no gaps, nothing left over."""
    position, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin < position:
            raise ModelFileError(path, f"not a valid .safetensors file: tensors {previous!r} and {name[:200]!r} overlap")
        if begin > position:
            raise ModelFileError(path, f"corrupt .safetensors file: {begin - position} unused bytes before tensor "
                                       f"{name[:200]!r}")
        position, previous = end, name[:200]
    if position != data_len:
        raise ModelFileError(path, f"corrupt .safetensors file: {data_len - position} bytes after the last tensor")


def validate_safetensors_header(path: str) -> dict[str, Any]:
    """Check a .safetensors header against the file and return it, without reading any tensor data."""
    raw, size = _read_header_bytes(path)
    header = _parse_header(path, raw)
    data_len = size - 8 - len(raw)
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        nbytes = _tensor_nbytes(path, name, entry)
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[0] <= offsets[1] <= data_len):
            raise ModelFileError(
                path, f"truncated or corrupt: tensor {name[:200]!r} lies outside the file's {data_len} bytes of data"
            )
        if offsets[1] - offsets[0] != nbytes:
            raise ModelFileError(
                path, f"not a valid .safetensors file: tensor {name[:200]!r} has {offsets[1] - offsets[0]} bytes of "
                      f"data but its dtype and shape need {nbytes}"
            )
        spans.append((offsets[0], offsets[1], name))
    _check_layout(path, spans, data_len)
    return header


# --- zip checkpoints: the central directory, read before torch inflates anything --------------------------

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_ZIP_LOCAL_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ZipEntry:
    name: str
    compress_type: int
    compress_size: int
    file_size: int


class _DamagedZip(Exception):
    pass


def _central_directory(f: IO[bytes], size: int) -> tuple[int, int, int]:
    """(entry count, offset, size) of the central directory, from the end record (zip64 when it says so)."""
    tail_len = min(size, _EOCD.size + 0xFFFF)  # the record, then at most a 64 KiB comment
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    pos = len(tail) - _EOCD.size
    if tail[pos:pos + 4] != b"PK\x05\x06":  # torch writes no comment; anything else may have one
        pos = tail.rfind(b"PK\x05\x06", 0, len(tail) - _EOCD.size + 1)
    if pos < 0:
        raise _DamagedZip("no end-of-archive record")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        eocd_at = size - tail_len + pos
        f.seek(max(0, eocd_at - _ZIP64_LOCATOR.size))
        locator = f.read(_ZIP64_LOCATOR.size)
        if len(locator) == _ZIP64_LOCATOR.size and locator[:4] == b"PK\x06\x07":
            f.seek(_ZIP64_LOCATOR.unpack(locator)[2])
            record = f.read(_ZIP64_EOCD.size)
            if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
                raise _DamagedZip("the zip64 end record is missing")
            count, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)[7:10]
    if cd_offset + cd_size > size:
        raise _DamagedZip("the central directory lies outside the file")
    return count, cd_offset, cd_size


def _zip64_sizes(extra: bytes, file_size: int, compress_size: int) -> tuple[int, int]:
    """Sizes too large for 32 bits are 0xFFFFFFFF in the entry and 64-bit in its zip64 extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = extra[pos + 4:pos + 4 + length]
            at = 0
            try:
                if file_size == 0xFFFFFFFF:
                    (file_size,) = struct.unpack_from("<Q", values, at)
                    at += 8
                if compress_size == 0xFFFFFFFF:
                    (compress_size,) = struct.unpack_from("<Q", values, at)
            except struct.error as e:
                raise _DamagedZip("a zip64 size field is cut short") from e
            break
        pos += 4 + length
    return file_size, compress_size


def _zip_entries(path: str, f: IO[bytes], cd_offset: int, cd_size: int, count: int) -> Iterator[ZipEntry]:
    """Each entry of the central directory in turn, read straight from the file (nothing is kept)."""
    f.seek(cd_offset)
    end = cd_offset + cd_size
    for _ in range(count):
        fixed = f.read(_CENTRAL_ENTRY.size)
        if len(fixed) < _CENTRAL_ENTRY.size or fixed[:4] != b"PK\x01\x02":
            raise _DamagedZip("the central directory is cut short")
        fields = _CENTRAL_ENTRY.unpack(fixed)
        flags, method, compress_size, file_size = fields[5], fields[6], fields[10], fields[11]
        name_len, extra_len, comment_len = fields[12:15]
        if name_len > MAX_ZIP_NAME:
            raise ModelFileError(path, f"refused: the archive has an entry name of {name_len} bytes (torch's are short)")
        raw_name = f.read(name_len)
        extra = f.read(extra_len)
        f.seek(comment_len, os.SEEK_CUR)
        if f.tell() > end:
            raise _DamagedZip("the central directory is cut short")
        file_size, compress_size = _zip64_sizes(extra, file_size, compress_size)
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        yield ZipEntry(name, method, compress_size, file_size)


def _escapes(name: str) -> bool:
    """An entry name that is absolute or climbs out of the archive ("../x", "/etc/x", "C:\\x")."""
    parts = re.split(r"[/\\]", name)
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name)) or ".." in parts or "\0" in name


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _check_zip_entries(path: str, size: int, entries: Iterator[ZipEntry]) -> None:
    limit = min(MAX_UNPACKED_TOTAL, max(4 * size, size + UNPACKED_SLACK))
    unpacked = packed = 0
    for entry in entries:
        shown = repr(entry.name[:100])
        if _escapes(entry.name):
            raise ModelFileError(path, f"refused: the archive has an entry {shown} that points outside it")
        if entry.compress_type == zipfile.ZIP_STORED:
            if entry.compress_size != entry.file_size:
                raise ModelFileError(path, f"truncated or corrupt checkpoint: entry {shown} has two different sizes")
        elif entry.file_size > MAX_DEFLATE_RATIO * max(entry.compress_size, 1):
            raise ModelFileError(
                path,
                f"refused: entry {shown} would inflate {entry.compress_size} bytes to {_gib(entry.file_size)} "
                "(a zip bomb?); PyTorch stores checkpoint data uncompressed",
            )
        unpacked += entry.file_size
        packed += entry.compress_size
        if packed > size:
            raise ModelFileError(path, "refused: the archive's entries claim more data than the file holds "
                                       "(overlapping entries, a zip bomb?)")
        if unpacked > limit:
            raise ModelFileError(path, f"refused: the archive would unpack to more than {_gib(limit)} from a "
                                       f"{_gib(size)} file (a zip bomb?)")


def check_zip_checkpoint(path: str) -> None:
    """Refuse a zip checkpoint whose central directory is damaged, oversized, escaping or a bomb.

    Reads only the directory (entry by entry, nothing kept), so a hostile file costs no memory to refuse.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            count, cd_offset, cd_size = _central_directory(f, size)
            if count > MAX_ZIP_ENTRIES:
                raise ModelFileError(path, f"refused: the archive has {count} entries (a real checkpoint has a few "
                                           f"thousand; at most {MAX_ZIP_ENTRIES} are accepted)")
            _check_zip_entries(path, size, _zip_entries(path, f, cd_offset, cd_size, count))
    except _DamagedZip as e:
        raise ModelFileError(path, f"truncated or corrupt checkpoint: the zip archive is damaged ({e})") from e
    except OSError as e:
        raise ModelFileError(path, f"cannot be read: {e.strerror or e}") from e


def check_pickle_file(path: str) -> bool:
    """Everything about a pickled file that can be refused without unpickling it: the torch floor, the kind of
    file, and (for the zip format) its directory. Legacy (pre-1.6) files are a bare pickle stream whose tensor
    data follows uncompressed; torch checks each storage's size against the bytes in the file before filling it,
    so they cannot unpack to more than the file holds and go to the restricted loader as they are.
    Returns whether the file is a zip checkpoint (only those can be memory-mapped)."""
    require_safe_torch(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(path, f"cannot be read: {e.strerror or e}") from e
    if magic == _ZIP_LOCAL_MAGIC:  # how torch.load itself tells the two formats apart
        check_zip_checkpoint(path)
        return True
    if len(magic) < 2 or magic[0] != 0x80:
        raise ModelFileError(path, "not a PyTorch checkpoint (neither a zip archive nor a pickle stream)")
    return False


TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
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
        name: torch.empty(entry["shape"], dtype=TORCH_DTYPES.get(entry["dtype"], torch.float32), device="meta")
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


def _load_pickle(path: str, device: str, mmap: bool = False) -> dict[str, Any]:
    is_zip = check_pickle_file(path)
    try:
        with torch.serialization.safe_globals(_allow_listed_globals()):
            return torch.load(path, map_location=device, weights_only=True, mmap=(mmap and is_zip) or None)
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


def read_pickle(path: str, device: str = "cpu", mmap: bool = False) -> Any:
    """What a pickled model file holds, through the restricted loader, nesting kept (IP-Adapter files nest their
    weights two levels deep). With `mmap`, a zip checkpoint's tensor data is mapped, not read: listing its keys
    and shapes then costs almost nothing however large the file is."""
    return _load_pickle(path, device, mmap=mmap)


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
    # Trainers of upscalers and face models (BasicSR: RealESRGAN, GFPGAN, CodeFormer) nest the weights one level
    # down; the EMA copy wins, as spandrel reads them. Only a file with no tensor at the top is unwrapped.
    if isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for nested in ("params_ema", "params", "model", "net"):
            if isinstance(state.get(nested), Mapping):
                state = state[nested]
                break
    if not isinstance(state, Mapping):
        raise ModelFileError(path, f"does not hold a dictionary of weights (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(path, "holds no weight tensors")
    if "global_step" in state and isinstance(state["global_step"], int):
        tensors["global_step"] = torch.tensor(state["global_step"])
    return tensors
