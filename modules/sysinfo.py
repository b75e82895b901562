"""System information for bug reports (A1111's Settings > Sysinfo, `/internal/sysinfo`, `--dump-sysinfo`): the
platform, Python, torch and GPU, RAM, the web UI's commit, the flags, extensions, settings and packages, as one JSON
document with a checksum of itself, so a pasted report can be checked for edits.

What goes in is chosen for a public bug report: flags that hold secrets are redacted (`--gradio-auth`,
`--api-auth`, tokens), extension remotes lose their credentials, and of the environment only variables that steer
the launcher are named; their values are not copied either when they could carry a flag list (COMMANDLINE_ARGS).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from typing import Any

from modules import cmd_args, paths, shared

# Launcher settings worth knowing in a report; values of others (tokens, keys, proxies with passwords) stay out.
ENVIRONMENT_NAMES = ("GIT", "INDEX_URL", "TORCH_INDEX_URL", "TORCH_COMMAND", "REQS_FILE", "PYTHONPATH",
                     "GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CUDA_VISIBLE_DEVICES",
                     "PYTORCH_CUDA_ALLOC_CONF", "PYTHONDONTWRITEBYTECODE")
CHECKSUM = "Checksum"
SECRET_SETTING = re.compile(r"(api_?key|token|password|passwd|secret|credentials?)$", re.IGNORECASE)


def _commit() -> str | None:
    from modules import extension_git

    try:
        return extension_git.run(["rev-parse", "HEAD"], paths.script_path) if extension_git.is_repository(
            paths.script_path) else None
    except extension_git.GitError:
        return None


def _torch() -> dict[str, Any]:
    if "torch" not in sys.modules:  # --dump-sysinfo runs before the heavy imports: do not pay for them here
        return {"version": _package_version("torch"), "imported": False}
    import torch

    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "cuda_available": torch.cuda.is_available(), "devices": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                                    "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ram() -> dict[str, Any]:
    import psutil

    memory = psutil.virtual_memory()
    return {"total_gib": round(memory.total / 2**30, 1), "available_gib": round(memory.available / 2**30, 1)}


def _extensions() -> list[dict[str, Any]]:
    from modules import extensions

    return [{"name": ext.name, "enabled": ext.enabled, "builtin": ext.is_builtin, "version": ext.version,
             "branch": ext.branch, "remote": ext.remote} for ext in extensions.scan_with_settings()]


def _packages() -> list[str]:
    names = {(dist.metadata["Name"] or "", dist.version) for dist in importlib.metadata.distributions()}
    return sorted(f"{name}=={version}" for name, version in names if name)


def get(with_extensions_and_settings: bool = True) -> dict[str, Any]:
    """The report as a dict (no checksum yet). `--dump-sysinfo` leaves out extensions and settings, as A1111."""
    info: dict[str, Any] = {
        "Platform": platform.platform(),
        "Python": platform.python_version(),
        "Version": _version(),
        "Commit": _commit(),
        "Data path": paths.data_path,
        "Commandline": {k: v for k, v in cmd_args.redacted(shared.cmd_opts).items()
                        if v != cmd_args.parser.get_default(k)},
        "Torch": _torch(),
        "CPU": {"model": platform.processor() or platform.machine(), "count": os.cpu_count()},
        "RAM": _ram(),
        "Environment": {name: ("<set>" if name == "PYTHONPATH" else os.environ[name])
                        for name in ENVIRONMENT_NAMES if name in os.environ},
        "Time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if with_extensions_and_settings:
        info["Extensions"] = _extensions()
        info["Config"] = _settings()
    info["Packages"] = _packages()
    return info


def _version() -> str | None:
    processing = sys.modules.get("modules.processing")  # not imported for this alone: it pulls in torch
    return getattr(processing, "VERSION", None)


def _settings() -> dict[str, Any]:
    """The settings, with values of keys named like secrets (an extension's `civitai_api_key`) redacted."""
    return {key: ("<redacted>" if SECRET_SETTING.search(key) and value else value)
            for key, value in shared.opts.data.items()}


def _digest(info: dict[str, Any]) -> str:
    body = {k: v for k, v in info.items() if k != CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def as_text(info: dict[str, Any]) -> str:
    """The JSON text of a report, with its checksum."""
    return json.dumps({**info, CHECKSUM: _digest(info)}, indent=4, default=str)


def check(text: str) -> bool:
    """Whether a report's checksum matches its content (it was not edited after it was made)."""
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return isinstance(info, dict) and info.get(CHECKSUM) == _digest(info)


def file_name() -> str:
    return time.strftime("sysinfo-%Y-%m-%d-%H-%M.json")


def dump(folder: str | None = None) -> str:
    """`--dump-sysinfo`: write a report without extensions or settings into the data dir; its path."""
    from modules import atomic_files

    path = os.path.join(folder or paths.data_path, file_name())
    atomic_files.atomic_write_text(path, as_text(get(with_extensions_and_settings=False)))
    return path
