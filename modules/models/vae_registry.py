"""VAE files and A1111's VAE choice ("Automatic", "None" or a named file; `--vae-path` wins over all).

`vae_dict` maps a display name (the file or folder name, e.g. `sdxl_vae.safetensors`) to its path. It holds
everything under `models/VAE` and `--vae-dir`, plus `*.vae.*` files that sit among the checkpoints.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from modules import paths
from modules.models.registry import cmd_opt, is_diffusers_dir, natural_sort_key

VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin")
CHECKPOINT_VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")  # also the "near checkpoint" order
VAE_CLASS_NAMES = frozenset({"AutoencoderKL"})

AUTOMATIC = "Automatic"
NONE = "None"

SOURCE_COMMANDLINE = "commandline argument"
SOURCE_NEAR_CHECKPOINT = "found near checkpoint"
SOURCE_SETTINGS = "specified in settings"
SOURCE_BUILTIN = "built-in"

vae_dict: dict[str, str] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class VaeResolution:
    """Which VAE to use. path None means the checkpoint's own (built-in) VAE."""

    path: str | None
    source: str

    @property
    def vae(self) -> str | None:  # A1111's field name
        return self.path


def get_filename(filepath: str) -> str:
    """Display name of a VAE: its file (or folder) name."""
    return os.path.basename(os.path.normpath(filepath))


def _is_diffusers_vae_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf8") as file:
            config = json.load(file)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") in VAE_CLASS_NAMES


def _walk(root: str, suffixes: tuple[str, ...], folders: bool) -> Iterator[str]:
    """Files ending in one of suffixes (and, if folders, diffusers VAE folders) under root; hidden dirs skipped.

    Model folders (diffusers pipelines, or any folder with a config.json) are not descended into: their
    weight files are parts of that model, not VAEs of their own. Symlinked folders are not walked either (one
    pointing at `/` would make every scan crawl the disk); symlinked files and VAE folders are listed.
    """
    for folder, dirs, files in os.walk(root):
        keep = []
        for d in sorted(dirs, key=natural_sort_key):
            full = os.path.join(folder, d)
            if d.startswith("."):
                continue
            if folders and _is_diffusers_vae_dir(full):
                yield full
            elif not (os.path.islink(full) or is_diffusers_dir(full) or os.path.isfile(os.path.join(full, "config.json"))):
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files, key=natural_sort_key):
            full = os.path.join(folder, f)
            if not f.startswith("._") and f.lower().endswith(suffixes) and os.path.isfile(full):
                yield full


def _default_dirs(flag: str, base: str) -> list[str]:
    extra = cmd_opt(flag)
    return [d for d in (base, extra) if d]


def refresh_vae_list(vae_dirs: Iterable[str] | None = None, checkpoint_dirs: Iterable[str] | None = None) -> None:
    """Rescan. None means the defaults: `models/VAE` + `--vae-dir`, and `models/Stable-diffusion` + `--ckpt-dir`."""
    vae_dirs = _default_dirs("vae_dir", paths.vae_dir) if vae_dirs is None else list(vae_dirs)
    checkpoint_dirs = (
        _default_dirs("ckpt_dir", paths.sd_model_dir) if checkpoint_dirs is None else list(checkpoint_dirs)
    )

    # Checkpoint-folder VAEs first, then VAE folders, as A1111 does: on a name clash the VAE folder wins.
    found: list[str] = []
    for d in checkpoint_dirs:
        if os.path.isdir(d):
            found += _walk(d, CHECKPOINT_VAE_SUFFIXES, folders=False)
    for d in vae_dirs:
        if os.path.isdir(d):
            found += _walk(d, VAE_EXTENSIONS, folders=True)

    found_by_name: dict[str, str] = {}
    for path in found:
        name = get_filename(path)
        if name not in (AUTOMATIC, NONE):
            found_by_name[name] = os.path.abspath(path)

    with _lock:
        vae_dict.clear()
        vae_dict.update(sorted(found_by_name.items(), key=lambda item: natural_sort_key(item[0])))


def vae_option_names() -> list[str]:
    """Choices for the `sd_vae` setting."""
    return [AUTOMATIC, NONE, *sorted(vae_dict, key=natural_sort_key)]


def find_vae_near_checkpoint(checkpoint_file: str) -> str | None:
    """`NAME.vae.safetensors` / `.vae.pt` / `.vae.ckpt` next to checkpoint `NAME.<ext>` (or folder NAME)."""
    checkpoint_file = os.path.normpath(checkpoint_file)
    if os.path.isdir(checkpoint_file):
        stem = checkpoint_file
    else:
        stem = os.path.splitext(checkpoint_file)[0]
    for suffix in CHECKPOINT_VAE_SUFFIXES:
        candidate = stem + suffix
        if os.path.isfile(candidate):
            return candidate
    return None


def resolve_vae(checkpoint_filename: str, choice: str, vae_path_flag: str | None = None) -> VaeResolution:
    """Apply A1111's rules: `--vae-path`, then the `sd_vae` choice.

    vae_path_flag None means "read --vae-path from modules.shared"; pass "" for "not set".
    Raises ValueError for a missing --vae-path file or a VAE name that is not in `vae_dict`.
    """
    vae_path_flag = cmd_opt("vae_path") if vae_path_flag is None else vae_path_flag
    if vae_path_flag:
        if not os.path.exists(vae_path_flag):
            raise ValueError(f"VAE file from --vae-path does not exist: {vae_path_flag}")
        return VaeResolution(os.path.abspath(vae_path_flag), SOURCE_COMMANDLINE)

    if choice == NONE:
        return VaeResolution(None, SOURCE_BUILTIN)
    if choice == AUTOMATIC or not choice:
        near = find_vae_near_checkpoint(checkpoint_filename)
        if near is not None:
            return VaeResolution(near, SOURCE_NEAR_CHECKPOINT)
        return VaeResolution(None, SOURCE_BUILTIN)

    path = vae_dict.get(choice)
    if path is None:
        names = list(vae_dict)
        if names:
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
            raise ValueError(f"unknown VAE {choice!r}; available: {shown}")
        raise ValueError(f"unknown VAE {choice!r}; no VAE files were found (put them in models/VAE)")
    return VaeResolution(path, SOURCE_SETTINGS)
