"""Old name of modules.infotext_utils, still imported by extensions. It is the very same module object."""

import sys

from modules import infotext_utils

sys.modules[__name__] = infotext_utils
