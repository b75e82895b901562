"""depth2img controls of the img2img tab (built-in always-on script): which depth estimator an SD2 depth
checkpoint uses, and an optional depth map (near = bright) that replaces the estimate.

"Automatic" leaves the request's own choice (the API's `depth_estimator`, else MiDaS DPT-Hybrid, the estimator
the model was trained with). The values take effect only with a depth checkpoint; a depth map given with any
other model is refused by name (modules/processing.py). The conditioning itself is modules/depth/depth2img.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modules import scripts

TITLE = "Depth"
AUTOMATIC = "Automatic"


class Script(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible if is_img2img else False

    def ui(self, is_img2img: bool) -> list[Any]:
        from modules.ui import depth as depth_ui

        controls = depth_ui.img2img_controls(AUTOMATIC)
        return [controls.estimator, controls.depth_map]

    def api_args(self, args: list[Any], decode_image: Callable[[str, tuple], Any]) -> list[Any]:
        """[estimator, base64 depth map or null]: the name checked and the picture's header read now."""
        from modules.depth import estimators

        estimator = args[0] if args else AUTOMATIC
        if estimator not in (AUTOMATIC, None, "", *estimators.names()):
            raise ValueError(f"unknown depth estimator {estimator!r}; known: {', '.join(estimators.names())}")
        depth_map = args[1] if len(args) > 1 else None
        return [estimator, decode_image(depth_map, (1,)) if depth_map else None]

    def process(self, p: Any, estimator: Any = AUTOMATIC, depth_map: Any = None, *_: Any) -> None:
        from modules.ui import depth as depth_ui

        if estimator and estimator != AUTOMATIC:
            p.depth_estimator = str(estimator)
        if depth_map is None or depth_map == "":
            return
        if hasattr(depth_map, "load"):  # an API upload checked before the job was queued
            p.depth_map = depth_map.load()
        elif not hasattr(depth_map, "size"):  # a file the page uploaded
            p.depth_map = depth_ui.open_depth_map(depth_map)
        else:
            p.depth_map = depth_map
