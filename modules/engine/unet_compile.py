"""Compiled UNet and VAE-decoder forwards (setting `compile_unet`).

`torch.compile` turns a network's forward into fused kernels; replayed inside our CUDA graph
(modules.engine.unet_graph) the launch overhead goes too. Parameters are graph inputs to the compiled code
(dynamo's default for nn.Module parameters), so the model patcher's in-place LoRA weights and any change of
prompt, CFG scale or ControlNet weight (all tensors) never recompile. What does recompile is a new input
structure: a new image size or batch, ControlNet residuals present or absent; each compiles once.

Compilation happens in the job that first needs a structure, in its thread. It cannot run on a thread of its own
while jobs go on: torch.fx's tracer (used by inductor and AOTAutograd) replaces `nn.Module.__call__` for the whole
process while it traces, so a network running in another thread meanwhile fails ("module is not installed as a
submodule"; seen in this project's test suite). Inductor's caches (generated code, FX graphs, autotuning) live on
disk under `compile_cache_dir()`, keyed by the compiler on the graph (architecture, dtypes, shapes) and the torch
version, so after a restart a structure compiled before costs seconds of tracing instead of minutes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)

Forward = Callable[..., Any]
# the compiler backend; tests use a counting backend over dynamo's tracing (no kernels generated)
BACKEND: str | Callable[..., Any] = "inductor"
# each recurring shape (512², 768², 1024², batch 1-8) and each optional-input set compiles once
RECOMPILE_LIMIT = 64
INDUCTOR_OPTIONS = {
    # 1x1 convolutions as matrix products let inductor fuse their epilogues (diffusers' speed guide uses this)
    "conv_1x1_as_mm": True,
    "epilogue_fusion": False,
}


def compile_cache_dir() -> str:
    """Where inductor keeps compiled artifacts: `<data dir>/cache/torch_compile` unless TORCHINDUCTOR_CACHE_DIR
    is already set."""
    from modules import paths

    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(paths.data_path, "cache", "torch_compile")


def _use_disk_cache() -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", compile_cache_dir())
    os.makedirs(os.environ["TORCHINDUCTOR_CACHE_DIR"], exist_ok=True)
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, RECOMPILE_LIMIT * 4)


def input_key(args: tuple, kwargs: dict) -> tuple:
    """What makes the compiler specialise: the structure, and each tensor's shape, dtype and device."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    return (str(spec), tuple((tuple(v.shape), v.dtype, str(v.device)) if isinstance(v, torch.Tensor) else repr(v)
                             for v in leaves))


@dataclass
class _ModuleCompiler:
    """One module's compiled forward, the input structures it is ready for, and whether compiling failed."""

    compiled: Forward
    version: tuple
    backend: Any
    ready: set[tuple] = field(default_factory=set)
    failed: bool = False


def _module_version(module: torch.nn.Module) -> tuple:
    """A changed structure (attention processors swapped, patcher storages replaced, weights moved or cast)
    gets a fresh compiled forward rather than dynamo's guards failing inside a job."""
    from modules.engine.unet_graph import structure_version

    patcher = getattr(module, "_sd_patcher", None)
    first = next(module.parameters())
    return (structure_version(module), getattr(patcher, "storage_version", 0), first.device, first.dtype)


def _make_compiler(module: torch.nn.Module, forward: Forward, backend: Any) -> _ModuleCompiler:
    _use_disk_cache()
    options = INDUCTOR_OPTIONS if backend == "inductor" else None
    compiled = torch.compile(forward, backend=backend, dynamic=False, fullgraph=False, options=options)
    return _ModuleCompiler(compiled=compiled, version=_module_version(module), backend=backend)


def forward_for(module: torch.nn.Module, forward: Forward, args: tuple, kwargs: dict) -> Forward:
    """The compiled `forward` for these inputs, compiling it now (in this thread) the first time; `forward`
    itself when compiling failed (the failure is logged once and the module keeps running uncompiled)."""
    state: _ModuleCompiler | None = getattr(module, "_sd_compiler", None)
    if state is None or state.version != _module_version(module) or state.backend is not BACKEND:
        state = _make_compiler(module, forward, BACKEND)
        module._sd_compiler = state
    if state.failed:
        return forward
    key = input_key(args, kwargs)
    if key not in state.ready:
        copies, copied_kwargs = pytree.tree_map(
            lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, (args, kwargs))
        try:  # a first call on copies, in the caller's autograd mode (dynamo guards on it): compiles
            state.compiled(module, *copies, **copied_kwargs)
        except Exception as e:  # a compiler failure must never fail a job: the plain forward keeps running
            log.warning("compiling %s failed (%s); it keeps running uncompiled", type(module).__name__,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            state.failed = True
            return forward
        state.ready.add(key)
    return state.compiled
