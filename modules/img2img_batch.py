"""img2img Batch (A1111's): many pictures img2img'd in turn with the page's settings, in one queue job, from
uploads ("Upload") or a server folder ("From directory"), optionally with values from each picture's infotext
("PNG info": A1111 1.6+).

Uploads are hostile. A file that is not a picture, is a decompression bomb, or has more pixels than the
`api_max_input_pixels` setting is named in the result and skipped while the others run; there may be at most
`api_max_init_images` of them, of at most --max-upload-size in all. They read no server folder, so they work where
the folder batch is refused (a server others can reach); a PNG info folder is checked like the other Batch
folders (modules/batch_folders.py). Values from PNG info are checked before use: one that does not fit is
noted and the page's value kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from PIL import Image

from modules import batch_folders, http_guard, images, infotext_utils, processing, request_validation, scripts, shared
from modules.api.images import ALLOWED_FORMATS, max_input_pixels
from modules.ui import masks, uploads

PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")
# only the usual formats (PIL's others include EPS, which runs Ghostscript); MPO opens through the JPEG plugin
_FORMATS = sorted(ALLOWED_FORMATS - {"MPO"})
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)  # PIL's ways to refuse


@dataclass(frozen=True)
class Picture:
    """One picture of a batch: the name messages show (a file name, never a server path), the file to read, its
    mask file, and the most pixels it may have (None for a server folder's files: PIL's bomb check only)."""

    name: str
    path: str
    mask: str | None = None
    max_pixels: int | None = None


@dataclass(frozen=True)
class PngInfo:
    """"Append png info to prompts": the ticked properties, and the checked folder whose files (matched by name)
    hold the infotexts; None: each picture's own."""

    props: frozenset[str]
    folder: str | None = None
    roots: tuple[batch_folders.Root, ...] = ()


def uploaded(files: Sequence[Any] | None) -> list[Picture]:
    """The Upload source's files (gradio's paths); ValueError when there are none, too many or too much in all."""
    paths = [str(getattr(f, "path", f)) for f in files or []]
    if not paths:
        raise ValueError("Add one or more pictures first (Batch > Upload).")
    most = request_validation.limit("api_max_init_images")
    if len(paths) > most:
        raise ValueError(f"{len(paths)} pictures are more than {most} (setting api_max_init_images).")
    # gradio bounds each file; the batch as a whole gets the same bound (one request's worth)
    total, limit = sum(os.path.getsize(p) for p in paths if os.path.isfile(p)), http_guard.upload_limit_bytes(
        shared.cmd_opts)
    if total > limit:
        raise ValueError(f"The pictures hold {total / 2**20:.1f} MB in all, more than the {limit / 2**20:.0f} MB "
                         "this server accepts (--max-upload-size).")
    pixels = max_input_pixels()
    return [Picture(os.path.basename(p) or "image", p, None, pixels) for p in paths]


def from_folder(folders: batch_folders.BatchFolders) -> list[Picture]:
    return [Picture(os.path.basename(f.path), f.real, batch_folders.mask_for(f, folders) if folders.mask else None)
            for f in batch_folders.input_images(folders)]


def png_info(use: bool, props: Sequence[str] | None, folder: str | None) -> PngInfo | None:
    """The PNG info options as the page set them, None when off; ValueError for a folder outside the roots."""
    if not use:
        return None
    chosen = frozenset(p for p in props or () if p in PNG_INFO_PROPS)
    if not (folder or "").strip():
        return PngInfo(chosen)
    real, roots = batch_folders.png_info_dir(folder or "", shared.cmd_opts)
    return PngInfo(chosen, real, roots)


def read(picture: Picture) -> Image.Image:
    """The decoded picture, metadata kept; ValueError naming only the picture when it is not one we take."""
    def refused(reason: str) -> ValueError:
        return ValueError(uploads.UnreadableUpload(picture.name, reason).message)

    try:
        opened = Image.open(picture.path, formats=_FORMATS)
    except _UNREADABLE as e:
        raise refused(uploads.reason(e)) from None
    with opened:
        width, height = opened.size  # from the header: a bomb is refused before it is decompressed
        if picture.max_pixels is not None and width * height > picture.max_pixels:
            raise refused(f"it is {width}x{height}, more than the {picture.max_pixels} pixels this server accepts "
                          "(setting api_max_input_pixels)")
        try:
            opened.load()
            return opened.copy()
        except _UNREADABLE as e:
            raise refused(uploads.reason(e)) from None


def infotext(picture: Picture, image: Image.Image, png: PngInfo) -> str | None:
    """The picture's infotext: from the file of the same name in the PNG info folder, else its own."""
    if png.folder is None:
        return images.read_info_from_image(image)[0]
    path = batch_folders.png_info_file(png.folder, picture.name, png.roots)
    if path is None:
        return None
    try:
        with Image.open(path, formats=_FORMATS) as other:  # text chunks only: no pixels decoded
            return images.read_info_from_image(other)[0]
    except _UNREADABLE:
        return None


def _value(prop: str, raw: str) -> tuple[str, Any]:
    """(request field, value) for one property; ValueError saying why it does not fit."""
    if prop == "Seed":
        from modules.api.models import MAX_SEED

        seed = int(raw)
        if not -1 <= seed <= MAX_SEED:  # the API's bounds: torch seeds are 64-bit
            raise ValueError(f"seeds are -1 to {MAX_SEED}")
        return "seed", seed
    if prop == "CFG scale":
        cfg = float(raw)
        if not math.isfinite(cfg) or cfg < 0:
            raise ValueError("not a CFG scale")
        return "cfg_scale", cfg
    if prop == "Steps":
        steps, most = int(raw), request_validation.limit("api_max_steps")
        if not 1 <= steps <= most:  # a picture must not ask for more work than the API may
            raise ValueError(f"steps must be 1 to {most} (setting api_max_steps)")
        return "steps", steps
    if prop == "Sampler":
        request_validation.check_sampler(SimpleNamespace(sampler_name=raw, sampler_index=None, scheduler=None))
        return "sampler_name", raw
    # Model hash: the checkpoint whose hash it is (an exact alias, not A1111's substring match)
    from modules import sd_models

    info = sd_models.checkpoint_aliases.get(raw.strip())
    if info is None or info.shorthash != raw.strip():
        raise ValueError("no checkpoint with this hash here; the current model was used")
    return "override_settings", {"sd_model_checkpoint": info.title}


def with_png_info(fields: dict[str, Any], text: str | None, png: PngInfo, name: str) -> tuple[dict[str, Any], list[str]]:
    """The request fields for one picture and notes on what could not be taken. As A1111: the picture's prompts
    follow the page's, joined by a space; Seed, CFG scale, Sampler and Steps replace the page's."""
    if not png.props:
        return fields, []
    if not text:
        return fields, [f"{name}: no PNG info; the page's settings were used."]
    params = infotext_utils.parse_generation_parameters(text)
    out, notes = dict(fields), []
    for prop in PNG_INFO_PROPS:
        raw = params.get(prop)
        if prop not in png.props or raw is None or str(raw).strip() == "":
            continue
        if prop in ("Prompt", "Negative prompt"):
            key = "prompt" if prop == "Prompt" else "negative_prompt"
            out[key] = " ".join(part for part in (fields.get(key) or "", str(raw)) if part)
            continue
        try:
            key, value = _value(prop, str(raw))
        except ValueError as e:
            notes.append(f"{name}: {prop} {str(raw)[:40]!r} from PNG info not used ({e}).")
            continue
        # a picture's model joins the page's override settings (A1111 sets that one key of p.override_settings)
        out[key] = {**(out.get(key) or {}), **value} if key == "override_settings" else value
    return out, notes


MakeRequest = Callable[[Image.Image, Image.Image | None, dict[str, Any]], processing.StableDiffusionProcessing]


def run(pictures: Sequence[Picture], make_p: MakeRequest, fields: dict[str, Any], png: PngInfo | None,
        source: str) -> processing.Processed:
    """img2img each picture in turn (make_p builds its request); unreadable ones are named and skipped.
    Interrupt stops before the next picture, Skip moves on (inside processing), as for the folder batch."""
    done_images: list[Image.Image] = []
    infotexts: list[str] = []
    notes: list[str] = []
    last = last_p = None
    shared.state.job_count = len(pictures)
    for picture in pictures:
        if shared.state.interrupted or shared.state.stopping_generation:
            break
        try:
            image = read(picture)
            mask = masks.uploaded_mask(read(Picture(os.path.basename(picture.mask), picture.mask))) \
                if picture.mask else None
        except ValueError as e:
            notes.append(str(e))
            continue
        picture_fields, found = with_png_info(fields, infotext(picture, image, png), png, picture.name) \
            if png else (fields, [])
        notes += found
        p = make_p(image.convert("RGB"), mask, picture_fields)
        try:
            last = scripts.process_request(p)
        except request_validation.RequestError as e:
            if picture_fields is fields:
                raise  # the page's own settings: every picture would fail the same way
            notes.append(f"{picture.name}: not processed with its PNG info ({e}).")
            continue
        last_p = p
        done_images += last.images
        infotexts += last.infotexts
    if last is None or last_p is None:
        raise ValueError(" ".join(notes) or "Interrupted before the first image.")
    comments = "\n".join([f"Processed {len(infotexts)} image(s) from {source}.", *notes])
    return processing.Processed(last_p, done_images, last.seed, infotexts[0] if infotexts else "",
                                infotexts=infotexts, comments=comments)
