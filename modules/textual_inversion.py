"""Textual-inversion embeddings, as A1111 finds and uses them (`modules/textual_inversion/textual_inversion.py`).

Files in the embeddings folder (`--embeddings-dir`, searched recursively; hidden files and folders are left out):
`.pt` / `.bin` (pickled: only through the restricted loader of `checkpoint_files`), `.safetensors`, and
`.png` / `.webp` (/ `.jxl` / `.avif` where Pillow reads them) holding an embedding in a `sd-ti-embedding` text
chunk or in their pixels (see `textual_inversion_image`). An embedding's name is its file name without the
extension (an image may carry its own "name"), case kept as written.

Accepted layouts: `{"string_to_param": {"*": (n, width)}}` (A1111, also an old torch ParameterDict),
`{"clip_l": (n, 768), "clip_g": (n, 1280)}` (SDXL), `{"emb_params": (n, width)}` (kohya), and a dict holding one
tensor (diffusers' `{"<token>": (width,) or (n, width)}`). Every value is checked: floating point, at most
MAX_VECTORS vectors (one 75-token chunk must hold them), a sane width, no NaN or infinity. A file that fails
is skipped with a reason (`skipped_reasons()`), never raised.

Which embeddings a model can use depends only on its family and text-encoder widths: a single-tensor embedding
needs one text encoder of its width; an SDXL one needs an SDXL model (the refiner takes its clip_g part). The
database keeps every parsed file and works out that fit per model (`lookup_for`), so the refiner, a hires
checkpoint and the main model each get the right set. `word_embeddings` / `skipped_embeddings` (A1111's names)
follow `shared.sd_model`; with no model loaded every embedding is in `skipped_embeddings`, reason
"no model loaded". Files are read again when they change (path, size or mtime), never otherwise.

In a prompt, the token ids of an embedding's name (longest match first, as A1111) become placeholder ids whose
rows are replaced after the token-embedding layer: `token_replacements` sets them for one encoder call, and a
forward hook on the encoder's `embeddings.token_embedding` (installed once per encoder) applies them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from modules import hashes, prompt_parser, shared
from modules import textual_inversion_image as image_embedding
from modules.models import checkpoint_files

log = logging.getLogger(__name__)

# A1111's module paths (a package there): `from modules.textual_inversion import textual_inversion` and
# `import modules.textual_inversion.image_embedding` keep working for extensions.
textual_inversion = sys.modules[__name__]
sys.modules.setdefault(__name__ + ".textual_inversion", textual_inversion)
sys.modules.setdefault(__name__ + ".image_embedding", image_embedding)

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")
IMAGE_EXTENSIONS = (".png", ".webp", ".jxl", ".avif")
MAX_FILE_BYTES = 32 * 1024 * 1024  # a real embedding is a few KB (75 SDXL vectors: 600 KB)
MAX_VECTORS = prompt_parser.CHUNK_LENGTH  # a name's vectors stay in one chunk, so no more than it holds
MAX_WIDTH = 4096  # real widths: 768 (SD1, SDXL clip_l), 1024 (SD2), 1280 (SDXL clip_g)
MAX_NAME_CHARS = 200
MAX_TEXT_FIELD = 500  # sd_checkpoint, sd_checkpoint_name
MAX_FILES = 20_000
SHORTHASH_LENGTH = 12  # A1111: Embedding.set_hash keeps hash[0:12]; that is what "TI hashes" shows

# The part of an SDXL embedding each text encoder of a family takes; one key per encoder, in order.
TEXT_ENCODER_KEYS = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g"), "sdxl_refiner": ("clip_g",)}
SDXL_FAMILIES = ("sdxl", "sdxl_refiner")
FAMILY_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "the SDXL refiner"}
_WIDTH_FITS = {768: "SD1", 1024: "SD2", 1280: "the SDXL refiner"}
NO_MODEL_REASON = "no model loaded: which model an embedding fits is checked once one is"


class EmbeddingFileError(Exception):
    """A file in the embeddings folder that holds no usable embedding; the message is the reason shown."""


# ---------------------------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------------------------


class Embedding:
    """One embedding: `vec` is a (vectors, width) float32 tensor, or {"clip_l": ..., "clip_g": ...} for SDXL."""

    def __init__(self, vec: torch.Tensor | dict[str, torch.Tensor], name: str, step: int | None = None):
        self.vec = vec
        self.name = name
        self.step = step
        self.shape: int | None = None  # A1111: the width (SDXL: clip_l + clip_g widths)
        self.vectors = 0
        self.cached_checksum: str | None = None
        self.sd_checkpoint: str | None = None
        self.sd_checkpoint_name: str | None = None
        self.optimizer_state_dict: Any = None
        self.filename: str | None = None
        self._hash: str | None = None
        self._shorthash: str | None = None

    # The sha256 is worked out on first use (infotext), through the shared hash cache, not for every file at load.
    @property
    def hash(self) -> str:
        if self._hash is None and self.filename:
            try:
                self._hash = hashes.sha256(self.filename, "textual_inversion/" + self.name)
            except OSError as e:  # moved or deleted since it was read: no hash rather than a failed generation
                log.warning("cannot hash embedding %s: %s", self.filename, e)
        return self._hash or ""

    @hash.setter
    def hash(self, value: str | None) -> None:
        self._hash = value

    @property
    def shorthash(self) -> str:
        return self._shorthash if self._shorthash is not None else self.hash[:SHORTHASH_LENGTH]

    @shorthash.setter
    def shorthash(self, value: str | None) -> None:
        self._shorthash = value

    def set_hash(self, v: str) -> None:
        self._hash = v
        self._shorthash = v[:SHORTHASH_LENGTH]

    def vectors_for(self, key: str) -> torch.Tensor | None:
        """The vectors one text encoder takes: `key` picks the SDXL part; a plain embedding has one set."""
        if isinstance(self.vec, Mapping):
            return self.vec.get(key)
        return self.vec

    def checksum(self) -> str:
        """A1111's 4-hex-digit checksum of the vectors (shown by its training UI)."""
        if self.cached_checksum is None:
            parts = self.vec.values() if isinstance(self.vec, Mapping) else [self.vec]
            r = 0
            for v in torch.cat([p.detach().reshape(-1) for p in parts]) * 100:
                r = (r * 281 ^ int(v) * 997) & 0xFFFFFFFF
            self.cached_checksum = f"{r & 0xffff:04x}"
        return self.cached_checksum

    def save(self, filename: str) -> None:
        """A1111's .pt layout (torch.save of plain containers, loadable with weights_only)."""
        torch.save({
            "string_to_token": {"*": 265},
            "string_to_param": {"*": self.vec} if isinstance(self.vec, torch.Tensor) else dict(self.vec),
            "name": self.name,
            "step": self.step,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
        }, filename)

    def __repr__(self) -> str:
        return f"Embedding({self.name!r}, vectors={self.vectors}, shape={self.shape})"


# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------


def _as_vectors(value: Any, what: str) -> torch.Tensor:
    """A checked (vectors, width) float32 CPU copy of a tensor from a file."""
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{what} is a {type(value).__name__}, not a tensor")
    if value.layout != torch.strided or value.device.type == "meta" or value.is_quantized:
        raise EmbeddingFileError(f"{what} is not a plain dense tensor")
    if not value.is_floating_point():
        raise EmbeddingFileError(f"{what} holds {str(value.dtype).removeprefix('torch.')} values, not floats")
    if value.dim() == 1:
        value = value.unsqueeze(0)  # diffusers saves one vector as a 1-D tensor
    if value.dim() != 2:
        raise EmbeddingFileError(f"{what} has shape {tuple(value.shape)}; an embedding is (vectors, width)")
    count, width = value.shape
    if not 1 <= count <= MAX_VECTORS:
        raise EmbeddingFileError(f"{what} has {count} vectors; one prompt chunk holds 1 to {MAX_VECTORS}")
    if not 1 <= width <= MAX_WIDTH:
        raise EmbeddingFileError(f"{what} has vectors of width {width}; no text encoder takes that")
    vec = value.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
    if not bool(torch.isfinite(vec).all()):
        raise EmbeddingFileError(f"{what} holds NaN or infinite values")
    return vec


def _parse_vectors(data: Mapping[str, Any]) -> tuple[torch.Tensor | dict[str, torch.Tensor], int, int]:
    """(vec, shape, vectors) of a file's data, in A1111's order of formats."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # a torch ParameterDict from the original TI code
        if not isinstance(params, Mapping):
            raise EmbeddingFileError(f"string_to_param is a {type(params).__name__}, not a dictionary")
        if len(params) != 1:
            raise EmbeddingFileError(f"string_to_param holds {len(params)} terms; an embedding file has one")
        vec = _as_vectors(next(iter(params.values())), "string_to_param")
        return vec, int(vec.shape[1]), int(vec.shape[0])
    if "clip_l" in data and "clip_g" in data:
        clip_l, clip_g = _as_vectors(data["clip_l"], "clip_l"), _as_vectors(data["clip_g"], "clip_g")
        if clip_l.shape[0] != clip_g.shape[0]:
            raise EmbeddingFileError(f"clip_l has {clip_l.shape[0]} vectors but clip_g has {clip_g.shape[0]}")
        return {"clip_l": clip_l, "clip_g": clip_g}, int(clip_l.shape[1] + clip_g.shape[1]), int(clip_g.shape[0])
    if "emb_params" in data:
        vec = _as_vectors(data["emb_params"], "emb_params")
        return vec, int(vec.shape[1]), int(vec.shape[0])
    if len(data) == 1:
        key, value = next(iter(data.items()))
        vec = _as_vectors(value, f"the tensor {str(key)[:60]!r}")
        return vec, int(vec.shape[1]), int(vec.shape[0])
    raise EmbeddingFileError(
        f"not an embedding: {len(data)} entries and none of string_to_param, clip_l + clip_g, emb_params"
        if data else "the file holds an empty dictionary"
    )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_TEXT_FIELD else None


def _valid_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS and value.isprintable() and bool(value.strip())


def create_embedding_from_data(data: Any, name: str, filename: str = "unknown embedding file",
                               filepath: str | None = None) -> Embedding:
    """An Embedding from a file's loaded data (A1111's function of that name); EmbeddingFileError if unusable."""
    if not isinstance(data, Mapping):
        raise EmbeddingFileError(f"the file holds a {type(data).__name__}, not a dictionary")
    vec, shape, vectors = _parse_vectors(data)
    embedding = Embedding(vec, name, step=_int_or_none(data.get("step")))
    embedding.sd_checkpoint = _text_or_none(data.get("sd_checkpoint"))
    embedding.sd_checkpoint_name = _text_or_none(data.get("sd_checkpoint_name"))
    embedding.shape, embedding.vectors = shape, vectors
    embedding.filename = filepath
    return embedding


def _read_pickle(path: str) -> Any:
    # The original textual-inversion code saved string_to_param as a ParameterDict: a plain container (its
    # unpickling only fills __dict__), allowed next to the loader's own list.
    with torch.serialization.safe_globals([torch.nn.ParameterDict]):
        return checkpoint_files._load_pickle(path, "cpu")


def _is_preview_of_sibling(path: str) -> bool:
    """`x.png` next to `x.pt`: the picture the extra-networks page shows for x, not an embedding of its own."""
    stem = os.path.splitext(path)[0]
    return any(os.path.isfile(stem + ext) for ext in EMBEDDING_EXTENSIONS)


def _read_image(path: str) -> dict[str, Any] | None:
    """The embedding data of an image; None for a plain picture (A1111 ignores those)."""
    from PIL import Image

    with Image.open(path) as image:
        image_embedding.check_image_size(image)
        text = getattr(image, "text", None)  # PNG text chunks (reading them loads the image)
        if isinstance(text, Mapping) and image_embedding.TEXT_CHUNK in text:
            return image_embedding.embedding_from_b64(text[image_embedding.TEXT_CHUNK])
        try:
            return image_embedding.extract_image_data_embed(image)
        except image_embedding.ImageEmbeddingError:
            if _is_preview_of_sibling(path):
                return None
            raise


def read_embedding_file(path: str) -> Embedding | None:
    """The embedding in a file; None when the file is not meant as one (empty, a preview picture, other kind)."""
    filename = os.path.basename(path)
    name, ext = os.path.splitext(filename)
    ext = ext.lower()
    if ext in IMAGE_EXTENSIONS and os.path.splitext(name)[1].lower() == ".preview":
        return None
    size = os.path.getsize(path)
    if size == 0 or ext not in EMBEDDING_EXTENSIONS + IMAGE_EXTENSIONS:
        return None
    if size > MAX_FILE_BYTES:
        raise EmbeddingFileError(f"{size / 2**20:.1f} MiB is far larger than an embedding (at most "
                                 f"{MAX_FILE_BYTES // 2**20} MiB are read)")
    if ext in IMAGE_EXTENSIONS:
        data = _read_image(path)
        if data is None:
            return None
        if _valid_name(data.get("name")):
            name = data["name"]
    elif ext == ".safetensors":
        data = checkpoint_files.read_state_dict(path)
    else:
        data = _read_pickle(path)
    return create_embedding_from_data(data, name, filename=filename, filepath=path)


def _load_file(path: str) -> tuple[Embedding | None, str | None]:
    """(embedding, None), (None, reason), or (None, None) for a file that is not an embedding. Never raises."""
    from PIL import Image

    try:
        return read_embedding_file(path), None
    except (EmbeddingFileError, image_embedding.ImageEmbeddingError) as e:
        return None, str(e)
    except checkpoint_files.ModelFileError as e:
        return None, e.reason
    except Image.DecompressionBombError as e:
        return None, f"refused: {e!s:.300}"
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # SyntaxError: Pillow's "not a PNG file"
        return None, f"cannot be read: {e!s:.300}"
    except Exception as e:  # a hostile file must never stop the scan; the reason says what happened
        log.exception("unexpected error reading embedding %s", path)
        return None, f"cannot be read: {type(e).__name__}: {e!s:.300}"


# ---------------------------------------------------------------------------------------------------------------------
# Which embeddings a model can use
# ---------------------------------------------------------------------------------------------------------------------


def model_encoder_widths(model: Any) -> tuple[tuple[str, int], ...]:
    """(SDXL part key, hidden width) of each text encoder of a model, in order."""
    family = model.spec.family
    keys = TEXT_ENCODER_KEYS.get(family, ("clip_g",) * len(model.text_encoders))
    return tuple((key, int(encoder.get_input_embeddings().weight.shape[1]))
                 for key, encoder in zip(keys, model.text_encoders, strict=False))


def _width_label(width: int) -> str:
    return _WIDTH_FITS.get(width, "no known model")


def fit_reason(embedding: Embedding, family: str, widths: Sequence[tuple[str, int]]) -> str | None:
    """Why the embedding cannot be used with a model of this family and encoder widths; None if it can."""
    label = FAMILY_LABELS.get(family, family)
    if isinstance(embedding.vec, Mapping):
        parts = ", ".join(f"{key} {vec.shape[1]}" for key, vec in embedding.vec.items())
        if family not in SDXL_FAMILIES:
            return f"an SDXL embedding ({parts}); the loaded model is {label}"
        for key, width in widths:
            part = embedding.vec.get(key)
            if part is None or part.shape[1] != width:
                return f"an SDXL embedding ({parts}); {label} needs {key} vectors of width {width}"
        return None
    width = int(embedding.vec.shape[1])
    if len(widths) != 1:
        needs = " and ".join(f"{key} ({w})" for key, w in widths)
        return f"width {width} fits {_width_label(width)}, the loaded model is {label} (it needs {needs} vectors)"
    if width != widths[0][1]:
        return f"width {width} fits {_width_label(width)}, the loaded model is {label} (width {widths[0][1]})"
    return None


def _name_ids(tokenizer: Any, name: str) -> list[int]:
    return list(tokenizer(name, add_special_tokens=False, truncation=False).input_ids)


@dataclass
class EmbeddingLookup:
    """The embeddings one model can use, and A1111's lookup of their names' token ids (longest first)."""

    word_embeddings: dict[str, Embedding] = field(default_factory=dict)
    skipped_embeddings: dict[str, Embedding] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = field(default_factory=dict)

    def add(self, ids: list[int], embedding: Embedding) -> None:
        matches = self.ids_lookup.setdefault(ids[0], [])
        matches.append((ids, embedding))
        matches.sort(key=lambda match: len(match[0]), reverse=True)  # stable: the first registered wins a tie

    def find_embedding_at_position(self, tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int | None]:
        for ids, embedding in self.ids_lookup.get(tokens[offset], ()):
            if list(tokens[offset:offset + len(ids)]) == ids:
                return embedding, len(ids)
        return None, None

    def split_tokens(self, tokens: Sequence[int]) -> list[int | Embedding]:
        """The token ids with every embedding name replaced by its Embedding, scanning left to right."""
        if not self.ids_lookup:
            return list(tokens)
        out: list[int | Embedding] = []
        offset = 0
        while offset < len(tokens):
            embedding, length = self.find_embedding_at_position(tokens, offset)
            if embedding is None:
                out.append(tokens[offset])
                offset += 1
            else:
                out.append(embedding)
                offset += length
        return out


def _reason_key(reasons: Mapping[str, str], name: str, rel: str) -> str:
    return name if name not in reasons else rel


def build_lookup(results: Iterable[_FileResult], model: Any,
                 extra: Mapping[str, Embedding] | None = None) -> EmbeddingLookup:
    """Sort the read files into what `model` can use (the first file of a name wins) and what it cannot.
    `extra` (registered without a file) comes first: as in A1111, registering a name replaces the file's."""
    lookup = EmbeddingLookup()
    family = model.spec.family
    widths = model_encoder_widths(model)
    tokenizer = model.tokenizers[0]
    entries = [(f"(registered) {name}", emb, None, name) for name, emb in (extra or {}).items()]
    entries += [(r.rel, r.embedding, r.reason, r.name) for r in results]
    used_by: dict[str, str] = {}  # name -> the file that provides it
    for rel, embedding, reason, name in entries:
        if embedding is None:
            lookup.reasons[_reason_key(lookup.reasons, name, rel)] = reason or "not an embedding"
            continue
        why = fit_reason(embedding, family, widths)
        if why is None and name in lookup.word_embeddings:
            why = f"{used_by[name]} already provides the name {name!r}"
        ids = _name_ids(tokenizer, name) if why is None else []
        if why is None and not ids:
            why = "its name has no tokens, so no prompt can use it"
        if why is None:
            used_by[name] = rel
            lookup.word_embeddings[name] = embedding
            lookup.add(ids, embedding)
        else:
            lookup.skipped_embeddings.setdefault(name, embedding)
            lookup.reasons[_reason_key(lookup.reasons, name, rel)] = why
    # A1111 lists them by name, ignoring case
    lookup.word_embeddings = dict(sorted(lookup.word_embeddings.items(), key=lambda item: item[0].lower()))
    return lookup


def _no_model_lookup(results: Iterable[_FileResult], extra: Mapping[str, Embedding]) -> EmbeddingLookup:
    """With no model, nothing can be checked: every embedding is skipped, with NO_MODEL_REASON."""
    lookup = EmbeddingLookup()
    for result in results:
        if result.embedding is None:
            lookup.reasons[_reason_key(lookup.reasons, result.name, result.rel)] = result.reason or "not an embedding"
        else:
            lookup.skipped_embeddings.setdefault(result.embedding.name, result.embedding)
            lookup.reasons.setdefault(result.embedding.name, NO_MODEL_REASON)
    for name, embedding in dict(extra).items():
        lookup.skipped_embeddings.setdefault(name, embedding)
        lookup.reasons.setdefault(name, NO_MODEL_REASON)
    return lookup


# ---------------------------------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _FileResult:
    path: str
    rel: str  # shown in reasons: the path below its embeddings folder
    stamp: tuple[int, int]  # (size, mtime_ns): the file is read again when either changes
    embedding: Embedding | None
    reason: str | None  # why it holds no usable embedding; both None: not an embedding at all (ignored)

    @property
    def name(self) -> str:
        return self.embedding.name if self.embedding else os.path.splitext(os.path.basename(self.path))[0]


class DirWithTextualInversionEmbeddings:
    """A1111's record of one embeddings folder (kept for extensions that add folders)."""

    def __init__(self, path: str):
        self.path = path
        self.mtime: float | None = None

    def has_changed(self) -> bool:
        if not os.path.isdir(self.path):
            return False
        return self.mtime is None or os.path.getmtime(self.path) > self.mtime

    def update(self) -> None:
        if os.path.isdir(self.path):
            self.mtime = os.path.getmtime(self.path)


def _model_key(model: Any) -> tuple[Any, ...]:
    # The fit depends on family and widths; the lookup also on the tokenizer (one shared object per kind)
    return model.spec.family, model_encoder_widths(model), id(model.tokenizers[0])


class EmbeddingDatabase:
    """All embeddings in the embeddings folders; A1111's attribute and method names."""

    def __init__(self) -> None:
        self.ids_lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
        self.word_embeddings: dict[str, Embedding] = {}
        self.skipped_embeddings: dict[str, Embedding] = {}
        self.expected_shape = -1
        self.embedding_dirs: dict[str, DirWithTextualInversionEmbeddings] = {}
        self.previously_displayed_embeddings: tuple = ()
        self._lock = threading.RLock()
        self._results: dict[str, _FileResult] = {}  # path -> what reading it gave
        self._listing: tuple | None = None  # (path, stamp) of every file at the last scan
        self._generation = 0  # counts changes of the file set, so lookups made before are rebuilt
        self._lookups: dict[tuple[Any, ...], tuple[int, EmbeddingLookup]] = {}
        self._registered: dict[str, Embedding] = {}  # register_embedding() without a file
        self._reasons: dict[str, str] = {}

    # --- folders --------------------------------------------------------------------------------------------------

    def add_embedding_dir(self, path: str) -> None:
        self.embedding_dirs[path] = DirWithTextualInversionEmbeddings(path)

    def clear_embedding_dirs(self) -> None:
        self.embedding_dirs.clear()

    def dirs(self) -> list[str]:
        """`--embeddings-dir` (read at call time) and any added folder, each once."""
        configured = getattr(shared.cmd_opts, "embeddings_dir", None)
        found: dict[str, str] = {}
        for path in ([configured] if configured else []) + list(self.embedding_dirs):
            found.setdefault(os.path.realpath(path), path)
        return list(found.values())

    def _scan(self) -> list[tuple[str, str, tuple[int, int]]]:
        """(path, path below its folder, (size, mtime_ns)) of every candidate file, in a stable order."""
        files: list[tuple[str, str, tuple[int, int]]] = []
        seen_dirs: set[str] = set()
        for top in self.dirs():
            if not os.path.isdir(top):
                continue
            for root, dirnames, filenames in os.walk(top, followlinks=True):
                real = os.path.realpath(root)
                if real in seen_dirs:  # a symlink loop, or a folder reached twice
                    dirnames[:] = []
                    continue
                seen_dirs.add(real)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    if filename.startswith(".") or not filename.lower().endswith(EMBEDDING_EXTENSIONS + IMAGE_EXTENSIONS):
                        continue
                    path = os.path.join(root, filename)
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    files.append((path, os.path.relpath(path, top).replace(os.sep, "/"), (st.st_size, st.st_mtime_ns)))
                    if len(files) >= MAX_FILES:
                        log.warning("more than %d files in the embeddings folders; the rest are not read", MAX_FILES)
                        return files
        return files

    def _refresh(self, force: bool) -> None:
        """Read new and changed files (every file with `force`)."""
        files = self._scan()
        listing = tuple((path, stamp) for path, _, stamp in files)
        if not force and listing == self._listing:
            return
        results: dict[str, _FileResult] = {}
        for path, rel, stamp in files:
            old = self._results.get(path)
            if old is not None and old.stamp == stamp and not force:
                results[path] = old
                continue
            embedding, reason = _load_file(path)
            if reason:
                log.warning("embedding %s skipped: %s", rel, reason)
            results[path] = _FileResult(path, rel, stamp, embedding, reason)
        self._results = results
        self._listing = listing
        self._generation += 1
        self._lookups.clear()

    def _lookup(self, model: Any) -> EmbeddingLookup:
        results = [r for r in self._results.values() if r.embedding is not None or r.reason]
        if model is None:
            return _no_model_lookup(results, self._registered)
        key = _model_key(model)
        cached = self._lookups.get(key)
        if cached is None or cached[0] != self._generation:
            cached = (self._generation, build_lookup(results, model, self._registered))
            self._lookups[key] = cached
        return cached[1]

    # --- A1111's interface ----------------------------------------------------------------------------------------

    def lookup_for(self, model: Any) -> EmbeddingLookup:
        """The embeddings `model` can use, after reading changed files. Safe to call for every prompt."""
        with self._lock:
            self._refresh(force=False)
            return self._lookup(model)

    def load_textual_inversion_embeddings(self, force_reload: bool = False, sync_with_sd_model: bool = True) -> None:
        """Read new or changed files (all of them with force_reload) and sort them for `shared.sd_model`."""
        with self._lock:
            self._refresh(force=force_reload)
            if force_reload:
                self._registered.clear()  # A1111 forgets embeddings registered without a file on a reload
            self._sync(shared.sd_model)

    def _sync(self, model: Any) -> None:
        lookup = self._lookup(model)
        # updated in place: extensions may hold references to these dicts
        for mine, theirs in ((self.word_embeddings, lookup.word_embeddings),
                             (self.skipped_embeddings, lookup.skipped_embeddings),
                             (self.ids_lookup, lookup.ids_lookup), (self._reasons, lookup.reasons)):
            mine.clear()
            mine.update(theirs)
        self.expected_shape = sum(w for _, w in model_encoder_widths(model)) if model is not None else -1
        for embdir in self.embedding_dirs.values():
            embdir.update()
        shown = (tuple(self.word_embeddings), tuple(self._reasons))
        if shown != self.previously_displayed_embeddings:
            self.previously_displayed_embeddings = shown
            log.info("Textual inversion embeddings loaded(%d): %s", len(self.word_embeddings),
                     ", ".join(self.word_embeddings))
            if self._reasons:
                log.info("Textual inversion embeddings skipped(%d): %s", len(self._reasons), ", ".join(self._reasons))

    def register_embedding(self, embedding: Embedding, model: Any = None) -> Embedding:
        return self.register_embedding_by_name(embedding, model, embedding.name)

    def register_embedding_by_name(self, embedding: Embedding | None, model: Any, name: str) -> Embedding | None:
        """Add under `name` (or, with None, remove) an embedding that has no file; it lasts until a forced reload
        and takes precedence over a file of the same name."""
        with self._lock:
            if embedding is None:
                self._registered.pop(name, None)
            else:
                parts = list(embedding.vec.values()) if isinstance(embedding.vec, Mapping) else [embedding.vec]
                if not parts or any(not isinstance(p, torch.Tensor) or p.dim() != 2 for p in parts):
                    raise ValueError(f"embedding {name!r}: vectors must be 2-D tensors (vectors, width)")
                embedding.vectors = int(parts[-1].shape[0])
                embedding.shape = int(sum(p.shape[1] for p in parts))
                self._registered[name] = embedding
            self._lookups.clear()
            self._refresh(force=False)
            self._sync(shared.sd_model)
            return embedding

    def get_expected_shape(self) -> int:
        model = shared.sd_model
        return sum(w for _, w in model_encoder_widths(model)) if model is not None else -1

    def find_embedding_at_position(self, tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int | None]:
        """The embedding whose name's token ids start at tokens[offset] (longest first), and their count."""
        return EmbeddingLookup(ids_lookup=self.ids_lookup).find_embedding_at_position(tokens, offset)

    def skipped_reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._reasons)


embedding_db = EmbeddingDatabase()


# ---------------------------------------------------------------------------------------------------------------------
# Functions the API, infotext and UI use
# ---------------------------------------------------------------------------------------------------------------------


def _listing_entry(embedding: Embedding) -> dict[str, Any]:
    return {
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
        "shape": embedding.shape,
        "vectors": embedding.vectors,
    }


def api_listing() -> dict[str, dict[str, dict[str, Any]]]:
    """A1111's GET /sdapi/v1/embeddings answer, after reading changed files. Files that hold no readable
    embedding are not in it (A1111's entry needs a shape and a vector count); `skipped_reasons()` lists them."""
    embedding_db.load_textual_inversion_embeddings()
    with embedding_db._lock:
        return {
            "loaded": {name: _listing_entry(e) for name, e in embedding_db.word_embeddings.items()},
            "skipped": {name: _listing_entry(e) for name, e in embedding_db.skipped_embeddings.items()},
        }


def skipped_reasons() -> dict[str, str]:
    """Why each file or embedding is not usable with the loaded model, keyed by embedding name (a file's path
    below its folder when the name is already listed)."""
    embedding_db.load_textual_inversion_embeddings()
    return embedding_db.skipped_reasons()


def prompt_texts(prompt: str, steps: int = 150) -> list[str]:
    """Every text a prompt's schedule encodes (prompt editing and alternation), extra-network tags removed."""
    text = prompt_parser._without_extra_networks(prompt)
    try:
        schedule = prompt_parser.get_learned_conditioning_prompt_schedules([text], max(1, steps))[0]
    except Exception:  # an unparsable prompt is encoded as it is
        return [text]
    return list(dict.fromkeys(entry[1] for entry in schedule))


def embeddings_in_text(text: str, tokenizer: Any, lookup: EmbeddingLookup, parse_attention: bool = True) -> list[Embedding]:
    """The embeddings a text uses, in order, found as the encoder finds them (per emphasis piece)."""
    if not lookup.ids_lookup:
        return []
    parsed = prompt_parser.parse_prompt_attention(text) if parse_attention else [[text, 1.0]]
    found: list[Embedding] = []
    for piece, weight in parsed:
        if piece == "BREAK" and weight == -1:
            continue
        found += [t for t in lookup.split_tokens(_name_ids(tokenizer, piece)) if isinstance(t, Embedding)]
    return found


def used_embeddings(prompts: Iterable[str], model: Any, steps: int = 150) -> dict[str, Embedding]:
    """The embeddings these prompts (or negative prompts) use with `model`, for the infotext.

    Every text of each prompt's schedule counts; pass the real `steps` for prompt editing at integer steps
    beyond the default. `PromptEncoder.used_embeddings` holds what one encoder actually used.
    """
    if model is None or not getattr(model, "tokenizers", None):
        return {}
    try:
        lookup = embedding_db.lookup_for(model)
    except Exception:
        log.exception("textual inversion: embeddings could not be listed")
        return {}
    used: dict[str, Embedding] = {}
    for prompt in prompts:
        for text in prompt_texts(prompt, steps):
            for embedding in embeddings_in_text(text, model.tokenizers[0], lookup):
                used.setdefault(embedding.name, embedding)
    return used


def ti_hashes_infotext(used: Mapping[str, Embedding]) -> str:
    """A1111's "TI hashes" value: "name: shorthash, name2: shorthash2" (":" and "," dropped from names; an
    embedding without a hash, as under --no-hashing, is left out). Empty when there is nothing to write."""
    parts = []
    for name, embedding in used.items():
        shorthash = embedding.shorthash
        if shorthash:
            parts.append(f"{name.replace(':', '').replace(',', '')}: {shorthash}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Replacing token embeddings in the text encoder
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TokenReplacements:
    """Rows of the token-embedding output to overwrite: output[rows[i], cols[i]] = vectors[i]."""

    rows: torch.Tensor
    cols: torch.Tensor
    vectors: torch.Tensor
    applied: bool = False


_pending = threading.local()  # per thread: id(token embedding module) -> TokenReplacements


def _pending_map() -> dict[int, TokenReplacements]:
    if not hasattr(_pending, "by_module"):
        _pending.by_module = {}
    return _pending.by_module


def _replace_hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    fixes = _pending_map().get(id(module))
    if fixes is None:
        return None  # not our call (or no embedding in it): leave the output alone
    if output.dim() != 3 or int(fixes.rows.max()) >= output.shape[0] or int(fixes.cols.max()) >= output.shape[1]:
        raise RuntimeError(f"textual inversion: token embedding output {tuple(output.shape)} does not match the "
                           "prompt it was prepared for")
    out = output.clone()  # not in place: autograd (training) may hold the original
    out[fixes.rows.to(out.device), fixes.cols.to(out.device)] = fixes.vectors.to(device=out.device, dtype=out.dtype)
    fixes.applied = True
    return out


def token_embedding_module(encoder: torch.nn.Module) -> torch.nn.Module:
    return encoder.get_input_embeddings()


def install_hook(encoder: torch.nn.Module) -> torch.nn.Module:
    """Hook the encoder's token embedding once (a copied module keeps the hook, and is keyed by its own id)."""
    module = token_embedding_module(encoder)
    if not any(hook is _replace_hook for hook in module._forward_hooks.values()):
        module.register_forward_hook(_replace_hook)
    return module


@contextlib.contextmanager
def token_replacements(encoder: torch.nn.Module, fixes: TokenReplacements | None) -> Iterator[None]:
    """Within the block, calls of `encoder` in this thread get `fixes` after the token embedding; afterwards none.

    Raises if the encoder ran without its token embedding (a replaced or compiled encoder), rather than
    conditioning on the placeholder ids silently."""
    if fixes is None or fixes.rows.numel() == 0:
        yield
        return
    module = install_hook(encoder)
    pending = _pending_map()
    key = id(module)
    if key in pending:
        raise RuntimeError("textual inversion: replacements for this encoder are already pending in this thread")
    pending[key] = fixes
    try:
        yield
    finally:
        pending.pop(key, None)  # never leave a replacement behind, whatever happened
    if not fixes.applied:
        raise RuntimeError("textual inversion: the text encoder did not run its token embedding, so the embedding "
                           "vectors could not be put in")
