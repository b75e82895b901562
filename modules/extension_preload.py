"""Extensions' `preload.py`: `preload(parser)` runs before the strict parse of the command line, so the flags an
extension adds there are accepted (A1111's `script_loading.preload_extensions`).

The launcher calls `parse_args()` instead of `cmd_args.parse_args()`: a lenient parse finds --data-dir and the
--disable-*-extensions flags, config.json says which extensions are disabled, every enabled extension's
preload.py runs, then the strict parse runs with their flags known. A preload.py that fails is reported by
extension name and the others still run; its flags are then unknown, so the strict parse names them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from modules import cmd_args, extensions, paths

FILENAME = "preload.py"


def read_settings(filename: str) -> dict[str, Any]:
    """config.json as it is on disk; {} when missing or unreadable (the settings loader reports that later)."""
    try:
        with open(filename, encoding="utf8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# extension folder -> (the error, its traceback) or None: each preload.py runs once per process, however many
# times the command line is parsed (the launcher parses it before and after choosing its interpreter).
_done: dict[str, tuple[str, str] | None] = {}


def run_preload(ext: extensions.Extension, parser: argparse.ArgumentParser) -> tuple[str, str] | None:
    """Run one extension's preload.py, if it has one; (message, traceback) when it fails."""
    path = os.path.join(ext.path, FILENAME)
    if not os.path.isfile(path):
        return None
    name = "preload_" + "".join(c if c.isalnum() else "_" for c in ext.name)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        preload = getattr(module, "preload", None)
        if callable(preload):
            preload(parser)
    except (Exception, SystemExit) as e:  # SystemExit: a preload that parses the command line itself
        return (f'Error running preload.py of extension "{ext.name}": {type(e).__name__}: {e}',
                traceback.format_exc())
    return None


def run_preloads(parser: argparse.ArgumentParser | None = None) -> None:
    """preload.py of every enabled extension, in load order (call after `extensions.list_extensions`)."""
    parser = cmd_args.parser if parser is None else parser
    for ext in extensions.active():
        key = os.path.realpath(ext.path)
        if key not in _done:
            _done[key] = run_preload(ext, parser)
        failure = _done[key]
        if failure is not None:
            extensions.report(failure[0], detail=failure[1])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Report nothing: the launcher's first pass, before it re-runs itself in its venv where it reports."""
    logger = logging.getLogger(extensions.__name__)
    saved_errors, saved_disabled = list(extensions.errors), logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = saved_disabled
        extensions.errors[:] = saved_errors


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
               quiet: bool = False) -> argparse.Namespace:
    """The strict parse of `cmd_args.parse_args`, with the flags of enabled extensions' preload.py added first."""
    early = cmd_args.parse_args(argv, environ, strict=False)
    paths.configure(early.data_dir, early.models_dir)
    settings = read_settings(early.ui_settings_file or paths.data_file("config.json"))
    with _quiet() if quiet else contextlib.nullcontext():
        extensions.list_extensions(settings, early)
        run_preloads()
    return cmd_args.parse_args(argv, environ)
