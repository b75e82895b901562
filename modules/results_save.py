"""The results panel's 💾 Save and 🗃️ Zip (A1111's `ui_common.save_files`): copies of gallery pictures go to
`outdir_save` (log/images in the data dir) with their infotext, one log.csv row each, and optionally a zip.

The gallery's file paths and the generation info JSON come from the browser: only files under the folders this
server writes pictures to (outputs, the `outdir_*` options, gradio's cache the gallery serves from) are read, and
the file's own infotext is preferred to the page's.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from PIL import Image

from modules import atomic_files, images, infotext_utils, paths, shared
from modules.filename_patterns import shared_opt

LOG_FIELDS = ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
              "sd_model_name", "sd_model_hash"]
_log_lock = threading.Lock()  # two clicks at once must not interleave rows or both rename the old log


@dataclass
class Saved:
    files: list[str] = field(default_factory=list)  # pictures (and .txt files) written, full paths
    zip_file: str | None = None
    refused: list[str] = field(default_factory=list)  # file names that are not this server's pictures


def save_dir(settings: Any = None) -> str:
    """`outdir_save`, relative to the data dir (an absolute value stays as it is)."""
    return os.path.join(paths.data_path, shared_opt("outdir_save", "log/images", settings) or "log/images")


def allowed_roots(settings: Any = None) -> list[str]:
    """Folders the gallery's pictures may come from: gradio's cache, outputs/ and every `outdir_*` folder."""
    import gradio.utils  # here: the saving itself needs no gradio

    roots = [gradio.utils.get_upload_folder(), os.path.join(paths.data_path, "outputs")]
    keys = settings.keys() if isinstance(settings, Mapping) else getattr(shared.opts, "data_labels", {}).keys()
    for key in keys:
        value = shared_opt(key, "", settings) if key.startswith("outdir_") else ""
        if isinstance(value, str) and value.strip():
            roots.append(os.path.abspath(value.strip()))
    return roots


def _inside_any(path: str, roots: Iterable[str]) -> bool:
    real = os.path.realpath(path)  # symlinks resolved: a link in the cache cannot point at /etc
    for root in roots:
        root_real = os.path.realpath(root)
        if os.path.commonpath([root_real, real]) == root_real:
            return True
    return False


def _gallery_paths(gallery: Any) -> list[str]:
    items = list(gallery or [])
    return [str(item[0] if isinstance(item, list | tuple) else item) for item in items]


def _page_infotexts(info_json: str) -> list[str]:
    try:
        info = json.loads(info_json or "{}")
    except ValueError:
        return []
    texts = info.get("infotexts") if isinstance(info, dict) else None
    return [t if isinstance(t, str) and not infotext_utils.infotext_too_long(t) else "" for t in texts or []]


def _as_p(params: Mapping[str, Any], image: Image.Image) -> SimpleNamespace:
    """A processing-like object for the filename patterns, from the parsed infotext (A1111 uses the JSON)."""
    seed = params.get("Seed")
    return SimpleNamespace(
        prompt=params.get("Prompt", ""), negative_prompt=params.get("Negative prompt", ""), seed=seed,
        all_seeds=[seed], batch_size=1, n_iter=1, batch_index=0, iteration=0, steps=params.get("Steps"),
        cfg_scale=params.get("CFG scale"), sampler_name=params.get("Sampler"), scheduler=params.get("Schedule type"),
        width=image.width, height=image.height, styles=[], denoising_strength=params.get("Denoising strength"),
        sd_model_name=params.get("Model"), sd_model_hash=params.get("Model hash"),
    )


def _first_row(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            line = f.readline(65536)  # a header, not the whole file
    except FileNotFoundError:
        return None
    return next(csv.reader([line]), None) if line.strip() else None


def _set_aside(path: str) -> None:
    """Rename a log.csv with other columns to log-<date>.csv, never over an existing file."""
    stem = f"log-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        target = os.path.join(os.path.dirname(path), f"{stem}{f'-{n}' if n else ''}.csv")
        if not os.path.exists(target):
            os.rename(path, target)
            return
    raise OSError(f"cannot set aside {path}: too many old logs")


def _append_log(folder: str, rows: list[list[Any]]) -> None:
    path = os.path.join(folder, "log.csv")
    with _log_lock:
        header = _first_row(path)
        if header is not None and header != LOG_FIELDS:
            _set_aside(path)
        with open(path, "a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(LOG_FIELDS)
            writer.writerows(rows)


def _write_zip(zip_path: str, files: list[str], folder: str) -> None:
    def write(fileobj: Any) -> None:
        with zipfile.ZipFile(fileobj, "w", zipfile.ZIP_DEFLATED) as z:
            for name in files:
                z.write(name, os.path.relpath(name, folder))

    atomic_files.atomic_write(zip_path, write, keep_mode=False)


def save_files(info_json: str, gallery: Any, index: int | None, make_zip: bool, *, settings: Any = None,
               roots: Iterable[str] | None = None) -> Saved:
    """Save the selected picture (all of them when `save_selected_only` is off) of a gallery into `save_dir()`.

    Pictures outside `roots` (default `allowed_roots()`) or unreadable are listed in `refused`, not saved."""
    sources = _gallery_paths(gallery)
    if shared_opt("save_selected_only", True, settings) and sources:
        at = index if index is not None and 0 <= index < len(sources) else 0
        chosen = [(at, sources[at])]
    else:
        chosen = list(enumerate(sources))
    roots = list(allowed_roots(settings) if roots is None else roots)
    texts = _page_infotexts(info_json)
    folder = save_dir(settings)
    os.makedirs(folder, exist_ok=True)
    saved, rows = Saved(), []
    for i, source in chosen:
        if not (os.path.isfile(source) and _inside_any(source, roots)):
            saved.refused.append(os.path.basename(source) or source)
            continue
        try:
            with Image.open(source) as opened:
                opened.load()
                image = opened
        except Exception:  # noqa: BLE001  (not a picture, or a broken one: refused like a foreign file)
            saved.refused.append(os.path.basename(source))
            continue
        own = image.info.get("parameters")
        text = str(own) if isinstance(own, str) else (texts[i] if i < len(texts) else "")
        params = infotext_utils.parse_generation_parameters(text, skip_fields=[]) if text else {}
        other = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
        fullfn, txt = images.save_image(
            image, folder, "", seed=params.get("Seed"), prompt=params.get("Prompt", ""),
            extension=shared_opt("samples_format", "png", settings), info=text or None, p=_as_p(params, image),
            existing_info=other, save_to_dirs=bool(shared_opt("use_save_to_dirs_for_ui", False, settings)),
            settings=settings)
        saved.files += [fullfn, *([txt] if txt else [])]
        rows.append([params.get("Prompt", ""), params.get("Seed", ""), params.get("Size-1", image.width),
                     params.get("Size-2", image.height), params.get("Sampler", ""), params.get("CFG scale", ""),
                     params.get("Steps", ""), os.path.relpath(fullfn, folder), params.get("Negative prompt", ""),
                     params.get("Model", ""), params.get("Model hash", "")])
    if rows:
        _append_log(folder, rows)
    if make_zip and saved.files:
        saved.zip_file = os.path.join(folder, f"{os.path.splitext(os.path.basename(saved.files[0]))[0]}.zip")
        _write_zip(saved.zip_file, saved.files, folder)
    return saved
