"""ControlNet (the sd-webui-controlnet extension's always-on script, built in): units from the page or from
`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`, run as a UNet hook (modules/controlnet/runtime.py).

The script's arguments are one value per unit (`control_net_unit_count`): a `ControlNetUnit`, the extension's
API dict, or None for a unit left empty. Detected maps are appended to the results (as the extension does)
unless the setting `control_net_no_detectmap` is on or the unit's `save_detected_map` is false; the setting
`control_net_detectmap_autosaving` also saves them under `control_net_detectedmap_dir/<module>/`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from PIL import Image

from modules import scripts, shared
from modules.controlnet import runtime
from modules.controlnet.units import ControlNetUnit, UnitError

log = logging.getLogger(__name__)
TITLE = "ControlNet"


def as_units(args: tuple | list, decode_image: Callable | None = None) -> list[ControlNetUnit]:
    """The script's arguments as units; a bad one is refused naming its position."""
    units = []
    for index, value in enumerate(args):
        if value is None:  # an empty unit keeps its place: later ones stay "ControlNet N" at their own N
            units.append(ControlNetUnit(enabled=False))
            continue
        try:
            units.append(ControlNetUnit.from_api(value, decode_image))
        except UnitError as e:
            raise runtime.ControlUnitError(f"ControlNet {index}: {e}") from None
    return units


class Script(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from modules.controlnet import ui as control_ui

        return control_ui.build(self, is_img2img)

    def api_args(self, args: list[Any], decode_image: Callable[[str, tuple], Any]) -> list[Any]:
        """The request's unit dicts checked and read before the job is queued (images: checked uploads that are
        decoded when the job runs). `decode_image(text, field)` reports errors at `field`."""
        units: list[Any] = []
        for index, value in enumerate(args):
            if value is None:
                units.append(None)
                continue
            try:
                units.append(ControlNetUnit.from_api(
                    value, lambda text, name, i=index: decode_image(text, (i, *str(name).split(".")))))
            except UnitError as e:
                raise runtime.ControlUnitError(f"ControlNet {index}: {e}") from None
        return units

    def process(self, p: Any, *args: Any) -> None:
        units = as_units(args)
        if not any(unit.enabled for unit in units):
            return
        model = p.sd_model
        active = runtime.prepare(units, p, model)
        if not active:
            return
        hook = runtime.ControlNetHook(active, model.vae_scale_factor,
                                      use_graphs=bool(shared.opts.data.get("cuda_graphs", True)),
                                      hires_enabled=bool(getattr(p, "enable_hr", False)))
        p.unet_hooks.append(hook)
        p.controlnet_hook = hook
        p.extra_generation_params.update(runtime.infotext_params(active))

    def before_hr(self, p: Any, *args: Any) -> None:
        hook = getattr(p, "controlnet_hook", None)
        if hook is not None:
            hook.hires = True

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        hook = getattr(p, "controlnet_hook", None)
        if hook is not None:
            hook.hires = False  # each batch starts with its first pass

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        hook = getattr(p, "controlnet_hook", None)
        if hook is None:
            return
        maps = [(u.unit.module, Image.fromarray(u.detected)) for u in hook.units
                if u.unit.module != "none" and u.unit.save_detected_map]
        if shared.opts.data.get("control_net_detectmap_autosaving", False):
            for module, picture in maps:
                save_detected_map(module, picture)
        if not shared.opts.data.get("control_net_no_detectmap", False):
            processed.images.extend(picture for _module, picture in maps)


def save_detected_map(module: str, picture: Image.Image) -> str:
    from modules import images, paths

    folder = shared.opts.data.get("control_net_detectedmap_dir") or "detected_maps"
    if not os.path.isabs(folder):
        folder = os.path.join(paths.data_path, "outputs", folder)
    safe_module = "".join(c if c.isalnum() or c in "_-+" else "_" for c in module)[:64] or "none"
    target = os.path.join(folder, safe_module)
    os.makedirs(target, exist_ok=True)
    return images.save_image(picture, target, "", extension="png")[0]
