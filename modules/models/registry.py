"""The checkpoint registry: which models exist, their names, hashes and aliases (A1111's `sd_models` lists).

`list_models()` scans `models/Stable-diffusion` and `--ckpt-dir` (plus the `--ckpt` file) and fills
`checkpoints_list` (title -> info) and `checkpoint_aliases` (every accepted spelling -> info). Hashes come
from cache.json only; `CheckpointInfo.calculate_shorthash()` computes one on demand (e.g. at load time).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import Any

from modules import hashes, paths
from modules.hashes import model_hash  # noqa: F401  (A1111 exposes it from sd_models)

log = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".vae.safetensors", ".vae.ckpt", ".vae.pt")
DIFFUSERS_MARKER = "model_index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a real safetensors header is KBs; more means a broken or hostile file

checkpoints_list: dict[str, CheckpointInfo] = {}
checkpoint_aliases: dict[str, CheckpointInfo] = {}
checkpoint_alisases = checkpoint_aliases  # A1111's misspelling; extensions still import it

_lock = threading.RLock()
# Roots of the last scan, in priority order; used to name a CheckpointInfo built from a bare path.
_roots: list[str] = []

_re_digits = re.compile(r"([0-9]+)")
_re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def natural_sort_key(s: str) -> list[int | str]:
    """A1111's natural_sort_key: "model2" sorts before "model10", case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in _re_digits.split(s)]


def cmd_opt(name: str) -> Any:
    """A command-line flag from modules.shared, or None while that module is missing or not set up yet."""
    try:
        from modules import shared

        return getattr(shared.cmd_opts, name, None)
    except Exception:
        return None


def is_diffusers_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, DIFFUSERS_MARKER))


def read_metadata_from_safetensors(filename: str) -> dict[str, Any]:
    """The `__metadata__` of a .safetensors file, from its header only (tensors are never read).

    String values that hold a JSON object are decoded, as A1111 does (kohya's ss_tag_frequency etc.).
    Raises ValueError for a file that is not a valid safetensors header.
    """
    with open(filename, "rb") as file:
        header_len = int.from_bytes(file.read(8), "little")
        if header_len < 2 or header_len > MAX_HEADER_BYTES:
            raise ValueError(f"{filename}: implausible safetensors header length {header_len}")
        raw = file.read(header_len)
    if len(raw) != header_len or not raw.startswith(b"{"):
        raise ValueError(f"{filename} is not a safetensors file")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError(f"{filename}: safetensors header is not an object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        return {}
    result: dict[str, Any] = {}
    for key, value in metadata.items():
        result[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                result[key] = json.loads(value)
            except ValueError:
                pass
    return result


def _relative_name(filename: str, roots: Iterable[str]) -> str:
    """Path relative to the first root that contains it (A1111: --ckpt-dir, then models/Stable-diffusion)."""
    for root in roots:
        try:
            if os.path.commonpath([root, filename]) == root and filename != root:
                return os.path.relpath(filename, root)
        except ValueError:  # different drives on Windows
            continue
    return os.path.basename(filename)


def _default_roots() -> list[str]:
    if _roots:
        return list(_roots)
    ckpt_dir = cmd_opt("ckpt_dir")
    return [os.path.abspath(d) for d in (ckpt_dir, paths.sd_model_dir) if d]


class CheckpointInfo:
    """One checkpoint (a single file or a diffusers folder), with A1111's attribute names."""

    def __init__(self, filename: str, name: str | None = None):
        self.filename = os.path.abspath(filename)
        self.name = name if name is not None else _relative_name(self.filename, _default_roots())
        self.name_for_extra = os.path.splitext(os.path.basename(self.filename))[0]
        self.model_name = os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]
        self.is_diffusers = os.path.isdir(self.filename) and is_diffusers_dir(self.filename)
        self.is_safetensors = not self.is_diffusers and self.filename.lower().endswith(".safetensors")

        self.sha256: str | None = hashes.sha256_from_cache(self.filename, self.hash_title)
        self._set_hash_fields()

    @property
    def hash_title(self) -> str:
        """The key of this model in cache.json."""
        return f"checkpoint/{self.name}"

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def hash(self) -> str | None:
        return self.shorthash

    def _set_hash_fields(self) -> None:
        short = self.shorthash
        self.title = f"{self.name} [{short}]" if short else self.name
        self.short_title = f"{self.name_for_extra} [{short}]" if short else self.name_for_extra
        self.ids = [self.name, self.model_name, self.name_for_extra, self.title, self.short_title]
        if short:
            self.ids += [short, self.sha256, f"{self.name} [{short}]", f"{self.name_for_extra} [{short}]"]
        self.ids = list(dict.fromkeys(self.ids))

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Read on first use: a scan of many checkpoints stays a directory walk."""
        if not self.is_safetensors:
            return {}
        try:
            return read_metadata_from_safetensors(self.filename)
        except (OSError, ValueError) as e:
            # The loader reports the real problem when someone tries to load this file.
            log.debug("no metadata for %s: %s", self.filename, e)
            return {}

    def register(self) -> None:
        with _lock:
            checkpoints_list[self.title] = self
            for alias in self.ids:
                checkpoint_aliases[alias] = self

    def calculate_shorthash(self) -> str | None:
        """Compute (or take from cache.json) the sha256, then re-title and re-register under the new aliases."""
        sha = hashes.sha256(self.filename, self.hash_title)
        if sha is None:  # --no-hashing
            return None
        if sha == self.sha256:
            return self.shorthash
        with _lock:
            old_title = self.title
            self.sha256 = sha
            self._set_hash_fields()
            listed = checkpoints_list.get(old_title)
            if listed is self:
                _replace_key(checkpoints_list, old_title, self.title, self)
                self.register()
            elif listed is not None and listed.filename == self.filename:
                # self is from before a rescan (e.g. the loaded model's info): update the listed twin instead
                listed.calculate_shorthash()
        return self.shorthash

    def __repr__(self) -> str:
        return f"CheckpointInfo({self.title!r}, filename={self.filename!r})"


def _replace_key(d: dict[str, CheckpointInfo], old: str, new: str, value: CheckpointInfo) -> None:
    """Rename a key in place, keeping its position (the dropdown order) and the dict object itself."""
    items = [(new if k == old else k, value if k == old else v) for k, v in d.items() if k != new or k == old]
    d.clear()
    d.update(items)


def _walk_checkpoints(root: str) -> Iterator[str]:
    """Checkpoint files and diffusers folders under root, in A1111's walk order (folder, then file, naturally).

    Symlinked folders are not walked (A1111 follows them): one pointing at `/` or a whole drive would make every
    scan crawl it and list whatever models lie there. A symlinked file, or a symlinked diffusers folder (one
    model, not a tree), is listed like any other; a folder of models elsewhere belongs in --ckpt-dir.
    """
    for folder, dirs, files in os.walk(root):
        found: list[str] = []
        keep: list[str] = []
        for d in dirs:
            if d.startswith("."):
                continue
            full = os.path.join(folder, d)
            if is_diffusers_dir(full):
                found.append(full)  # a model, not a folder of models: do not descend
            elif os.path.islink(full):
                log.info("not scanning %s for checkpoints: it is a symlinked folder", os.path.relpath(full, root))
            else:
                keep.append(full)
        dirs[:] = sorted((os.path.basename(d) for d in keep), key=natural_sort_key)
        for f in files:
            lower = f.lower()
            if f.startswith("._") or not lower.endswith(CHECKPOINT_EXTENSIONS) or lower.endswith(VAE_SUFFIXES):
                continue  # "._x" are macOS resource forks; *.vae.* belong to the VAE list
            full = os.path.join(folder, f)
            if os.path.isfile(full):  # skips broken symlinks, and links to devices or pipes
                found.append(full)
        yield from sorted(found, key=lambda p: natural_sort_key(os.path.basename(p)))


def list_models(
    model_dir: str | None = None,
    ckpt_dir: str | None = None,
    ckpt_file: str | None = None,
    calculate_hashes: bool = False,
    bundled: str | None = None,
) -> None:
    """Rescan for checkpoints, replacing the contents of `checkpoints_list` and `checkpoint_aliases`.

    None means the default: `paths.sd_model_dir`, `--ckpt-dir`, `--ckpt`, `paths.bundled_checkpoint` (pass ""
    for "none"). The `--ckpt` file comes first so `select_checkpoint()` falls back to it; the bundled model
    comes last, so it is the default only when no other checkpoint is there. Hashes are read from cache.json
    only, unless calculate_hashes asks for the missing ones to be computed.
    """
    model_dir = paths.sd_model_dir if model_dir is None else model_dir
    ckpt_dir = cmd_opt("ckpt_dir") if ckpt_dir is None else ckpt_dir
    ckpt_file = cmd_opt("ckpt") if ckpt_file is None else ckpt_file
    bundled = paths.bundled_checkpoint if bundled is None else bundled

    roots = list(dict.fromkeys(os.path.abspath(d) for d in (ckpt_dir, model_dir) if d))
    infos: list[CheckpointInfo] = []
    seen: set[str] = set()

    def add(filename: str) -> None:
        real = os.path.realpath(filename)
        if real not in seen:
            seen.add(real)
            infos.append(CheckpointInfo(filename, _relative_name(os.path.abspath(filename), roots)))

    if ckpt_file:
        if os.path.exists(ckpt_file):
            add(ckpt_file)
        elif os.path.abspath(ckpt_file) != os.path.join(paths.script_path, "model.ckpt"):  # A1111's default value
            log.warning("checkpoint in --ckpt argument not found: %s", ckpt_file)
    bundled_real = os.path.realpath(bundled) if bundled and os.path.isfile(bundled) else None
    if bundled_real in seen:  # it is the --ckpt file, already first
        bundled_real = None
    if bundled_real:
        seen.add(bundled_real)  # listed once, after everything else
    for root in roots:
        if os.path.isdir(root):
            for filename in _walk_checkpoints(root):
                add(filename)
    if bundled_real:
        seen.discard(bundled_real)
        add(bundled)

    with _lock:
        _roots[:] = roots
        checkpoints_list.clear()
        checkpoint_aliases.clear()
        for info in infos:
            info.register()
    if calculate_hashes:
        for info in infos:
            info.calculate_shorthash()


def get_closet_checkpoint_match(search_string: str | None) -> CheckpointInfo | None:
    """A1111's lookup: an exact alias, else the shortest title containing the string; a trailing "[hash]" is
    ignored when nothing matches with it (the hash may not be computed yet in this session)."""
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string)
    if info is not None:
        return info
    found = sorted((i for i in checkpoints_list.values() if search_string in i.title), key=lambda i: len(i.title))
    if found:
        return found[0]

    stripped = _re_strip_checksum.sub("", search_string)
    if not stripped or stripped == search_string:
        return None
    info = checkpoint_aliases.get(stripped)
    if info is not None:
        return info
    found = sorted((i for i in checkpoints_list.values() if stripped in i.title), key=lambda i: len(i.title))
    return found[0] if found else None


def find_checkpoint(name: str | None) -> CheckpointInfo | None:
    """The listed checkpoint `name` names (any alias; "name [hash]" also by name), or None."""
    if not name:
        return None
    return checkpoint_aliases.get(name) or checkpoint_aliases.get(_re_strip_checksum.sub("", name))


def select_checkpoint(preferred: str | None = None) -> CheckpointInfo | None:
    """The preferred checkpoint (any alias; "name [hash]" also by name), else the first listed; None if none."""
    return find_checkpoint(preferred) or next(iter(checkpoints_list.values()), None)


def checkpoint_candidates(preferred: str | None = None) -> list[CheckpointInfo]:
    """Every listed checkpoint in the order start-up tries them: `preferred` first (when listed), then the list
    (the --ckpt file first, the bundled model last), each once."""
    first = find_checkpoint(preferred)
    ordered = ([first] if first is not None else []) + list(checkpoints_list.values())
    seen: set[str] = set()
    result = []
    for info in ordered:
        if info.filename not in seen:
            seen.add(info.filename)
            result.append(info)
    return result


def checkpoint_tiles(use_short: bool = False) -> list[str]:
    """Titles for the checkpoint dropdown, in list order."""
    return [i.short_title if use_short else i.title for i in checkpoints_list.values()]
