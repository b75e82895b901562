"""Extras "CodeFormer" (A1111's): restore faces with CodeFormer; "Weight" 0 is the strongest effect."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from modules import scripts_postprocessing
from modules.postprocessing import blend_restored, face_restorer
from modules.ui_components import InputAccordion


class ScriptPostprocessingCodeFormer(scripts_postprocessing.ScriptPostprocessing):
    name = "CodeFormer"
    order = 3000

    def ui(self) -> dict[str, Any]:
        with InputAccordion(False, label="CodeFormer", elem_id="extras_codeformer") as enable:
            with gr.Row():
                codeformer_visibility = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, label="Visibility",
                                                  value=1.0, elem_id="extras_codeformer_visibility")
                codeformer_weight = gr.Slider(minimum=0.0, maximum=1.0, step=0.001, value=0,
                                              label="Weight (0 = maximum effect, 1 = minimum effect)",
                                              elem_id="extras_codeformer_weight")
        return {"enable": enable, "codeformer_visibility": codeformer_visibility,
                "codeformer_weight": codeformer_weight}

    def process(self, pp: scripts_postprocessing.PostprocessedImage, enable: bool = True,
                codeformer_visibility: float = 1.0, codeformer_weight: float = 0.0) -> None:
        visibility = float(codeformer_visibility or 0)
        if visibility == 0 or not enable:
            return
        restorer = face_restorer("CodeFormer")
        image = pp.image.convert("RGB")
        restored = restorer.restore(np.array(image, dtype=np.uint8), w=float(codeformer_weight))
        pp.image = blend_restored(image, restored, visibility)
        pp.info["CodeFormer visibility"] = round(visibility, 3)
        pp.info["CodeFormer weight"] = round(float(codeformer_weight), 3)
