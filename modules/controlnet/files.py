"""ControlNet, T2I-Adapter and IP-Adapter files on disk, listed as sd-webui-controlnet lists them.

Folders, in this order (an earlier one wins when two hold the same file): `models/ControlNet`, the A1111
extension's `extensions/sd-webui-controlnet/models` (for people moving from A1111), the `control_net_models_path`
setting and `--controlnet-dir`. Walked recursively; symlinked folders are not walked (one pointing at `/` would
make every refresh crawl the disk), symlinked files are listed. A diffusers folder (config.json + its
diffusion_pytorch_model weights) is one model, named after the folder.

A file's title is `name [hash]` with the extension's hash: A1111's short `model_hash` (sha256 of 64 KiB at
offset 1 MiB), so titles match what the extension wrote into infotexts and what API clients send
("control_v11p_sd15_canny [d14c016b]"). The full sha256 is there too (`sha256`), cached in cache.json.

Each file is classified (kind, family) from its safetensors header, or for a pickle from its key names read
through the restricted loader with the tensor data memory-mapped, never read. A file that is no control model,
or one we cannot build, is not listed; it is logged once by name and kept in `refused()` with the reason.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from modules import hashes
from modules.controlnet import classify
from modules.models import checkpoint_files
from modules.models.checkpoint_files import ModelFileError
from modules.models.registry import natural_sort_key

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
# A diffusers folder's weights, in the order diffusers itself prefers them.
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
KINDS = ("controlnet", "t2i_adapter", "ip_adapter")
_TITLE = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")
_SHA256_FROM = 10  # hashes this long or longer may be sha256 prefixes (the legacy hash has 8 hex)


@dataclass(eq=False)
class ControlModelFile:
    name: str  # file stem (folder name for diffusers folders)
    path: str  # file or folder
    kind: str  # "controlnet" | "t2i_adapter" | "ip_adapter"
    family: str | None  # "sd1" | "sd2" | "sdxl" | None when it cannot be told
    layout: str = "original"  # "original" | "diffusers": which key names the weights use
    weights_path: str = ""  # the file holding the tensors (a diffusers folder's weights file); path otherwise
    _shorthash: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.weights_path = self.weights_path or self.path

    @property
    def is_folder(self) -> bool:
        return self.weights_path != self.path

    @property
    def shorthash(self) -> str | None:
        """The extension's 8-hex hash (A1111's legacy `model_hash` of the weights file), read on first use."""
        if self._shorthash is None:
            value = hashes.model_hash(self.weights_path)
            self._shorthash = None if value == "NOFILE" else value
        return self._shorthash

    @property
    def title(self) -> str:
        shorthash = self.shorthash
        return f"{self.name} [{shorthash}]" if shorthash else self.name

    @property
    def sha256(self) -> str | None:
        """The full sha256 (of the folder's files for a diffusers folder), cached like checkpoint hashes;
        None under --no-hashing when nothing is cached."""
        return hashes.sha256(self.path, f"controlnet/{self.name}")

    @property
    def kind_label(self) -> str:
        return {"controlnet": "ControlNet", "t2i_adapter": "T2I-Adapter", "ip_adapter": "IP-Adapter"}[self.kind]


_lock = threading.RLock()
_files: list[ControlModelFile] = []
_refused: dict[str, str] = {}  # path -> why it is not listed
_scanned = False
# (real path, mtime ns, size) of a weights file -> its classification, so a refresh reads only new files.
_known: dict[tuple[str, int, int], classify.Classification] = {}
_logged: set[tuple[str, int, int]] = set()


def model_dirs() -> list[str]:
    """The folders scanned, existing ones only, each once."""
    from modules import paths, shared

    candidates = [
        os.path.join(shared.models_path, "ControlNet"),
        os.path.join(paths.extensions_dir, "sd-webui-controlnet", "models"),
        str(shared.opts.data.get("control_net_models_path") or ""),
        str(getattr(shared.cmd_opts, "controlnet_dir", None) or ""),
    ]
    found: list[str] = []
    seen: set[str] = set()
    for folder in candidates:
        if not folder.strip() or not os.path.isdir(folder):
            continue
        real = os.path.realpath(folder)
        if real not in seen:
            seen.add(real)
            found.append(os.path.abspath(folder))
    return found


def diffusers_weights(folder: str) -> str | None:
    """The weights file of a diffusers model folder, or None when `folder` is not one."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    for name in DIFFUSERS_WEIGHTS:
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            return full
    return None


def _walk(root: str) -> Iterator[str]:
    """Model files and diffusers folders under root, folders first, each level naturally sorted."""
    for folder, dirs, files in os.walk(root):
        keep = []
        for d in sorted(dirs, key=natural_sort_key):
            full = os.path.join(folder, d)
            if d.startswith(".") or os.path.islink(full):
                continue
            if diffusers_weights(full):
                yield full
            else:
                keep.append(d)
        dirs[:] = keep
        for name in sorted(files, key=natural_sort_key):
            full = os.path.join(folder, name)
            if name.lower().endswith(EXTENSIONS) and not name.startswith((".", "._")) and os.path.isfile(full):
                yield full


def read_shapes(weights_path: str) -> dict[str, Any]:
    """Key -> tensor-like (with .shape) of a model file, without reading its tensor data where the format
    allows: the safetensors header; a zip pickle memory-mapped through the restricted loader."""
    shapes = checkpoint_files.read_state_dict_shapes(weights_path)
    if shapes is not None:
        return shapes
    if not weights_path.lower().endswith(checkpoint_files.PICKLE_EXTENSIONS):
        raise ModelFileError(weights_path, f"unsupported file type {os.path.splitext(weights_path)[1]!r}")
    state = checkpoint_files.read_pickle(weights_path, "cpu", mmap=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelFileError(weights_path, f"does not hold a dictionary of weights (found {type(state).__name__})")
    return classify.flatten(state)


def _stat_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def classify_file(weights_path: str) -> classify.Classification:
    """The classification of one weights file (cached while the file is unchanged)."""
    key = _stat_key(weights_path)
    found = _known.get(key)
    if found is None:
        try:
            found = classify.classify(read_shapes(weights_path))
        except ModelFileError as e:
            found = classify.Classification(None, None, "", e.reason)
        except (OSError, ValueError, RuntimeError, TypeError) as e:  # a scan must survive any one odd file
            found = classify.Classification(None, None, "", f"cannot be read ({str(e).splitlines()[0][:200]})")
        _known[key] = found
    return found


def _entry(path: str) -> ControlModelFile | str:
    """The listing entry for a file or diffusers folder, or the reason it is left out."""
    is_folder = os.path.isdir(path)
    weights = diffusers_weights(path) if is_folder else path
    if weights is None:
        return "the diffusers folder has no weights file"
    name = os.path.basename(path) if is_folder else os.path.splitext(os.path.basename(path))[0]
    try:
        key = _stat_key(weights)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    found = classify_file(weights)
    if found.kind is None:
        if key not in _logged:
            _logged.add(key)
            log.warning("ControlNet models: %s is not listed: %s", os.path.basename(path), found.reason)
        return found.reason
    return ControlModelFile(name, os.path.abspath(path), found.kind, found.family, found.layout,
                            os.path.abspath(weights))


def refresh() -> None:
    """Scan the folders again (new and changed files are read; unchanged ones come from memory)."""
    global _scanned
    found: list[ControlModelFile] = []
    refused: dict[str, str] = {}
    seen: set[str] = set()
    with _lock:
        for root in model_dirs():
            for path in _walk(root):
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                if os.path.splitext(os.path.basename(path))[0] == "None":  # "None" means no model in the UI
                    continue
                entry = _entry(path)
                if isinstance(entry, str):
                    refused[os.path.abspath(path)] = entry
                else:
                    found.append(entry)
        found.sort(key=lambda f: natural_sort_key(f.name))  # stable: the earlier folder first on equal names
        _files[:] = found
        _refused.clear()
        _refused.update(refused)
        _scanned = True


def list_files() -> list[ControlModelFile]:
    """Every usable control model, naturally sorted by name (scanned on first use)."""
    with _lock:
        if not _scanned:
            refresh()
        return list(_files)


def refused() -> dict[str, str]:
    """Files in the folders that are not listed: file name -> why."""
    with _lock:
        if not _scanned:
            refresh()
        return {os.path.basename(path): reason for path, reason in _refused.items()}


def titles(kind: str | None = None) -> list[str]:
    """Titles ("name [hash]") of the listed files, optionally of one kind."""
    return [f.title for f in list_files() if kind is None or f.kind == kind]


def _by_hash(files: list[ControlModelFile], wanted: str) -> ControlModelFile | None:
    wanted = wanted.lower()
    for f in files:
        if f.shorthash == wanted:
            return f
    if len(wanted) >= _SHA256_FROM:
        for f in files:
            sha = f.sha256
            if sha and sha.startswith(wanted):
                return f
    return None


def _by_name(files: list[ControlModelFile], name: str, loose: bool = False) -> ControlModelFile | None:
    exact = next((f for f in files if f.name == name), None)
    if exact is not None:
        return exact
    folded = name.casefold()
    same = next((f for f in files if f.name.casefold() == folded), None)
    if same is not None or not folded or not loose:
        return same
    # the extension's last resort (find_closest_lora_model_name): the shortest name containing the text
    containing = [f for f in files if folded in f.name.casefold()]
    return min(containing, key=lambda f: len(f.name)) if containing else None


def _find_in(files: list[ControlModelFile], text: str) -> ControlModelFile | None:
    match = _TITLE.match(text)
    if match is None:
        return _by_name(files, text, loose=True)
    name, wanted = match.group(1), match.group(2).lower()
    same_name = [f for f in files if f.name == name]
    exact = next((f for f in same_name if f.shorthash == wanted), None)
    # The title, else the file with that hash (renamed since the infotext was written), else the name
    # (the file was replaced by another version).
    return exact or _by_hash(files, wanted) or _by_name(files, name)


def find(name: str | None) -> ControlModelFile | None:
    """A control model by title ("name [hash]"), by name, or by the hash in "name [hash]" when the file was
    renamed since (pasting an old infotext); failing those, as the extension does, the shortest name that
    contains the text ("canny"). "None" and "" mean no model. A miss (or a file gone since the last scan)
    rescans once."""
    text = "" if name is None else str(name).strip()
    if not text or text.casefold() == "none":
        return None
    found = _find_in(list_files(), text)
    if found is None or not os.path.exists(found.weights_path):
        refresh()
        found = _find_in(list_files(), text)
    return found
