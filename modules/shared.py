"""Process-wide state that A1111 extensions read: `shared.opts`, `shared.cmd_opts`, `shared.sd_model`, ...

Kept tiny and cheap to import (no torch). Code reads these as `shared.X` at call time, never
`from modules.shared import X`, because `set_cmd_opts` and the model manager rebind them.
"""

from __future__ import annotations

import argparse
from typing import Any

from modules import cmd_args, paths
from modules.options import OptionHTML, OptionInfo, Options, options_section  # noqa: F401  (extensions use shared.X)
from modules.shared_options import options_templates, restricted_opts

parser = cmd_args.parser
cmd_opts: argparse.Namespace = parser.parse_args([])

# A1111 builds opts over the templates dict itself, so options added later show up in both.
opts = Options(options_templates, restricted_opts)
config_filename: str = paths.data_file("config.json")

sd_model: Any = None  # set by the model manager
device: Any = None  # torch.device, set once torch is imported

script_path: str = paths.script_path
data_path: str = paths.data_path
models_path: str = paths.models_path
extensions_dir: str = paths.extensions_dir


def set_cmd_opts(ns: argparse.Namespace) -> None:
    """Adopt parsed flags: point paths at --data-dir/--models-dir and refresh what derives from them."""
    global cmd_opts, config_filename, data_path, models_path, extensions_dir
    cmd_opts = ns
    paths.configure(ns.data_dir, ns.models_dir)
    config_filename = paths.data_file("config.json")
    data_path = paths.data_path
    models_path = paths.models_path
    extensions_dir = paths.extensions_dir

from modules.shared_state import State  # noqa: E402  (no cycle: shared_state reads shared only at call time)

state = State()  # progress, interrupt/skip flags and live preview of the running job
