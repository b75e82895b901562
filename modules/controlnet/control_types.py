"""Control types as sd-webui-controlnet groups them: each type's preprocessors (from the registry) and models
(files whose title names the type or one of its keywords), with the extension's defaults. The API's
`/controlnet/control_types` and the page's Control Type radio both read this.
"""

from __future__ import annotations

from typing import Any

NO_MODEL = "None"  # the extension's name for "no model", first in every model list
# The extension's extra keywords per control type (lower case): a model whose title holds one belongs to the type.
TYPE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "instructp2p": ("ip2p",),
    "segmentation": ("seg",),
    "normalmap": ("normal",),
    "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"),
    "ip-adapter": ("ip_adapter", "ipadapter"),
    "scribble/sketch": ("scribble", "sketch"),
    "tile/blur": ("tile", "blur"),
    "openpose": ("openpose", "densepose"),
}


def model_titles(update: bool) -> list[str]:
    """Titles ("name [hash]") of every control model file, naturally sorted; rescanned first when `update`."""
    from modules.controlnet import files

    if update:
        files.refresh()
    return [f.title for f in files.list_files()]


def _matches(control_type: str, title: str) -> bool:
    pattern = control_type.lower()
    text = title.lower()
    return pattern in text or any(word in text for word in TYPE_KEYWORDS.get(pattern, ()))


def _default_model(models: list[str]) -> str:
    """The extension's choice: "None" when no model fits, else the first ControlNet 1.1 one ("11" in the name),
    else the first that fits."""
    fitting = [m for m in models if m != NO_MODEL]
    if not fitting:
        return NO_MODEL
    return next((m for m in fitting if "11" in m.split("[")[0]), fitting[0])


def control_types() -> dict[str, dict[str, Any]]:
    """The registry's control types with each one's model list filled from the model files."""
    from modules.controlnet import preprocessors

    titles = model_titles(update=False)
    types = preprocessors.control_types()
    for name, entry in types.items():
        if name == "All":
            entry["model_list"], entry["default_model"] = [NO_MODEL, *titles], NO_MODEL
            continue
        models = [NO_MODEL, *(t for t in titles if _matches(name, t))]
        entry["model_list"], entry["default_model"] = models, _default_model(models)
    return types
