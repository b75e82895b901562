"""What the ControlNet accordion's controls mean, without the page: choices per control type, the sliders a
preprocessor asks for, a unit from the controls' values, a pasted `ControlNet N: "..."` infotext as control
values, and the 💥 preview (a preprocessor run on the unit's picture).

modules/controlnet/ui.py lays the controls out and wires these functions to them; each one here returns plain
values or `gr.update`s, so tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from modules.controlnet import hints, preprocessors
from modules.controlnet.units import ControlMode, ControlNetUnit, HiResFixOption, ResizeMode, UnitError

ALL_TYPES = "All"
NO_MODEL = "None"  # the extension's name for "no model"
NO_MODULE = "none"
# The values of one unit's controls, in the order its `.change` listener receives them.
CONTROL_NAMES = ("enabled", "image", "mask", "independent", "module", "model", "weight", "guidance_start",
                 "guidance_end", "low_vram", "pixel_perfect", "processor_res", "threshold_a", "threshold_b",
                 "control_mode", "resize_mode", "hr_option")
# What a paste sets, in the order `pasted_values` returns them.
PASTED_NAMES = ("enabled", "control_type", "module", "model", "refresh", "weight", "guidance_start", "guidance_end",
                "pixel_perfect", "processor_res", "threshold_a", "threshold_b", "control_mode", "resize_mode")


# --- choices -------------------------------------------------------------------------------------------------------


def control_type_names() -> list[str]:
    return list(preprocessors.control_types())


def choices_for(control_type: str) -> tuple[list[str], list[str], str, str]:
    """(preprocessors, models, default preprocessor, default model) of a control type, as the extension filters
    them (models by the type's keywords in their titles); an unknown type shows everything."""
    from modules.controlnet.control_types import control_types

    types = control_types()
    entry = types.get(control_type) or types[ALL_TYPES]
    return list(entry["module_list"]), list(entry["model_list"]), entry["default_option"], entry["default_model"]


def model_choices(control_type: str = ALL_TYPES) -> list[str]:
    return choices_for(control_type)[1]


# --- sliders -------------------------------------------------------------------------------------------------------


def _slider_update(slider: preprocessors.Slider | None, visible: bool, value: float | None) -> Any:
    if slider is None:
        return gr.update(visible=False)
    update: dict[str, Any] = {"label": slider.label, "minimum": slider.minimum, "maximum": slider.maximum,
                              "step": slider.step, "visible": visible}
    if value is not None:
        update["value"] = value
    return gr.update(**update)


def _preprocessor(module: str | None) -> preprocessors.Preprocessor | None:
    try:
        return preprocessors.get(module or NO_MODULE)
    except preprocessors.UnknownPreprocessor:
        return None


def slider_updates(module: str, pixel_perfect: bool, values: tuple[float | None, ...] | None = None) -> list[Any]:
    """Updates of the resolution, threshold A and threshold B sliders for `module`: its labels and ranges,
    hidden where it has no such slider (the resolution also under Pixel Perfect, which computes it). `values`
    None resets each to the preprocessor's default (a person chose another preprocessor); otherwise each value
    is kept when it lies in range, else the default (a pasted infotext)."""
    p = _preprocessor(module)
    sliders = (p.resolution, p.slider_a, p.slider_b) if p is not None else (None, None, None)
    updates = []
    for i, slider in enumerate(sliders):
        visible = slider is not None and not (i == 0 and pixel_perfect)
        value = None
        if slider is not None:
            given = None if values is None else values[i]
            value = slider.value if given is None or not slider.minimum <= float(given) <= slider.maximum \
                else float(given)
        updates.append(_slider_update(slider, visible, value))
    return updates


def resolution_visibility(module: str, pixel_perfect: bool) -> Any:
    p = _preprocessor(module)
    return gr.update(visible=p is not None and p.resolution is not None and not pixel_perfect)


def model_visibility(module: str) -> list[Any]:
    """The model dropdown and its 🔄 button: hidden for preprocessors that drive the UNet without a model."""
    p = _preprocessor(module)
    visible = p is None or p.needs_control_model
    return [gr.update(visible=visible), gr.update(visible=visible)]


def on_control_type(control_type: str, pixel_perfect: bool) -> list[Any]:
    """A person picked a control type: both dropdowns filtered, the type's defaults chosen, sliders reset."""
    modules, models, module, model = choices_for(control_type)
    return [gr.update(choices=modules, value=module), gr.update(choices=models, value=model),
            *slider_updates(module, pixel_perfect), *model_visibility(module)]


def on_module(module: str, pixel_perfect: bool) -> list[Any]:
    """A person picked a preprocessor: its sliders at their defaults, the model shown when it needs one."""
    return [*slider_updates(module, pixel_perfect), *model_visibility(module)]


def refreshed_models(control_type: str, current: str | None) -> Any:
    """🔄: rescan the model folders; the choice stays when its file is still there."""
    from modules.controlnet import files

    files.refresh()
    choices = model_choices(control_type)
    return gr.update(choices=choices, value=current if current in choices else NO_MODEL)


# --- the unit ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnreadablePicture:
    """An upload the page could not decode, kept in the unit so that Generate is refused with the reason (and
    the unit does not quietly fall back to the img2img picture)."""

    message: str

    def load(self) -> Any:  # ControlNetUnit reads deferred pictures through .load() when the job runs
        raise UnitError(self.message)


def _picture(value: Any) -> Any:
    from modules.ui import uploads

    if isinstance(value, uploads.UnreadableUpload):
        return UnreadablePicture(value.message)
    return value


def _slider_value(slider: preprocessors.Slider | None, value: Any) -> float:
    """-1 (the extension's "not used") for a slider the preprocessor does not have."""
    if slider is None or value is None:
        return -1
    return float(value)


def unit_value(index: int, *values: Any) -> tuple[Any, str]:
    """The unit's state from its controls (CONTROL_NAMES order) and a message for the unit ("" when fine).

    A disabled unit is None (empty). An enabled one is a ControlNetUnit; one the job would refuse (start after
    end, a mask of another size, an unreadable upload) keeps what makes Generate refuse it by name, and the
    message says why now."""
    from modules.ui import common

    given = dict(zip(CONTROL_NAMES, values, strict=True))
    if not given["enabled"]:
        return None, ""
    p = _preprocessor(given["module"])
    fields: dict[str, Any] = {
        "enabled": True, "module": p.name if p is not None else str(given["module"]),
        "model": given["model"] or NO_MODEL, "weight": given["weight"], "guidance_start": given["guidance_start"],
        "guidance_end": given["guidance_end"], "low_vram": bool(given["low_vram"]),
        "pixel_perfect": bool(given["pixel_perfect"]),
        "processor_res": int(_slider_value(p.resolution if p else None, given["processor_res"])),
        "threshold_a": _slider_value(p.slider_a if p else None, given["threshold_a"]),
        "threshold_b": _slider_value(p.slider_b if p else None, given["threshold_b"]),
        "control_mode": given["control_mode"] or ControlMode.BALANCED.value,
        "resize_mode": given["resize_mode"] or ResizeMode.INNER_FIT.value,
        "hr_option": given["hr_option"] or HiResFixOption.BOTH.value,
    }
    if given["independent"] and given["image"] is not None:
        fields["image"] = {"image": _picture(given["image"]), "mask": _picture(given["mask"])}
    unit = None
    try:
        if p is None:
            raise UnitError(f'preprocessor "{given["module"]}" does not exist')
        unit = ControlNetUnit.from_api(fields)
        unit.rgba_images()  # the pictures checked now, as the job will check them
    except UnitError as e:
        return (unit if unit is not None else fields), common.error_html(f"ControlNet {index}: {e}")
    return unit, ""


# --- paste ---------------------------------------------------------------------------------------------------------


def pasted_values(text: str | None) -> tuple[list[Any], str]:
    """A unit's `ControlNet N` infotext value as updates of the controls (PASTED_NAMES order) and a notice.

    The unit is enabled with the pasted values; the control type goes back to "All" so both dropdowns list
    everything; the model is found by title, else by the hash in its title (a renamed file), else by name.
    Nothing changes for empty text (no such unit in the infotext)."""
    from modules.controlnet import files

    skip = [gr.skip()] * len(PASTED_NAMES)
    if not text or not str(text).strip():
        return skip, ""
    try:
        unit = ControlNetUnit.from_infotext(str(text))
    except UnitError as e:
        return skip, f"Could not read the pasted ControlNet unit: {e}"
    notes = []
    p = _preprocessor(unit.module)
    if p is None:
        notes.append(f'preprocessor "{unit.module}" does not exist here; "none" is chosen')
        p = preprocessors.get(NO_MODULE)
    modules, models, _, _ = choices_for(ALL_TYPES)
    model = NO_MODEL
    if unit.uses_model:
        found = files.find(unit.model)
        if found is None:
            notes.append(f'model "{unit.model}" is not in the ControlNet model folders')
        else:
            model = found.title
            if model not in models:  # found by a rescan after the choices were read
                models = model_choices(ALL_TYPES)
    sliders = slider_updates(p.name, unit.pixel_perfect, (unit.processor_res, unit.threshold_a, unit.threshold_b))
    shown = p.needs_control_model
    values = [True, ALL_TYPES, gr.update(choices=modules, value=p.name),
              gr.update(choices=models, value=model, visible=shown), gr.update(visible=shown), unit.weight,
              unit.guidance_start, unit.guidance_end, unit.pixel_perfect, *sliders, unit.control_mode.value,
              unit.resize_mode.value]
    return values, ("Pasted with changes: " + "; ".join(notes) if notes else "")


# --- preview -------------------------------------------------------------------------------------------------------


def _shown_with_mask(detected: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masked area half transparent, as the extension shows an inpaint map."""
    from PIL import Image

    if mask.shape[:2] != detected.shape[:2]:
        mask = np.asarray(Image.fromarray(mask).resize((detected.shape[1], detected.shape[0]), Image.NEAREST))
    return np.dstack([detected[:, :, :3], (255 - mask // 2).astype(np.uint8)])


def preview_work(image: Any, mask: Any, module: str, processor_res: float, threshold_a: float, threshold_b: float,
                 pixel_perfect: bool, resize_mode: str, width: float | None, height: float | None):
    """The 💥 button's job from the controls' values; refusals now, as ValueErrors with the message to show.
    The job returns the detected map (HxWx3, or HxWx4 showing an inpaint mask)."""
    from modules.ui import uploads

    if image is None:
        raise ValueError("Upload a control image to preview its preprocessor")
    picture = uploads.readable(image)
    mask = uploads.readable(mask)
    p = _preprocessor(module)
    if p is None:
        raise ValueError(f'ControlNet preprocessor "{module}" does not exist')
    rgba = ControlNetUnit(module=p.name, images=[(picture, mask)]).rgba_images()
    if rgba is None:
        raise ValueError("Upload a control image to preview its preprocessor")
    rgb = np.ascontiguousarray(rgba[0][:, :, :3])
    alpha = rgba[0][:, :, 3]
    if pixel_perfect and p.resolution is not None and width and height:
        resolution = hints.pixel_perfect_resolution(rgb, int(height), int(width), ResizeMode(resize_mode))
    else:
        resolution = int(processor_res) if p.resolution is not None and processor_res is not None else 512
    a = _slider_value(p.slider_a, threshold_a)
    b = _slider_value(p.slider_b, threshold_b)

    def job() -> np.ndarray:
        try:
            detected = preprocessors.run(p.name, rgb, resolution, a, b)
        except preprocessors.MissingWeights as e:  # said with the path inside the data dir, not the server's
            raise ValueError(missing_weights_message(e)) from None
        if "inpaint" in p.name and alpha.any():
            return _shown_with_mask(detected, alpha)
        return detected

    return job


def missing_weights_message(error: preprocessors.MissingWeights) -> str:
    from modules.depth.weights import display_path

    return (f'ControlNet preprocessor "{error.preprocessor}" needs its weights at {display_path(error.path)}; '
            "the file is missing")
