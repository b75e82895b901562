"""The model-based ControlNet preprocessors (openpose, line art, soft edge, normal_bae, mlsd, segmentation),
registered under sd-webui-controlnet's UI labels with its internal module keys as aliases.

Importing this package registers them; the networks load only when a preprocessor first runs (see `loading`).
"""

from __future__ import annotations

import functools

from modules.controlnet.nets import edges, mlsd, normal, pose, segmentation
from modules.controlnet.preprocessor_registry import Preprocessor, Slider, register


def _register_all() -> None:
    def add(name: str, control_type: str, fn, aliases: tuple[str, ...] = (), **kwargs) -> None:
        register(Preprocessor(name=name, control_type=control_type, fn=fn, model_free=False, aliases=aliases,
                              **kwargs))

    # OpenPose: body alone, with hands, with face, face alone, everything
    for name, body, hands, face in (("openpose", True, False, False), ("openpose_hand", True, True, False),
                                    ("openpose_face", True, False, True), ("openpose_faceonly", False, False, True),
                                    ("openpose_full", True, True, True)):
        add(name, "OpenPose", functools.partial(pose.openpose, body=body, hands=hands, face=face, name=name))

    add("lineart_realistic", "Lineart", edges.lineart, ("lineart",))
    add("lineart_coarse", "Lineart", functools.partial(edges.lineart, coarse=True, name="lineart_coarse"))
    add("lineart_anime", "Lineart", edges.lineart_anime)

    add("softedge_hed", "SoftEdge", edges.softedge_hed, ("hed",))
    add("softedge_hedsafe", "SoftEdge", functools.partial(edges.softedge_hed, safe=True, name="softedge_hedsafe"),
        ("hed_safe",))
    add("softedge_pidinet", "SoftEdge", edges.softedge_pidinet, ("pidinet",))
    add("softedge_pidisafe", "SoftEdge",
        functools.partial(edges.softedge_pidinet, safe=True, name="softedge_pidisafe"), ("pidinet_safe",))
    add("scribble_hed", "Scribble/Sketch", edges.scribble_hed)
    add("scribble_pidinet", "Scribble/Sketch", edges.scribble_pidinet, ("pidinet_scribble",))
    add("t2ia_sketch_pidi", "T2I-Adapter",
        functools.partial(edges.softedge_pidinet, binary=True, name="t2ia_sketch_pidi"), ("pidinet_sketch",))

    add("normal_bae", "NormalMap", normal.normal_bae)

    add("mlsd", "MLSD", mlsd.mlsd,
        slider_a=Slider("MLSD Value Threshold", 0.01, 2.0, 0.1, 0.01),
        slider_b=Slider("MLSD Distance Threshold", 0.01, 20.0, 0.1, 0.01))

    for p in segmentation.preprocessors():
        register(p)


_register_all()
