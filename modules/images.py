"""Saving and reading images with their infotext, output naming, grids and resizing (A1111's modules.images).

Metadata containers (what A1111 writes, so other tools find it):
    PNG         text chunk "parameters" (tEXt, or iTXt when the text is not Latin-1)
    JPEG/WebP/AVIF  EXIF UserComment, UTF-16 with the "UNICODE\\0" prefix (piexif's "unicode" encoding)
    GIF         comment
Every file is written to a temporary name in the target folder and renamed into place, so a crash or a full
disk never leaves a half image under the final name, and folder watchers never see one.
Options are A1111's names, read from modules.shared.opts (see filename_patterns.shared_opt).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import namedtuple
from collections.abc import Mapping
from typing import Any

import piexif
import piexif.helper
from PIL import Image, ImageColor, PngImagePlugin

from modules import atomic_files, filename_patterns, infotext_utils, script_callbacks, shared
from modules.filename_patterns import (
    NOTHING_AND_SKIP_PREVIOUS_TEXT,
    FilenameGenerator,
    clean_path_component,
    sanitize_filename_part,
    shared_opt,
)
from modules.grid_labels import GridAnnotation, check_grid_size, draw_grid_annotations, draw_prompt_matrix, get_font

__all__ = [
    "GridAnnotation",
    "check_grid_size",
    "draw_grid_annotations",
    "draw_prompt_matrix",
    "get_font",
    "LANCZOS",
    "NOTHING_AND_SKIP_PREVIOUS_TEXT",
    "FilenameGenerator",
    "Grid",
    "combine_grid",
    "get_next_sequence_number",
    "image_grid",
    "read_info_from_image",
    "resize_image",
    "sanitize_filename_part",
    "save_image",
    "save_image_with_geninfo",
    "split_grid",
]

LANCZOS = Image.Resampling.LANCZOS

# PIL puts these in image.info; they are not text metadata a user wants to see or copy.
IGNORED_INFO_KEYS = {
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
    "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
}  # fmt: skip

_EXIF_FORMATS = {".jpg", ".jpeg", ".webp", ".avif"}


def __getattr__(name: str) -> Any:
    # the length limit lives in filename_patterns (set it there); reading it here still works, as in A1111
    if name == "max_filename_part_length":
        return filename_patterns.max_filename_part_length
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# Writing one image


def _exif_with_comment(geninfo: str) -> bytes:
    return piexif.dump(
        {"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(geninfo, encoding="unicode")}}
    )


def _write_image(
    image: Image.Image,
    fileobj: Any,
    geninfo: str | None,
    extension: str,
    existing_pnginfo: Mapping[str, Any] | None,
    section: str,
    settings: Any,
) -> None:
    ext = extension.lower()
    image_format = Image.registered_extensions()[ext]
    enable_pnginfo = shared_opt("enable_pnginfo", True, settings)
    quality = shared_opt("jpeg_quality", 80, settings)

    if ext == ".png":
        pnginfo = None
        if enable_pnginfo:
            chunks = {k: v for k, v in (existing_pnginfo or {}).items() if k not in IGNORED_INFO_KEYS}
            chunks[section] = geninfo
            pnginfo = PngImagePlugin.PngInfo()
            for key, value in chunks.items():
                if isinstance(value, (str, int, float)):  # skip bytes/tuples PIL may have left in image.info
                    pnginfo.add_text(key, str(value))  # PIL picks iTXt when the text is not Latin-1
        image.save(fileobj, format=image_format, pnginfo=pnginfo)
    elif ext in _EXIF_FORMATS:
        if image.mode == "I;16":
            image = image.point(lambda v: v * 0.0038910505836576).convert("RGB" if ext == ".webp" else "L")
        elif image.mode not in ("RGB", "L") and not (ext == ".avif" and image.mode == "RGBA"):
            image = image.convert("RGB")  # JPEG/WebP outputs drop alpha, as A1111's do
        kwargs: dict[str, Any] = {"quality": quality}
        if ext == ".webp":
            kwargs["lossless"] = shared_opt("webp_lossless", False, settings)
        if enable_pnginfo and geninfo is not None:
            kwargs["exif"] = _exif_with_comment(geninfo)
        image.save(fileobj, format=image_format, **kwargs)
    elif ext == ".gif":
        kwargs = {"comment": geninfo} if geninfo is not None and enable_pnginfo else {}
        image.save(fileobj, format=image_format, **kwargs)
    else:
        image.save(fileobj, format=image_format, quality=quality)


def save_image_with_geninfo(
    image: Image.Image,
    geninfo: str | None,
    filename: str,
    extension: str | None = None,
    existing_pnginfo: Mapping[str, Any] | None = None,
    pnginfo_section_name: str = "parameters",
    *,
    settings: Any = None,
) -> None:
    """Write `image` to `filename` with `geninfo` in the format's metadata container, atomically.

    `extension` (with dot) picks the format when the file name's own does not say it."""
    if extension is None:
        extension = os.path.splitext(filename)[1]
    if not extension.startswith("."):
        extension = "." + extension
    if extension.lower() not in Image.registered_extensions():
        raise ValueError(f"unknown image format: {extension!r}")
    # keep_mode=False: a new image gets the umask's permissions even when it overwrites an older one
    atomic_files.atomic_write(
        filename,
        lambda f: _write_image(image, f, geninfo, extension, existing_pnginfo, pnginfo_section_name, settings),
        keep_mode=False,
    )


def _write_text_atomic(filename: str, text: str) -> None:
    atomic_files.atomic_write_text(filename, text, keep_mode=False)


# ---------------------------------------------------------------------------------------------------------------
# Reading


_NOVELAI_SAMPLERS = {
    "k_euler_ancestral": "Euler a", "k_euler_a": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_a": "DPM2 a", "k_dpm_2_ancestral": "DPM2 a", "k_dpmpp_2s_a": "DPM++ 2S a",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a", "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE",
    "k_dpm_fast": "DPM fast", "k_dpm_ad": "DPM adaptive", "ddim": "DDIM", "plms": "PLMS",
}  # fmt: skip


def _novelai_sampler(name: str) -> str:
    from modules import sd_samplers  # here: the sampler registry imports the engine

    return sd_samplers.samplers_map.get(name) or _NOVELAI_SAMPLERS.get(name, "Euler a")


def _exif_user_comment(exif_data: bytes) -> str | None:
    try:
        exif = piexif.load(exif_data)
    except Exception:
        return None  # piexif takes bytes it does not recognise for a file name; bad EXIF is no EXIF
    comment = (exif or {}).get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    if not comment:
        return None
    try:
        return piexif.helper.UserComment.load(comment)
    except ValueError:
        return comment.decode("utf8", errors="ignore")


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """(infotext, other metadata items) of an opened image.

    The infotext comes from, in order: the PNG "parameters" chunk, the EXIF UserComment, the GIF comment.
    NovelAI PNGs (Software "NovelAI", JSON Comment) are converted to A1111's layout. A text longer than
    `infotext_utils.MAX_INFOTEXT_CHARS` is not generation parameters: the infotext is then None and the item
    "parameters" says why, so PNG Info and the API show a note instead of parsing megabytes."""
    items = dict(image.info or {})
    geninfo = items.pop("parameters", None)
    if geninfo is not None:
        geninfo = str(geninfo)  # PIL's iTXt is a str subclass; callers want plain str

    exif_data = items.pop("exif", None)
    if geninfo is None and isinstance(exif_data, bytes):
        geninfo = _exif_user_comment(exif_data)
    if geninfo is None and "comment" in items:
        comment = items["comment"]
        geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else str(comment)

    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)

    if items.get("Software") == "NovelAI":
        try:
            info = json.loads(items["Comment"])
            sampler = _novelai_sampler(info["sampler"])
            geninfo = (
                f"{items['Description']}\n"
                f"Negative prompt: {info['uc']}\n"
                f"Steps: {info['steps']}, Sampler: {sampler}, CFG scale: {info['scale']}, Seed: {info['seed']}, "
                f"Size: {image.width}x{image.height}, Clip skip: 2, ENSD: 31337"
            )
        except Exception as e:
            print(f"Error parsing NovelAI image generation parameters: {e!r}", file=sys.stderr)

    if geninfo is not None and infotext_utils.infotext_too_long(geninfo):
        items["parameters"] = f"(not read as generation parameters: {infotext_utils.too_long_message(len(geninfo))})"
        geninfo = None
    return geninfo, items


# ---------------------------------------------------------------------------------------------------------------
# Output naming


def get_next_sequence_number(path: str, basename: str) -> int:
    """The counter for the next file: 1 + the largest leading number among files named `[basename-]N...`.

    Starts at 0; a missing folder counts as empty. Unlike A1111, sub-folders are not counted (a "2024-05-01"
    date folder next to the images would otherwise push the counter to 02025)."""
    result = -1
    prefix = f"{basename}-" if basename != "" else ""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(prefix) and not entry.is_dir():
            first = os.path.splitext(entry.name[len(prefix) :])[0].split("-")[0]
            try:
                result = max(int(first), result)
            except ValueError:
                pass
    return result + 1


def _inside(root: str, candidate: str) -> bool:
    root_real = os.path.realpath(root)
    return os.path.commonpath([root_real, os.path.realpath(candidate)]) == root_real


def _name_max(path: str) -> int:
    try:
        return os.statvfs(path).f_namemax
    except (AttributeError, OSError):
        return 255


def _directory_for(namegen: FilenameGenerator, pattern: str) -> str:
    """The sub-folder from the directory pattern: each level cleaned, '.'/'..' levels cannot survive."""
    expanded = namegen.apply(pattern).lstrip(" ").rstrip("\\ /")
    levels = [lvl.strip() for lvl in expanded.replace("\\", "/").split("/")]
    return os.path.join(*[clean_path_component(lvl) for lvl in levels if lvl not in ("", ".")] or ["_"])


def save_image(
    image: Image.Image,
    path: str,
    basename: str,
    seed: Any = None,
    prompt: str | None = None,
    extension: str = "png",
    info: str | None = None,
    short_filename: bool = False,
    no_prompt: bool = False,
    grid: bool = False,
    pnginfo_section_name: str = "parameters",
    p: Any = None,
    existing_info: Mapping[str, Any] | None = None,
    forced_filename: str | None = None,
    suffix: str = "",
    save_to_dirs: bool | None = None,
    *,
    settings: Any = None,
) -> tuple[str, str | None]:
    """Save an image under `path` with A1111's naming rules; returns (image path, .txt path or None).

    Names: optional sub-folder from `directories_filename_pattern` (when saving to dirs), then
    `NNNNN-<pattern><suffix>.<ext>` (grids: `grid-NNNN...`). `settings` (mapping or object with A1111
    option names) overrides modules.shared.opts. Raises ValueError if the name would land outside `path`.
    """
    opt = lambda name, default: shared_opt(name, default, settings)  # noqa: E731
    namegen = FilenameGenerator(p, seed, prompt, image, basename=basename, settings=settings)
    extension = extension.lstrip(".")

    # JPEG and WebP cannot hold images this large; PNG can
    too_big_jpeg = (image.height > 65535 or image.width > 65535) and extension.lower() in ("jpg", "jpeg")
    too_big_webp = (image.height > 16383 or image.width > 16383) and extension.lower() == "webp"
    if too_big_jpeg or too_big_webp:
        print("Image dimensions too large; saving as PNG", file=sys.stderr)
        extension = "png"

    if save_to_dirs is None:
        save_to_dirs = (grid and opt("grid_save_to_dirs", True)) or (
            not grid and opt("save_to_dirs", True) and not no_prompt
        )

    root = path
    if save_to_dirs:
        path = os.path.join(
            path, _directory_for(namegen, opt("directories_filename_pattern", "[date]") or "[prompt_words]")
        )
    if not _inside(root, path):
        raise ValueError(f"refusing to save outside the output folder: {path!r}")
    os.makedirs(path, exist_ok=True)

    basename = clean_path_component(basename) if basename else ""
    # one name level, within the file system's name limit (the counter comes first, so it survives a cut);
    # 8 bytes spare for a "-N" from save_images_replace_action
    max_bytes = _name_max(path) - len(extension.encode()) - 1 - 8
    name_of = lambda stem: os.path.join(path, f"{clean_path_component(stem, max_bytes)}.{extension}")  # noqa: E731

    reserved: str | None = None  # a numbered name this call took (see _reserve)
    if forced_filename is None:
        if short_filename or seed is None:
            file_decoration = ""
        else:
            overrides = getattr(p, "override_settings", None) or {}
            file_decoration = overrides.get("samples_filename_pattern")
        if file_decoration is None:
            file_decoration = opt("samples_filename_pattern", "") or (
                "[seed]" if opt("save_to_dirs", True) else "[seed]-[prompt_spaces]"
            )
        file_decoration = namegen.apply(file_decoration) + suffix

        add_number = opt("save_images_add_number", True) or file_decoration == ""
        if file_decoration != "" and add_number:
            file_decoration = f"-{file_decoration}"

        if add_number:
            basecount = get_next_sequence_number(path, basename)
            fullfn = ""
            for i in range(500):
                number = f"{basecount + i:05}" if basename == "" else f"{basename}-{basecount + i:04}"
                fullfn = name_of(number + file_decoration)
                if not os.path.exists(fullfn) and _reserve(fullfn):
                    reserved = fullfn
                    break
        else:
            fullfn = name_of(file_decoration)
    else:
        fullfn = name_of(forced_filename)

    try:
        return _save_named(image, path, root, fullfn, reserved, info, existing_info, pnginfo_section_name, p, opt,
                           settings)
    finally:
        _release(reserved)


def _reserve(filename: str) -> bool:
    """Take a numbered name by creating it empty, exclusively: another process saving to the same folder (a second
    server, Ray replicas) that counted the same number gets the next one instead of overwriting this picture."""
    try:
        os.close(os.open(filename, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:
        return True  # a folder that cannot take the placeholder: name it as before
    return True


def _release(reserved: str | None) -> None:
    """Remove a reservation nothing was written to (the save failed, or a callback chose another name)."""
    if reserved is not None:
        try:
            if os.path.getsize(reserved) == 0:
                os.remove(reserved)
        except OSError:
            pass


def _save_named(image: Image.Image, path: str, root: str, fullfn: str, reserved: str | None, info: str | None,
                existing_info: Mapping[str, Any] | None, pnginfo_section_name: str, p: Any, opt: Any,
                settings: Any) -> tuple[str, str | None]:
    if not _inside(root, fullfn) or os.path.dirname(os.path.abspath(fullfn)) != os.path.abspath(path):
        raise ValueError(f"refusing to save outside the output folder: {fullfn!r}")

    pnginfo = dict(existing_info or {})
    if info is not None:
        pnginfo[pnginfo_section_name] = info

    # Extensions may swap the image or the name here (A1111's on_before_image_saved); they are trusted code.
    params = script_callbacks.ImageSaveParams(image, p, fullfn, pnginfo)
    script_callbacks.before_image_saved_callback(params)
    image, fullfn, pnginfo = params.image, params.filename, params.pnginfo
    info = pnginfo.get(pnginfo_section_name)

    without_ext, ext = os.path.splitext(fullfn)
    final = fullfn
    if opt("save_images_replace_action", "Replace") != "Replace":
        n = 0
        while os.path.exists(final) and final != reserved:
            n += 1
            final = f"{without_ext}-{n}{ext}"
        without_ext = os.path.splitext(final)[0]

    save_image_with_geninfo(
        image, info, final, ext, existing_pnginfo=pnginfo, pnginfo_section_name=pnginfo_section_name, settings=settings
    )
    try:
        image.already_saved_as = final
    except AttributeError:
        pass

    txt_fullfn = None
    if opt("save_txt", False) and info is not None:
        txt_fullfn = f"{without_ext}.txt"
        _write_text_atomic(txt_fullfn, f"{info}\n")

    params.filename = final
    script_callbacks.image_saved_callback(params)

    return final, txt_fullfn


# ---------------------------------------------------------------------------------------------------------------
# Grids


def image_grid(
    imgs: list[Image.Image], batch_size: int = 1, rows: int | None = None, *, settings: Any = None
) -> Image.Image:
    """Paste images into one grid. Rows: option n_rows (>0 fixed, 0 = batch size, -1 = about sqrt(n);
    with grid_prevent_empty_spots, the largest divisor of n up to sqrt(n)). Cells are the largest image's
    size; smaller images are centred."""
    if rows is None:
        n_rows = shared_opt("n_rows", -1, settings)
        if n_rows > 0:
            rows = n_rows
        elif n_rows == 0:
            rows = batch_size
        elif shared_opt("grid_prevent_empty_spots", False, settings):
            rows = math.floor(math.sqrt(len(imgs)))
            while len(imgs) % rows != 0:
                rows -= 1
        else:
            rows = round(math.sqrt(len(imgs)))
    rows = max(1, min(rows, len(imgs)))
    cols = math.ceil(len(imgs) / rows)

    params = script_callbacks.ImageGridLoopParams(imgs, cols, rows)
    script_callbacks.image_grid_callback(params)
    imgs, cols, rows = params.imgs, params.cols, params.rows

    w, h = map(max, zip(*(img.size for img in imgs), strict=True))
    background = ImageColor.getcolor(shared_opt("grid_background_color", "#ffffff", settings), "RGB")
    grid = Image.new("RGB", size=(cols * w, rows * h), color=background)
    for i, img in enumerate(imgs):
        dx, dy = (w - img.width) // 2, (h - img.height) // 2
        grid.paste(img, box=(i % cols * w + dx, i // cols * h + dy))
    return grid


Grid = namedtuple("Grid", ["tiles", "tile_w", "tile_h", "image_w", "image_h", "overlap"])


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """Overlapping tiles covering `image` (for tiled upscaling): Grid.tiles = [[y, h, [[x, w, tile], ...]], ...]."""
    w, h = image.width, image.height
    cols = math.ceil((w - overlap) / (tile_w - overlap))
    rows = math.ceil((h - overlap) / (tile_h - overlap))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0

    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h) if h >= tile_h else 0
        row_images = []
        for col in range(cols):
            x = min(int(col * dx), w - tile_w) if w >= tile_w else 0
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, row_images])
    return grid


def _ramp(width: int, height: int, horizontal: bool, overlap: int) -> Image.Image:
    line = Image.linear_gradient("L").resize((1, 256)).resize((1, overlap))  # 0..255 top to bottom
    return (
        line.transpose(Image.Transpose.TRANSPOSE).resize((width, height))
        if horizontal
        else line.resize((width, height))
    )


def combine_grid(grid: Grid) -> Image.Image:
    """Stitch split_grid tiles back, blending each overlap with a linear ramp."""
    ov = grid.overlap
    mask_w = _ramp(ov, grid.tile_h, True, ov) if ov else None
    mask_h = _ramp(grid.image_w, ov, False, ov) if ov else None
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or not ov:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, ov, h)), (x, 0), mask=mask_w)
            line.paste(tile.crop((ov, 0, w, h)), (x + ov, 0))
        if y == 0 or not ov:
            combined.paste(line, (0, y))
            continue
        combined.paste(line.crop((0, 0, line.width, ov)), (0, y), mask=mask_h)
        combined.paste(line.crop((0, ov, line.width, h)), (0, y + ov))
    return combined


# ---------------------------------------------------------------------------------------------------------------
# Resizing (img2img input modes)


def _upscaler(name: str) -> Any:
    for upscaler in shared.sd_upscalers:
        if upscaler.name == name:
            return upscaler
    raise ValueError(f"could not find upscaler named {name}")


def _scale_to(im: Image.Image, w: int, h: int, upscaler_name: str | None) -> Image.Image:
    if upscaler_name in (None, "None", "Lanczos") or im.mode == "L":
        return im.resize((w, h), resample=LANCZOS)
    scale = max(w / im.width, h / im.height)
    if scale > 1.0:
        upscaler = _upscaler(upscaler_name)
        im = upscaler.scaler.upscale(im, scale, upscaler.data_path)
    if im.size != (w, h):
        im = im.resize((w, h), resample=LANCZOS)
    return im


def resize_image(
    resize_mode: int,
    im: Image.Image,
    width: int,
    height: int,
    upscaler_name: str | None = None,
    *,
    settings: Any = None,
) -> Image.Image:
    """Resize for img2img like A1111: 0 just resize (stretch), 1 crop and resize (fill, centre crop),
    2 resize and fill (fit, then stretch the edge rows/columns into the empty bands), 3 just resize (the
    latent variant is done in latent space elsewhere; here it equals 0). Lanczos unless an upscaler is named
    (or set in the option upscaler_for_img2img) and the image must grow."""
    upscaler_name = upscaler_name or shared_opt("upscaler_for_img2img", None, settings)
    if resize_mode not in (1, 2):
        return _scale_to(im, width, height, upscaler_name)

    mode = im.mode if im.mode in ("RGB", "RGBA", "L") else "RGB"
    im = im.convert(mode) if im.mode != mode else im
    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width

    resized = _scale_to(im, max(1, src_w), max(1, src_h), upscaler_name)
    res = Image.new(mode, (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))

    if resize_mode == 2:
        if ratio < src_ratio:
            fill = height // 2 - src_h // 2
            if fill > 0:
                res.paste(resized.crop((0, 0, width, 1)).resize((width, fill)), box=(0, 0))
                bottom = resized.crop((0, resized.height - 1, width, resized.height))
                res.paste(bottom.resize((width, height - fill - src_h)), box=(0, fill + src_h))
        elif ratio > src_ratio:
            fill = width // 2 - src_w // 2
            if fill > 0:
                res.paste(resized.crop((0, 0, 1, height)).resize((fill, height)), box=(0, 0))
                right = resized.crop((resized.width - 1, 0, resized.width, height))
                res.paste(right.resize((width - fill - src_w, height)), box=(fill + src_w, 0))
    return res
