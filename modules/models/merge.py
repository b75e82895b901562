"""The Checkpoint Merger's engine (A1111's `run_modelmerger`): two or three checkpoints into a new file.

Weighted sum `A*(1-M) + B*M`, Add difference `A + (B-C)*M`, or No interpolation (A alone: a format change,
float16, a baked-in VAE, discarded weights). Every file goes through the hostile-safe readers of
`checkpoint_files`; A is held in RAM and changed in place tensor by tensor, while B and C are read one tensor at a
time (a .safetensors file through `safe_open`, a zip .ckpt memory-mapped), so a merge costs about one model of RAM.
No gradio here: the tab (modules/ui/checkpoint_merger.py) runs `merge()` as one job on the shared queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import torch

from modules import atomic_files, filename_patterns, hashes, paths
from modules.models import detection, ldm_export, registry, vae_registry
from modules.models.checkpoint_files import (
    SAFETENSORS_EXTENSIONS,
    TORCH_DTYPES,
    ModelFileError,
    ModelFileMissingError,
    read_pickle,
    read_safetensors_metadata,
    read_state_dict,
    read_state_dict_shapes,
    unwrap_state_dict,
)

NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE = "No interpolation", "Weighted sum", "Add difference"
METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
FORMATS = ("ckpt", "safetensors")
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
NO_VAE = "None"
UNET_INPUT = detection.UNET_PREFIX + "input_blocks.0.0.weight"
_VAE_DIFFUSERS_KEY = "encoder.down_blocks.0.resnets.0.conv1.weight"
_ST_DTYPES = {dtype: name for name, dtype in TORCH_DTYPES.items()}  # for writing a header

Progress = Callable[[str, int, int], None]  # (what, done, total)


class MergeError(ValueError):
    """A merge refused or failed; the message names the file or field at fault (a ValueError: the queue shows it as
    it is, without a traceback)."""


@dataclass
class MergeRequest:
    """The tab's fields, with A1111's defaults. Models are checkpoint titles (any alias the registry knows)."""

    primary: str | None
    secondary: str | None = None
    tertiary: str | None = None
    interp_method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: str = CONFIG_SOURCES[0]
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True


@dataclass
class MergeResult:
    path: str
    title: str  # the new checkpoint's title in the registry (what the checkpoint dropdowns show)
    config: str | None = None  # the .yaml copied beside it
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    a: registry.CheckpointInfo
    b: registry.CheckpointInfo | None
    c: registry.CheckpointInfo | None
    discard: re.Pattern[str] | None
    vae_path: str | None


def _find(title: str | None, role: str) -> registry.CheckpointInfo:
    info = registry.find_checkpoint(title) or registry.get_closet_checkpoint_match(title)
    if info is None or info.is_diffusers:
        raise MergeError(f"{role}: checkpoint not found: {title}" if info is None else
                         f"{role}: {info.name} is a diffusers folder; only single-file checkpoints can be merged")
    return info


def check_request(req: MergeRequest) -> _Plan:
    """Everything that can be refused before a file is read: the method, the models it needs, the regex, the VAE."""
    if req.interp_method not in METHODS:
        raise MergeError(f"unknown interpolation method {req.interp_method!r}; one of {', '.join(METHODS)}")
    if req.checkpoint_format not in FORMATS:
        raise MergeError(f"unknown checkpoint format {req.checkpoint_format!r}; ckpt or safetensors")
    if not 0.0 <= float(req.multiplier) <= 1.0:
        raise MergeError(f"Multiplier (M) must be from 0 to 1, not {req.multiplier}")
    if not req.primary:
        raise MergeError("Merging requires a primary model (A).")
    if req.interp_method != NO_INTERPOLATION and not req.secondary:
        raise MergeError(f"{req.interp_method} requires a secondary model (B).")
    if req.interp_method == ADD_DIFFERENCE and not req.tertiary:
        raise MergeError("Add difference requires a tertiary model (C).")
    a = _find(req.primary, "Primary model (A)")
    b = _find(req.secondary, "Secondary model (B)") if req.interp_method != NO_INTERPOLATION else None
    c = _find(req.tertiary, "Tertiary model (C)") if req.interp_method == ADD_DIFFERENCE else None
    discard = None
    if req.discard_weights:
        try:
            discard = re.compile(req.discard_weights)
        except re.error as e:
            raise MergeError(f"Discard weights with matching name: {req.discard_weights!r} is not a valid regular "
                             f"expression ({e})") from e
    vae_path = None
    if req.bake_in_vae and req.bake_in_vae != NO_VAE:
        vae_path = vae_registry.vae_dict.get(req.bake_in_vae)
        if vae_path is None:
            raise MergeError(f"Bake in VAE: unknown VAE {req.bake_in_vae!r} (press 🔄 to read the VAE list again)")
    return _Plan(a, b, c, discard, vae_path)


# --- reading ------------------------------------------------------------------------------------------------


class _Source:
    """A checkpoint read one tensor at a time: `shapes` (meta tensors or mapped ones) for checks, `get` for data."""

    def __init__(self, info: registry.CheckpointInfo, stack: contextlib.ExitStack):
        self.info = info
        path = info.filename
        if not os.path.isfile(path):
            raise ModelFileMissingError(path, "file not found (deleted or moved since the list was made?)", info.name)
        if path.lower().endswith(SAFETENSORS_EXTENSIONS):
            from safetensors import safe_open

            self.shapes: Mapping[str, Any] = read_state_dict_shapes(path) or {}  # the header checked first
            self._file = stack.enter_context(safe_open(path, framework="pt", device="cpu"))
            self._tensors: Mapping[str, torch.Tensor] | None = None
        else:  # the restricted unpickler; a zip checkpoint's data stays on disk until a tensor is used
            self._tensors = unwrap_state_dict(path, read_pickle(path, mmap=True))
            self.shapes = self._tensors

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._file.get_tensor(key)
        except Exception as e:  # the safetensors library's own error type varies between versions
            raise ModelFileError(self.info.filename, f"corrupt .safetensors data in {key!r}: {e}", self.info.name) from e

    def spec(self) -> detection.ModelSpec:
        try:
            return detection.detect_family(dict(self.shapes))
        except detection.NotStableDiffusionError as e:
            raise MergeError(f"{self.info.name}: {e}") from e


@dataclass
class _Flags:
    inpainting: bool = False
    instruct_pix2pix: bool = False


def _check_compatible(a: _Source, others: list[_Source]) -> _Flags:
    """Refuse models of different families (SD1 with SDXL, ...), and a normal A with an inpainting B, by name.
    The flags say what the result is: an inpainting (instruct-pix2pix) A merged with a normal B stays one."""
    spec_a = a.spec()
    flags = _Flags()
    for other in others:
        spec = other.spec()
        if spec.family != spec_a.family:
            raise MergeError(f"{a.info.name} is {detection.FAMILY_NAMES[spec_a.family]} and {other.info.name} is "
                             f"{detection.FAMILY_NAMES[spec.family]}: models of different families cannot be merged")
        if spec_a.variant == "normal" and spec.variant in ("inpaint", "instruct-pix2pix"):
            kind = "inpainting" if spec.variant == "inpaint" else "instruct-pix2pix"
            raise MergeError(f"When merging an {kind} model with a normal one, A must be the {kind} model "
                             f"({other.info.name} is the {kind} one).")
    if others and others[0].spec().variant == "normal":
        flags.inpainting = spec_a.variant == "inpaint"
        flags.instruct_pix2pix = spec_a.variant == "instruct-pix2pix"
    return flags


# --- names ----------------------------------------------------------------------------------------------------


def output_folder() -> str:
    """Where new checkpoints go, as in A1111: --ckpt-dir, else models/Stable-diffusion."""
    ckpt_dir = registry.cmd_opt("ckpt_dir")
    return os.path.abspath(ckpt_dir or paths.sd_model_dir)


def _m(value: float) -> str:
    return f"{round(value, 2):g}"


def output_stem(req: MergeRequest, plan: _Plan) -> str:
    """The new file's name without extension: the custom name, or one made from the models' names; always one safe
    file name (no separators, no leading dots, no device names)."""
    custom = (req.custom_name or "").strip()
    for ext in (".safetensors", ".ckpt"):
        if custom.lower().endswith(ext):
            custom = custom[: -len(ext)]
    if custom:
        stem = custom
    elif plan.b is None:
        stem = f"{plan.a.model_name}-converted"  # not A's own name: that file exists and is never overwritten
    elif plan.c is None:
        stem = f"{plan.a.model_name}_{_m(1 - req.multiplier)}-{plan.b.model_name}_{_m(req.multiplier)}"
    else:
        stem = f"{plan.a.model_name}+{_m(req.multiplier)}({plan.b.model_name}-{plan.c.model_name})"
    stem = filename_patterns.sanitize_filename_part(stem, replace_spaces=False) or "_"
    return stem + "_" if stem.lower().endswith(".vae") else stem  # *.vae.* files are listed as VAEs, not models


# --- the merge --------------------------------------------------------------------------------------------------


def _half(t: torch.Tensor, enabled: bool) -> torch.Tensor:
    # As A1111: only full-precision floats shrink; bf16 and integer buffers keep their type.
    return t.half() if enabled and t.dtype in (torch.float32, torch.float64) else t


def _merge_tensors(theta: dict[str, torch.Tensor], b: _Source, c: _Source | None, m: float,
                   progress: Progress, should_stop: Callable[[], bool]) -> None:
    """A's tensors changed in place, one key at a time. Keys only in A, non-float buffers, keys without "model"
    (A1111's rule: the noise schedule buffers) and keys whose shapes differ stay as A has them."""
    keys = list(theta)
    for done, key in enumerate(keys):
        if should_stop():
            raise MergeError("Merge interrupted; nothing was written.")
        progress("Merging", done, len(keys))
        a = theta[key]
        if not (a.is_floating_point() and "model" in key and key in b.shapes):
            continue
        bt = b.get(key)
        ct = None
        if c is not None:
            if key not in c.shapes:
                continue  # A1111: B - (missing C) counts as no difference
            ct = c.get(key)
            if ct.shape != bt.shape:
                continue
        target_dtype = torch.promote_types(a.dtype, bt.dtype)
        if a.dtype != target_dtype:
            a = theta[key] = a.to(target_dtype)
        region = a
        if a.shape != bt.shape:
            # An inpainting (9) or instruct-pix2pix (8) UNet input with a normal one (4): the shared channels merge.
            if key == UNET_INPUT and a.ndim == 4 and a.shape[1] in (8, 9) and bt.shape[1] == 4 \
                    and a.shape[:1] + a.shape[2:] == bt.shape[:1] + bt.shape[2:]:
                region = a[:, :4]
            else:
                continue
        if ct is None:
            region.mul_(1 - m).add_(bt.to(a.dtype), alpha=m)
        else:
            region.add_((bt - ct).to(a.dtype), alpha=m)
        del bt, ct
    progress("Merging", len(keys), len(keys))


def _read_vae(path: str) -> dict[str, torch.Tensor]:
    """A VAE file's weights under A's names (`first_stage_model.*`), from any of the three layouts."""
    vae = read_state_dict(path)
    try:
        if _VAE_DIFFUSERS_KEY in vae:
            return ldm_export.vae_to_ldm(vae)
    except ValueError as e:
        raise MergeError(f"Bake in VAE: {os.path.basename(path)} has weights of an unknown layout ({e})") from e
    if any(k.startswith(detection.VAE_PREFIX) for k in vae):
        return {k: v for k, v in vae.items() if k.startswith(detection.VAE_PREFIX)}
    return {detection.VAE_PREFIX + k: v for k, v in vae.items() if not k.startswith(("loss", "model_ema"))}


def _bake_vae(theta: dict[str, torch.Tensor], path: str, half: bool) -> None:
    name = os.path.basename(path)
    vae = _read_vae(path)
    fits = [k for k in vae if k in theta]
    if not fits:
        raise MergeError(f"Bake in VAE: {name} has no weights this model's VAE uses")
    for key in fits:
        if vae[key].shape != theta[key].shape:
            raise MergeError(f"Bake in VAE: {name} does not fit this model ({key} is {tuple(vae[key].shape)}, the "
                             f"model has {tuple(theta[key].shape)}; a VAE of another model family?)")
    for key in fits:
        theta[key] = _half(vae.pop(key), half)


# --- metadata ---------------------------------------------------------------------------------------------------


def _json_field(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key]) if key in meta else None
    except ValueError:
        return None


def _metadata(req: MergeRequest, plan: _Plan, flags: _Flags) -> dict[str, str]:
    """A1111's safetensors metadata: the sources' own (when copied), `format`, and the merge recipe with the hashes
    and recipes of the models merged (and of those they were merged from)."""
    if not req.save_metadata:
        return {}
    used = [info for info in (plan.a, plan.b, plan.c) if info is not None]
    own = {info.filename: read_safetensors_metadata(info.filename) if info.is_safetensors else {} for info in used}
    meta: dict[str, str] = {}
    if req.copy_metadata_fields:
        for info in used:
            meta.update(own[info.filename])
    meta["format"] = "pt"
    if not req.add_merge_recipe:
        return meta
    for info in used:
        info.calculate_shorthash()  # from cache.json when known; None under --no-hashing
    recipe: dict[str, Any] = {"type": "webui"}
    for role, info in (("primary", plan.a), ("secondary", plan.b), ("tertiary", plan.c)):
        recipe[f"{role}_model_hash"] = info.sha256 if info else None
        recipe[f"{role}_model_name"] = info.name if info else None
    recipe.update({
        "interp_method": req.interp_method, "multiplier": req.multiplier, "save_as_half": req.save_as_half,
        "custom_name": req.custom_name, "config_source": req.config_source, "bake_in_vae": req.bake_in_vae,
        "discard_weights": req.discard_weights, "is_inpainting": flags.inpainting,
        "is_instruct_pix2pix": flags.instruct_pix2pix,
    })
    models: dict[str, Any] = {}
    for info in used:
        models[info.sha256 or info.name] = {"name": info.name, "legacy_hash": hashes.model_hash(info.filename),
                                            "sd_merge_recipe": _json_field(own[info.filename], "sd_merge_recipe")}
        earlier = _json_field(own[info.filename], "sd_merge_models")
        if isinstance(earlier, dict):
            models.update(earlier)
    meta["sd_merge_recipe"] = json.dumps(recipe)
    meta["sd_merge_models"] = json.dumps(models)
    return meta


# --- writing ----------------------------------------------------------------------------------------------------


def write_safetensors(file: IO[bytes], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """The safetensors format, streamed one tensor at a time (save_file would first build the whole file in RAM).
    Largest elements first, as the library orders them, so every tensor's data is aligned to its element size."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {}
    offset = 0
    for key in order:
        t = tensors[key]
        if t.dtype not in _ST_DTYPES:
            raise MergeError(f"{key} has dtype {t.dtype}, which this merger cannot save")
        size = t.numel() * t.element_size()
        header[key] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    file.write(len(raw).to_bytes(8, "little"))
    file.write(raw)
    for key in order:
        file.write(tensors[key].detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _copy_config(req: MergeRequest, plan: _Plan, target: str) -> str | None:
    """The chosen model's `.yaml` sidecar beside the new file, as A1111 does; never over an existing one."""
    choices = {"A, B or C": [plan.a, plan.b, plan.c], "B": [plan.b], "C": [plan.c]}.get(req.config_source, [])
    for info in choices:
        source = os.path.splitext(info.filename)[0] + ".yaml" if info is not None else None
        if source and os.path.isfile(source):
            dest = os.path.splitext(target)[0] + ".yaml"
            if os.path.lexists(dest):
                return None
            shutil.copyfile(source, dest)
            return dest
    return None


def _no_progress(what: str, done: int, total: int) -> None:
    pass


def merge(req: MergeRequest, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None
          ) -> MergeResult:
    """Merge as `req` says and write the new checkpoint into the checkpoint folder; never over an existing file.

    Raises MergeError (or ModelFileError for a refused source file) with a readable message; nothing is left on
    disk then. The registry is rescanned afterwards, so the new model is listed (and hashed) at once."""
    progress = progress or _no_progress
    should_stop = should_stop or (lambda: False)
    plan = check_request(req)
    theta: dict[str, torch.Tensor] = {}
    try:
        with contextlib.ExitStack() as stack:
            progress("Reading the models", 0, 1)
            a = _Source(plan.a, stack)
            b = _Source(plan.b, stack) if plan.b is not None else None
            c = _Source(plan.c, stack) if plan.c is not None else None
            flags = _check_compatible(a, [s for s in (b, c) if s is not None])
            path = _target(req, plan, flags)  # refused before minutes of work, and again before writing
            for done, key in enumerate(list(a.shapes)):
                if should_stop():
                    raise MergeError("Merge interrupted; nothing was written.")
                progress(f"Loading {plan.a.name}", done, len(a.shapes))
                theta[key] = a.get(key)
            if b is not None:
                _merge_tensors(theta, b, c, float(req.multiplier), progress, should_stop)
        if plan.vae_path is not None:
            progress("Baking in VAE", 0, 1)
            _bake_vae(theta, plan.vae_path, req.save_as_half)
        if req.save_as_half:  # every weight, merged or not (A1111 left A's unmerged ones at float32)
            for key in theta:
                theta[key] = _half(theta[key], True)
        if plan.discard is not None:
            for key in [k for k in theta if plan.discard.search(k)]:
                del theta[key]
            if not theta:
                raise MergeError(f"Discard weights with matching name: {req.discard_weights!r} matches every weight")
        progress("Saving", 0, 1)
        metadata = _metadata(req, plan, flags) if req.checkpoint_format == "safetensors" else {}
        _write(path, theta, metadata)
    finally:
        theta.clear()  # the model-sized dict goes now, not when the job's frame does
    config = _copy_config(req, plan, path) if req.config_source != "Don't" else None
    registry.list_models()
    created = next((i for i in registry.checkpoints_list.values() if i.filename == path), None)
    title = os.path.basename(path)
    if created is not None:
        created.calculate_shorthash()
        title = created.title
    progress("Checkpoint saved", 1, 1)
    return MergeResult(path=path, title=title, config=config)


def _target(req: MergeRequest, plan: _Plan, flags: _Flags) -> str:
    """The new file's path: in the checkpoint folder, a name of its own (an existing file is never replaced)."""
    stem = output_stem(req, plan)
    stem += "-inpainting" if flags.inpainting else ""
    stem += "-instruct-pix2pix" if flags.instruct_pix2pix else ""
    folder = output_folder()
    path = os.path.join(folder, f"{stem}.{req.checkpoint_format}")
    if os.path.dirname(path) != folder:  # sanitising guarantees it; checked because the name is hostile input
        raise MergeError(f"refused name {stem!r}")
    _refuse_existing(path)
    return path


def _refuse_existing(path: str) -> None:
    if os.path.lexists(path):
        raise MergeError(f"{os.path.basename(path)} already exists in the checkpoint folder; it was not overwritten. "
                         "Choose another Custom Name.")


def _write(path: str, theta: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    name = os.path.basename(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _refuse_existing(path)
    if path.endswith(".ckpt"):
        def write(file: IO[bytes]) -> None:
            torch.save({"state_dict": theta}, file)
    else:
        def write(file: IO[bytes]) -> None:
            write_safetensors(file, theta, metadata)
    try:
        atomic_files.atomic_write(path, write, keep_mode=False)
    except OSError as e:
        raise MergeError(f"could not write {name}: {e.strerror or e}; nothing was saved") from e
