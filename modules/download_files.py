"""Where a downloaded model goes: the folder for its type, and a file name that cannot leave that folder.

The folders are A1111's, and follow the same flags the scanners read (`--ckpt-dir`, `--lora-dir`, ...), so a
finished download is found by the next scan of its folder, which `rescan` runs at once.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from collections.abc import Callable
from email.message import Message

from modules import paths, shared
from modules.download_guard import DownloadRefused

EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MAX_NAME = 200
PART_SUFFIX = ".part"

KINDS = ("checkpoint", "lora", "vae", "controlnet", "upscaler", "embedding")
# Upscaler folders and the flag that moves each (modules/upscaler_models.py reads the same ones).
UPSCALERS = {"ESRGAN": "esrgan_models_path", "RealESRGAN": "realesrgan_models_path",
             "SwinIR": "swinir_models_path", "DAT": "dat_models_path", "HAT": "hat_models_path",
             "ScuNET": "scunet_models_path"}
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)


def _flag_dir(dest: str) -> str | None:
    value = getattr(shared.cmd_opts, dest, None)
    return os.path.abspath(value) if value else None


def folder_for(kind: str, upscaler: str | None = None) -> str:
    """The folder a model of this type is saved to. Raises DownloadRefused for an unknown type."""
    if kind == "checkpoint":
        return _flag_dir("ckpt_dir") or paths.sd_model_dir
    if kind == "vae":
        return _flag_dir("vae_dir") or paths.vae_dir
    if kind == "lora":
        return _flag_dir("lora_dir") or os.path.join(paths.models_path, "Lora")
    if kind == "embedding":
        return _flag_dir("embeddings_dir") or os.path.join(paths.data_path, "embeddings")
    if kind == "controlnet":
        return os.path.join(paths.models_path, "ControlNet")
    if kind == "upscaler":
        if upscaler not in UPSCALERS:
            raise DownloadRefused(f"unknown upscaler type {upscaler!r}; one of {', '.join(UPSCALERS)}")
        return _flag_dir(UPSCALERS[upscaler]) or os.path.join(paths.models_path, upscaler)
    raise DownloadRefused(f"unknown model type {kind!r}; one of {', '.join(KINDS)}")


def check_name(name: str) -> str:
    """`name` if it is one safe file name with a model extension; else DownloadRefused naming the problem.

    Refused rather than repaired: a server that sends `../../x.safetensors` is not one to take a file from."""
    shown = repr(name[:80])
    if not name:
        raise DownloadRefused("no file name: give one in the name box")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise DownloadRefused(f"the file name {shown} contains control or invisible characters")
    if "/" in name or "\\" in name or ".." in name or ":" in name:
        raise DownloadRefused(f"the file name {shown} would leave the model folder")
    if name.startswith(".") or name != name.strip():
        raise DownloadRefused(f"the file name {shown} is hidden or starts or ends with a space")
    if len(name.encode("utf-8")) > MAX_NAME:
        raise DownloadRefused(f"the file name {shown}... is longer than {MAX_NAME} bytes")
    if _WINDOWS_RESERVED.match(name):
        raise DownloadRefused(f"the file name {shown} is a reserved device name on Windows")
    if not name.lower().endswith(EXTENSIONS):
        raise DownloadRefused(f"the file name {shown} is not a model file; allowed: {', '.join(EXTENSIONS)}")
    return name


def name_from_url(url: str) -> str:
    """The last path segment, percent-decoded ("" when the path ends in /)."""
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path.rsplit("/", 1)[-1])


def name_from_disposition(header: str | None) -> str | None:
    """The file name of a Content-Disposition header (filename* first, as RFC 6266 says), or None."""
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    name = message.get_filename()  # decodes filename*=UTF-8''... as well
    return name if name else None


def destination(folder: str, name: str) -> str:
    """The path of `name` in `folder`, checked to stay inside it once links are resolved."""
    check_name(name)
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.dirname(path) != root:
        raise DownloadRefused(f"the file name {name!r} would leave the model folder")
    return path


def _rescan_checkpoints() -> None:
    from modules.models import registry

    registry.list_models()


def _rescan_lora() -> None:
    from modules.networks import files

    files.list_available_networks()


def _rescan_vae() -> None:
    from modules.models import vae_registry

    vae_registry.refresh_vae_list()


def _rescan_upscalers() -> None:
    from modules import upscalers

    upscalers.refresh()


def _rescan_embeddings() -> None:
    from modules import textual_inversion

    textual_inversion.embedding_db.load_textual_inversion_embeddings(force_reload=True)


def _rescan_controlnet() -> None:
    from modules.controlnet import files as control_files

    control_files.refresh()


_RESCANS: dict[str, Callable[[], None]] = {
    "checkpoint": _rescan_checkpoints, "lora": _rescan_lora, "vae": _rescan_vae,
    "upscaler": _rescan_upscalers, "embedding": _rescan_embeddings, "controlnet": _rescan_controlnet,
}


def rescan(kind: str) -> None:
    """List the folder of `kind` again, so the new file is in the dropdowns at once."""
    fn = _RESCANS.get(kind)
    if fn is not None:
        fn()
