"""ControlNet preprocessors: the registry (`modules.controlnet.preprocessor_registry`) with every built-in
registered. Callers import this module; the built-ins import the registry module, so neither imports the other back.
"""

from modules.controlnet import (  # noqa: F401  (each registers its preprocessors on import)
    nets,
    preprocessors_basic,
    preprocessors_depth,
    preprocessors_ip_adapter,
)
from modules.controlnet.preprocessor_registry import *  # noqa: F403
from modules.controlnet.preprocessor_registry import __all__  # noqa: F401
