"""The choices of A1111's "Cross attention optimization" setting, and which one runs under the command line.

Torch-free, so the settings templates (modules.shared_options) can check values against them when config.json
is read: an A1111 config naming an optimization this build lacks ("Doggettx", "sub-quadratic") falls back to
"Automatic" with a warning instead of reaching the Settings page. What each choice does to the kernels is in
modules.attention_optimization.
"""

from __future__ import annotations

import functools
import importlib.util

AUTOMATIC = "Automatic"
XFORMERS = "xformers"
SDP_NO_MEM = "sdp-no-mem - scaled dot product without memory efficient attention"
SDP = "sdp - scaled dot product"
NONE = "None"
RUNNABLE = (XFORMERS, SDP_NO_MEM, SDP, NONE)


@functools.cache
def xformers_installed() -> bool:
    """Whether the package is there; looked up, not imported (importing it imports torch)."""
    return importlib.util.find_spec("xformers") is not None


def choices() -> list[str]:
    """The setting's dropdown, in A1111's order (Automatic, then by priority, then None); xformers where installed."""
    return [AUTOMATIC] + ([XFORMERS] if xformers_installed() else []) + [SDP_NO_MEM, SDP, NONE]


def resolve(setting: str, cmd_opts: object) -> str:
    """The choice that runs for `setting` (a dropdown value) under the command-line flags, as A1111 picks it."""
    flag = lambda name: bool(getattr(cmd_opts, name, False))  # noqa: E731
    if setting == AUTOMATIC:
        if flag("disable_opt_split_attention"):
            return NONE
        if (flag("xformers") or flag("force_enable_xformers")) and xformers_installed():
            return XFORMERS
        return SDP_NO_MEM if flag("opt_sdp_no_mem_attention") else SDP
    if setting == XFORMERS and not xformers_installed():  # a config copied from a machine that has it
        return SDP
    return setting if setting in RUNNABLE else SDP
