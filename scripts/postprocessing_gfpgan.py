"""Extras "GFPGAN" (A1111's): restore faces with the GFPGAN restorer, blended in by "Visibility"."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from modules import scripts_postprocessing
from modules.postprocessing import blend_restored, face_restorer
from modules.ui_components import InputAccordion


class ScriptPostprocessingGfpGan(scripts_postprocessing.ScriptPostprocessing):
    name = "GFPGAN"
    order = 2000

    def ui(self) -> dict[str, Any]:
        with InputAccordion(False, label="GFPGAN", elem_id="extras_gfpgan") as enable:
            gfpgan_visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, label="Visibility", value=1.0,
                                          elem_id="extras_gfpgan_visibility")
        return {"enable": enable, "gfpgan_visibility": gfpgan_visibility}

    def process(self, pp: scripts_postprocessing.PostprocessedImage, enable: bool = True,
                gfpgan_visibility: float = 1.0) -> None:
        visibility = float(gfpgan_visibility or 0)
        if visibility == 0 or not enable:
            return
        restorer = face_restorer("GFPGAN")
        image = pp.image.convert("RGB")
        pp.image = blend_restored(image, restorer.restore(np.array(image, dtype=np.uint8)), visibility)
        pp.info["GFPGAN visibility"] = round(visibility, 3)
