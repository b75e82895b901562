"""sd-webui-controlnet's IP-Adapter preprocessors. Each hands the picture on unchanged: the CLIP vision encoding
happens when the unit runs (modules/controlnet/ip_adapter.py), with the encoder the preprocessor names
(`ip_adapter.ENCODER_FOR_MODULE`). Names are the extension's module keys; its newer labels ("ip-adapter_clip_h",
"ip-adapter_clip_g") are accepted as aliases. The FaceID preprocessors (insightface) are not registered.
"""

from __future__ import annotations

from modules.controlnet.preprocessor_registry import Preprocessor, register
from modules.controlnet.preprocessors_basic import identity

CONTROL_TYPE = "IP-Adapter"


def _register_all() -> None:
    for name, aliases in (("ip-adapter_clip_sd15", ("ip-adapter_clip_sd15", "ip-adapter_clip_h")),
                          ("ip-adapter_clip_sdxl", ("ip-adapter_clip_sdxl", "ip-adapter_clip_g")),
                          ("ip-adapter_clip_sdxl_plus_vith", ()),
                          ("ip-adapter-auto", ())):
        register(Preprocessor(name, CONTROL_TYPE, identity, resolution=None, model_free=False, aliases=aliases))


_register_all()
