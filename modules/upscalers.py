"""The upscaler registry: `refresh()` fills `shared.sd_upscalers` as A1111's `load_upscalers` does.

None, Lanczos and Nearest come first, then one `UpscalerData` per model file of every model folder (and of any
`Upscaler` subclass an extension defines), sorted by name without regard to case, as in A1111. Called at
start-up and by the refresh buttons; `names()` is what the upscaler dropdowns and settings offer.
"""

from __future__ import annotations

import logging
from typing import Any

from modules.upscaler import Upscaler, UpscalerData, UpscalerLanczos, UpscalerNearest, UpscalerNone

log = logging.getLogger(__name__)

BUILT_IN = (UpscalerNone, UpscalerLanczos, UpscalerNearest)


def _extension_upscaler_classes() -> list[type[Upscaler]]:
    """Upscaler subclasses defined outside this program (A1111 extensions find theirs this way)."""
    from modules import upscaler_models

    ours = set(BUILT_IN) | set(upscaler_models.MODEL_UPSCALERS) | {upscaler_models.UpscalerSpandrel}
    found: dict[str, type[Upscaler]] = {}
    stack = list(Upscaler.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls in ours or cls.__module__.split(".")[0] in ("modules", "tests") or cls.__module__.startswith("test_"):
            continue
        found.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)  # a reloaded script defines it again
    return list(found.values())


def _scalers_of(cls: type[Upscaler], dirname: str | None) -> list[UpscalerData]:
    try:
        return list(cls(dirname).scalers)
    except Exception as e:  # one broken folder or extension must not empty the whole list
        log.error("Upscaler %s could not list its models: %s", getattr(cls, "name", cls.__name__), e)
        return []


def refresh() -> list[UpscalerData]:
    """Rebuild and return `shared.sd_upscalers`."""
    from modules import shared, upscaler_models

    built_in = [data for cls in BUILT_IN for data in cls().scalers]
    models: list[UpscalerData] = []
    for cls in upscaler_models.MODEL_UPSCALERS:
        models += _scalers_of(cls, None)
    for cls in _extension_upscaler_classes():
        dest = f"{cls.__name__.lower().replace('upscaler', '')}_models_path"  # A1111's flag lookup
        models += _scalers_of(cls, getattr(shared.cmd_opts, dest, None))
    models.sort(key=lambda data: data.name.lower())
    shared.sd_upscalers = built_in + models
    return shared.sd_upscalers


def ensure_listed() -> None:
    """Fill the list once if nobody has (a script or notebook that calls process_images without the web UI's
    start-up); a start-up refresh, or a later one, is not repeated."""
    from modules import shared

    if not shared.sd_upscalers:
        refresh()


def names() -> list[str]:
    from modules import shared

    return [data.name for data in shared.sd_upscalers]


def find(name: str | None) -> UpscalerData | None:
    from modules import shared

    return next((data for data in shared.sd_upscalers if data.name == name), None)


def api_items() -> list[dict[str, Any]]:
    """`/sdapi/v1/upscalers` in A1111's shape."""
    from modules import shared

    return [
        {
            "name": data.name,
            "model_name": data.scaler.model_name if data.scaler is not None else None,
            "model_path": data.data_path,
            "model_url": None,
            "scale": data.scale,
        }
        for data in shared.sd_upscalers
    ]


def realesrgan_items() -> list[dict[str, Any]]:
    """`/sdapi/v1/realesrgan-models`: the RealESRGAN folder's models, `[{name, path, scale}]`."""
    from modules import shared, upscaler_models

    return [
        {"name": data.name, "path": data.data_path, "scale": data.scale}
        for data in shared.sd_upscalers
        if isinstance(data.scaler, upscaler_models.UpscalerRealESRGAN)
    ]
