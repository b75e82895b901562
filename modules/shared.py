"""Process-wide state that A1111 extensions read: `shared.opts`, `shared.cmd_opts`, `shared.sd_model`, ...

Kept tiny and cheap to import (no torch). Code reads these as `shared.X` at call time, never
`from modules.shared import X`, because `set_cmd_opts` and the model manager rebind them.
`shared.device` and `shared.prompt_styles` are made on first use (torch and styles.csv are not needed before).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Iterator
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
demo: Any = None  # the gradio Blocks of the UI, once it is built

# Registries extensions append to, as in A1111 (nothing built in fills them yet).
sd_upscalers: list[Any] = []
# Hires. fix's latent upscalers (A1111's table: names -> torch.nn.functional.interpolate arguments).
latent_upscale_modes: dict[str, dict[str, Any]] = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
    "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
}
latent_upscale_default_mode = "Latent"
face_restorers: list[Any] = []

script_path: str = paths.script_path
data_path: str = paths.data_path
models_path: str = paths.models_path
extensions_dir: str = paths.extensions_dir
hf_endpoint: str = os.getenv("HF_ENDPOINT") or "https://huggingface.co"


def _settings_file(ns: argparse.Namespace) -> str:
    """--ui-settings-file (A1111's: keep config.json elsewhere, on a notebook's mounted drive say); config.json in
    the data dir by default."""
    return getattr(ns, "ui_settings_file", None) or paths.data_file("config.json")


def _styles_files(ns: argparse.Namespace) -> list[str]:
    return list(getattr(ns, "styles_file", None) or []) or [paths.data_file("styles.csv")]


styles_filename: list[str] = _styles_files(cmd_opts)
hide_dirs: dict[str, bool] = {"visible": not cmd_opts.hide_ui_dir_config}  # A1111: hides folder settings


def set_cmd_opts(ns: argparse.Namespace) -> None:
    """Adopt parsed flags: point paths at --data-dir/--models-dir and refresh what derives from them."""
    global cmd_opts, config_filename, data_path, models_path, extensions_dir, styles_filename, hide_dirs
    cmd_opts = ns
    paths.configure(ns.data_dir, ns.models_dir)
    config_filename = _settings_file(ns)
    data_path = paths.data_path
    models_path = paths.models_path
    extensions_dir = paths.extensions_dir
    styles_filename = _styles_files(ns)
    hide_dirs = {"visible": not getattr(ns, "hide_ui_dir_config", False)}
    globals().pop("prompt_styles", None)  # the styles of the new data dir are read on next use


def __getattr__(name: str) -> Any:
    # Module attributes made on first use (PEP 562); later reads find the real attribute.
    if name == "device":
        from modules import devices  # imports torch

        return devices.device  # not cached: the start-up code may still choose another device
    if name == "prompt_styles":
        from modules.styles import StyleDatabase

        db = StyleDatabase(styles_filename)
        globals()["prompt_styles"] = db
        return db
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- A1111's small helpers (modules.util there), re-exported by its shared module ---


def natural_sort_key(s: str, regex: re.Pattern[str] = re.compile(r"([0-9]+)")) -> list[Any]:
    """Sort key that puts "img2" before "img10"."""
    return [int(text) if text.isdigit() else text.lower() for text in regex.split(s)]


def listfiles(dirname: str) -> list[str]:
    """The files (not folders, not hidden) directly in `dirname`, naturally sorted."""
    names = sorted((x for x in os.listdir(dirname) if not x.startswith(".")), key=natural_sort_key)
    return [f for f in (os.path.join(dirname, x) for x in names) if os.path.isfile(f)]


def walk_files(path: str, allowed_extensions: Iterable[str] | None = None) -> Iterator[str]:
    """Every file under `path` (following links, as A1111), naturally sorted per folder; hidden folders are
    skipped unless the "list_hidden_files" setting is on."""
    if not os.path.exists(path):
        return
    allowed = {e.lower() for e in allowed_extensions} if allowed_extensions is not None else None
    hidden = bool(opts.data.get("list_hidden_files", True))
    for root, _, files in sorted(os.walk(path, followlinks=True), key=lambda x: natural_sort_key(x[0])):
        if not hidden and f"{os.sep}." in root:
            continue
        for filename in sorted(files, key=natural_sort_key):
            if allowed is None or os.path.splitext(filename)[1].lower() in allowed:
                yield os.path.join(root, filename)


def refresh_checkpoints() -> None:
    from modules import sd_models  # imports torch

    sd_models.list_models()


def list_checkpoint_tiles(use_short: bool = False) -> list[str]:
    from modules import sd_models  # imports torch

    return sd_models.checkpoint_tiles(use_short)


from modules.shared_state import State  # noqa: E402  (shared_state reads shared only at call time)

state = State()  # progress, interrupt/skip flags; the running job hands it its preview function
