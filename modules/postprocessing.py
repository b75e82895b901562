"""Extras (A1111's `modules.postprocessing`): run the postprocessing scripts over one image, several uploads or
a server folder, save the results to the extras folder with A1111's metadata, and return them.

Called inside a queue job (the UI's and the API's); nothing here builds a page or answers HTTP.
Metadata as A1111 writes it: the source's `parameters` chunk is kept, `postprocessing` and `extras` hold the
postprocessing infotext (`Postprocess upscale by: 2, Postprocess upscaler: Nearest`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modules import batch_folders, images, infotext_utils, paths, scripts_postprocessing, shared

SINGLE, BATCH, DIRECTORY = 0, 1, 2  # A1111's extras_mode values
DEFAULT_OUTDIR = "outputs/extras-images"


# --- face restorers (the GFPGAN and CodeFormer scripts) ------------------------------------------------------


def face_restorer(name: str) -> Any:
    """The restorer whose name() is `name`; without one the request is refused by name (ValueError saying where
    the model file goes), never silently skipped."""
    from modules import face_restoration

    return face_restoration.find(name)


def blend_restored(original: Image.Image, restored: np.ndarray, visibility: float) -> Image.Image:
    """The restorer's output, blended over the original by `visibility` (1 = only the restored picture)."""
    result = Image.fromarray(np.asarray(restored, dtype=np.uint8))
    if result.size != original.size:
        result = result.resize(original.size, resample=Image.Resampling.LANCZOS)
    if result.mode != original.mode:
        result = result.convert(original.mode)
    return Image.blend(original, result, visibility) if visibility < 1.0 else result


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class ExtrasResult:
    """What a run gives back: the pictures to show, one infotext each, and a note (skipped files)."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    comments: str = ""

    @property
    def info(self) -> str:
        return self.infotexts[-1] if self.infotexts else ""

    def js(self) -> str:
        return json.dumps({"infotexts": self.infotexts})


def infotext(info: dict[str, Any]) -> str:
    """A1111's one line: `key: value` pairs, a key alone where it equals its value, quoted where needed."""
    return ", ".join(k if k == v else f"{k}: {infotext_utils.quote(_plain_number(v))}"
                     for k, v in info.items() if v is not None)


def _plain_number(value: Any) -> Any:
    # a slider's 2.0 reads "2" as in A1111's infotexts
    return int(value) if isinstance(value, float) and value.is_integer() else value


def outdir() -> str:
    """Where Extras saves: `outdir_samples`, else `outdir_extras_samples`, else outputs/extras-images."""
    configured = getattr(shared.opts, "outdir_samples", "") or getattr(shared.opts, "outdir_extras_samples", "")
    return configured or os.path.join(paths.data_path, DEFAULT_OUTDIR)


# --- inputs -------------------------------------------------------------------------------------------------


def _display_name(item: Any) -> str:
    name = getattr(item, "orig_name", None) or getattr(item, "name", None) or (item if isinstance(item, str) else "")
    return os.path.basename(str(name)) or "image"


def read_image(path: str | io.BytesIO, shown_name: str) -> Image.Image:
    """A picture from a file; ValueError naming only the file (never a server path) when it is not one."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
            image.info = dict(opened.info)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        from modules.ui import uploads

        raise ValueError(uploads.UnreadableUpload(shown_name, uploads.reason(e)).message) from None
    return image


@dataclass
class EncodedUpload:
    """An uploaded file's bytes, read in the front door so the job can run on a Ray replica on another host."""

    data: bytes
    name: str


def _portable(item: Any) -> Any:
    """Items as they can travel: pictures and a folder's listed files as they are, uploads as their bytes."""
    if isinstance(item, Image.Image | batch_folders.BatchImage | EncodedUpload):
        return item
    path = item if isinstance(item, str) else getattr(item, "path", None) or getattr(item, "name", None)
    name = _display_name(item)
    if not path:
        raise ValueError(f"Could not read the uploaded image '{name}'.")
    try:
        with open(str(path), "rb") as f:
            return EncodedUpload(f.read(), name)
    except OSError as e:
        from modules.ui import uploads

        raise ValueError(uploads.UnreadableUpload(name, uploads.reason(e)).message) from None


def _uploaded(item: Any) -> tuple[Image.Image, str | None]:
    if isinstance(item, Image.Image):
        return item, None
    if isinstance(item, EncodedUpload):
        return read_image(io.BytesIO(item.data), item.name), item.name
    path = item if isinstance(item, str) else getattr(item, "path", None) or getattr(item, "name", None)
    name = _display_name(item)
    if not path:
        raise ValueError(f"Could not read the uploaded image '{name}'.")
    return read_image(str(path), name), name


def _inputs(extras_mode: int, image: Any, image_folder: Sequence[Any] | None, input_dir: str | None,
            output_dir: str | None) -> tuple[list[Any], str | None]:
    """(items to process, output folder or None for the usual one). Items are (image, name) pairs, or
    batch_folders.BatchImage for a folder (read one at a time in the job)."""
    if extras_mode == BATCH:
        if not image_folder:
            raise ValueError("Add one or more images first (Batch Process).")
        return list(image_folder), None
    if extras_mode == DIRECTORY:
        # Folders are typed by whoever reaches the page: the img2img batch rules (modules/batch_folders.py).
        folders = batch_folders.check(input_dir, output_dir, None, shared.cmd_opts)
        files = batch_folders.input_images(folders)
        if not files:
            raise ValueError(f"No images in {(input_dir or '').strip()}")
        return files, folders.output
    if image is None:
        raise ValueError("Add an image first (drop one on the Source box).")
    if not isinstance(image, Image.Image):  # a single image is numbered, not named after its upload (A1111's)
        image, _ = _uploaded(image)
    return [image], None


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class ExtrasRequest:
    """One Extras run as it travels to a Ray replica (modules.serve): the items, the scripts' arguments, where
    results go, and whether "Upscale" runs first (the front door's `upscale_order`)."""

    items: list[Any]
    args: list[Any]  # the scripts' flat argument list, as this process's runner lays it out
    script_args: dict[str, dict[str, Any]]  # the same by script and argument name, for another process's layout
    origin_pid: int = 0
    outpath: str | None = None
    save_output: bool = True
    show_results: bool = True
    upscale_first: bool = False


def postprocess(items: Iterable[Any], args: list[Any], *, outpath: str | None = None, save_output: bool = True,
                show_results: bool = True) -> ExtrasResult:
    """Run the postprocessing scripts over each item and save the results (A1111's loop); under --ray on a
    replica, like generation jobs."""
    from modules import call_queue

    runner = scripts_postprocessing.runner()
    request = ExtrasRequest([_portable(item) for item in items], list(args), runner.named_args(list(args)),
                            os.getpid(), outpath, save_output, show_results, runner.first == "Upscale")
    offloaded = call_queue.queue.offload("postprocess", request)
    return offloaded if offloaded is not None else run_request(request)


def run_request(request: ExtrasRequest) -> ExtrasResult:
    """The run itself, in the process that holds the upscalers."""
    args = request.args if request.origin_pid == os.getpid() else \
        scripts_postprocessing.runner().create_args_for_run(request.script_args)
    with upscale_order(request.upscale_first):
        return _postprocess(request.items, args, outpath=request.outpath, save_output=request.save_output,
                            show_results=request.show_results)


def _postprocess(items: list[Any], args: list[Any], *, outpath: str | None, save_output: bool,
                 show_results: bool) -> ExtrasResult:
    runner = scripts_postprocessing.runner()
    result = ExtrasResult()
    skipped: list[str] = []
    shared.state.job_count = len(items)
    outpath = outpath or outdir()
    for item in items:
        if shared.state.interrupted or shared.state.stopping_generation:
            break
        shared.state.nextjob()
        shared.state.skipped = False
        if isinstance(item, batch_folders.BatchImage):
            name = os.path.basename(item.path)
            try:
                image = read_image(item.real, name)
            except ValueError:
                skipped.append(name)  # a folder may hold other files; A1111 skips them too
                continue
        else:
            image, name = _uploaded(item)
        shared.state.textinfo = name or ""
        _one(runner, image, name, args, outpath, save_output, show_results, result)
    if skipped:
        result.comments = f"Skipped {len(skipped)} file(s) that are not readable pictures: {', '.join(skipped[:10])}"
    return result


def _one(runner: scripts_postprocessing.ScriptPostprocessingRunner, image: Image.Image, name: str | None,
         args: list[Any], outpath: str, save_output: bool, show_results: bool, result: ExtrasResult) -> None:
    parameters, existing_pnginfo = images.read_info_from_image(image)
    if parameters:
        existing_pnginfo["parameters"] = parameters
    image = image if image.mode in ("RGBA", "RGB") else image.convert("RGB")
    initial = scripts_postprocessing.PostprocessedImage(image)
    runner.run(initial, args)
    if shared.state.skipped:
        return
    used_suffixes: dict[str, int] = {}
    for pp in [initial, *initial.extra_images]:
        suffix = pp.get_suffix(used_suffixes)
        if getattr(shared.opts, "use_original_name_batch", True) and name is not None:
            basename, forced_filename = "", os.path.splitext(os.path.basename(name))[0] + suffix
        else:
            basename, forced_filename = "", None
        text = infotext(pp.info)
        info = dict(existing_pnginfo)
        if getattr(shared.opts, "enable_pnginfo", True):
            info["postprocessing"] = text
        pp.image.info = dict(info)
        shared.state.assign_current_image(pp.image)
        if save_output:
            images.save_image(pp.image, path=outpath, basename=basename,
                              extension=getattr(shared.opts, "samples_format", "png"), info=text, short_filename=True,
                              no_prompt=True, grid=False, pnginfo_section_name="extras", existing_info=info,
                              forced_filename=forced_filename, suffix="" if forced_filename else suffix)
        if show_results:
            result.images.append(pp.image)
            result.infotexts.append(text)


def check_request(extras_mode: int, image: Any, image_folder: Sequence[Any] | None, input_dir: str | None,
                  output_dir: str | None, args: list[Any]) -> None:
    """ValueError with the page's message for inputs or arguments that cannot work, before the job is queued."""
    _inputs(int(extras_mode or 0), image, image_folder, input_dir, output_dir)
    scripts_postprocessing.runner().check(args)


def run(extras_mode: int, image: Any, image_folder: Sequence[Any] | None, input_dir: str | None,
        output_dir: str | None, show_extras_results: bool, args: list[Any], *, save_output: bool = True
        ) -> ExtrasResult:
    """Checks the inputs (ValueError with a message for the page) and runs the scripts over them."""
    items, folder_out = _inputs(int(extras_mode or 0), image, image_folder, input_dir, output_dir)
    show = bool(show_extras_results) or int(extras_mode or 0) != DIRECTORY
    return postprocess(items, args, outpath=folder_out, save_output=save_output, show_results=show)


def run_postprocessing(extras_mode: int, image: Any, image_folder: Sequence[Any] | None, input_dir: str | None,
                       output_dir: str | None, show_extras_results: bool, *args: Any, save_output: bool = True
                       ) -> tuple[list[Image.Image], str, str]:
    """A1111's entry point: (pictures, the last infotext as HTML, "")."""
    from modules import ui_common

    result = run(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, list(args),
                 save_output=save_output)
    return result.images, ui_common.plaintext_to_html(result.info), ""


def extras_args(resize_mode: int = 0, gfpgan_visibility: float = 0, codeformer_visibility: float = 0,
                codeformer_weight: float = 0, upscaling_resize: float = 2, upscaling_resize_w: int = 512,
                upscaling_resize_h: int = 512, upscaling_crop: bool = True, extras_upscaler_1: str = "None",
                extras_upscaler_2: str = "None", extras_upscaler_2_visibility: float = 0,
                max_side_length: int = 0) -> list[Any]:
    """The scripts' argument list from A1111's old flat extras fields (run_extras and the API use them)."""
    return scripts_postprocessing.runner().create_args_for_run({
        "Upscale": {
            "upscale_enabled": True,
            "upscale_mode": resize_mode,
            "upscale_by": upscaling_resize,
            "max_side_length": max_side_length,
            "upscale_to_width": upscaling_resize_w,
            "upscale_to_height": upscaling_resize_h,
            "upscale_crop": upscaling_crop,
            "upscaler_1_name": extras_upscaler_1,
            "upscaler_2_name": extras_upscaler_2,
            "upscaler_2_visibility": extras_upscaler_2_visibility,
        },
        "GFPGAN": {"enable": True, "gfpgan_visibility": gfpgan_visibility},
        "CodeFormer": {"enable": True, "codeformer_visibility": codeformer_visibility,
                       "codeformer_weight": codeformer_weight},
    })


def run_extras(extras_mode: int, resize_mode: int, image: Any, image_folder: Sequence[Any] | None,
               input_dir: str | None, output_dir: str | None, show_extras_results: bool, gfpgan_visibility: float,
               codeformer_visibility: float, codeformer_weight: float, upscaling_resize: float,
               upscaling_resize_w: int, upscaling_resize_h: int, upscaling_crop: bool, extras_upscaler_1: str,
               extras_upscaler_2: str, extras_upscaler_2_visibility: float, upscale_first: bool,
               save_output: bool = True, max_side_length: int = 0) -> tuple[list[Image.Image], str, str]:
    """A1111's old handler (the API's fields); `upscale_first` runs Upscale before the face restorers even
    when the option postprocessing_operation_order says otherwise."""
    args = extras_args(resize_mode, gfpgan_visibility, codeformer_visibility, codeformer_weight, upscaling_resize,
                       upscaling_resize_w, upscaling_resize_h, upscaling_crop, extras_upscaler_1, extras_upscaler_2,
                       extras_upscaler_2_visibility, max_side_length)
    with upscale_order(upscale_first):
        return run_postprocessing(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results,
                                  *args, save_output=save_output)


@contextlib.contextmanager
def upscale_order(upscale_first: bool) -> Iterator[None]:
    """While active, and when asked, "Upscale" runs before the other scripts whatever the option says."""
    runner = scripts_postprocessing.runner()
    runner.first = "Upscale" if upscale_first else None
    try:
        yield
    finally:
        runner.first = None
