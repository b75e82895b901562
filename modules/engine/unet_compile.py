"""Compiled UNet and VAE-decoder forwards (setting `compile_unet`).

`torch.compile` turns a network's forward into fused kernels; replayed inside our CUDA graph
(modules.engine.unet_graph) the launch overhead goes too. Parameters are graph inputs to the compiled code
(dynamo's default for nn.Module parameters), so the model patcher's in-place LoRA weights and any change of
prompt, CFG scale or ControlNet weight (all tensors) never recompile. What does recompile is a new input
structure: a new image size or batch, ControlNet residuals present or absent; each compiles once.

No job waits for the compiler. The first call with a new structure starts a compile in a child process
(modules.engine.compile_worker) and runs the plain forward (CUDA graphs or eager) meanwhile; the child rebuilds the
network from its classes, dtypes, devices and strides (not its weights), compiles it for those inputs and runs it
once, which fills inductor's disk caches (generated code, FX graphs) under `compile_cache_dir()`. The first call
after the child has finished compiles in the caller's thread, now mostly from those caches, and from then on
that structure runs compiled. One child runs at a time (each holds a copy of the network on the GPU); the others
wait in a queue (modules.engine.compile_processes). A child that fails or runs past its time is logged once and its structure keeps running
uncompiled. A module or forward that cannot be pickled by reference (a class defined in a function, a forward
replaced by a closure) is compiled in the caller's thread as before, and so is everything when `IN_WORKER` is off
or the backend is not in `WORKER_BACKENDS`: a callable (tests' counting backend) cannot go to another process, and
backends without disk caches ("eager", "aot_eager") would gain nothing from a child.

Compiling cannot run on a thread of this process while jobs go on: torch.fx's tracer (used by inductor and
AOTAutograd) replaces `nn.Module.__call__` for the whole process while it traces, so a network running in another
thread meanwhile fails ("module is not installed as a submodule"; seen in this project's test suite). The
in-thread compile after a child has finished still traces, in the job's own thread, between two of its calls.
Inductor's caches are keyed by the compiler on the graph (architecture, dtypes, shapes) and the torch version, so
after a restart a structure compiled before also costs seconds of tracing instead of minutes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from modules.engine import compile_processes
from modules.engine.compile_cache import use_disk_cache
from modules.engine.compile_processes import WorkerJob, wait_for_workers  # noqa: F401 (tests and benchmarks wait here)
from modules.engine.compile_worker import failure_cause

log = logging.getLogger(__name__)

Forward = Callable[..., Any]
# the compiler backend; tests use a counting backend over dynamo's tracing (no kernels generated)
BACKEND: str | Callable[..., Any] = "inductor"
# compile new structures in a child process; off: in the job's thread, the job waiting
IN_WORKER = True
# backends whose work a child leaves in disk caches for the job's own compile (tests add dynamo's "eager")
WORKER_BACKENDS: frozenset[str] = frozenset({"inductor"})
INDUCTOR_OPTIONS = {
    # 1x1 convolutions as matrix products let inductor fuse their epilogues (diffusers' speed guide uses this)
    "conv_1x1_as_mm": True,
    "epilogue_fusion": False,
}


def _options(backend: Any) -> dict[str, Any] | None:
    return INDUCTOR_OPTIONS if backend == "inductor" else None


def use_channels_last(module: torch.nn.Module) -> None:
    """Store the module's 4-D weights channels-last, once, before it is first compiled: inductor's convolutions
    are faster on that layout (diffusers' speed guide does the same) and the compiled graph is specialised on it.
    The weights keep their values; the patcher is told that its storages changed (graphs recorded over the old
    ones are stale). The layout stays when compiling is turned off again."""
    if getattr(module, "_sd_channels_last", False):
        return
    module.to(memory_format=torch.channels_last)
    module._sd_channels_last = True
    patcher = getattr(module, "_sd_patcher", None)
    if patcher is not None:
        patcher.storages_replaced()


def input_key(args: tuple, kwargs: dict) -> tuple:
    """What makes the compiler specialise: the structure, and each tensor's shape, dtype and device."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    return (str(spec), tuple((tuple(v.shape), v.dtype, str(v.device)) if isinstance(v, torch.Tensor) else repr(v)
                             for v in leaves))


# --- compiled forwards -----------------------------------------------------------------------------------------

@dataclass
class _ModuleCompiler:
    """One module's compiled forward, the input structures it is ready for, the compile processes started for it,
    and whether compiling failed."""

    compiled: Forward
    version: tuple
    backend: Any
    ready: set[tuple] = field(default_factory=set)
    failed: bool = False
    jobs: dict[tuple, WorkerJob] = field(default_factory=dict)
    uncompiled: set[tuple] = field(default_factory=set)  # a compile process failed for these inputs
    in_thread: bool = False  # this module cannot go to a compile process


def _module_version(module: torch.nn.Module) -> tuple:
    """A changed structure (attention processors swapped or switched to other kernels, patcher storages replaced,
    weights moved or cast) gets a fresh compiled forward rather than dynamo's guards failing inside a job."""
    from modules import attention_optimization
    from modules.engine.unet_graph import structure_version

    patcher = getattr(module, "_sd_patcher", None)
    first = next(module.parameters())
    return (structure_version(module), getattr(patcher, "storage_version", 0), first.device, first.dtype,
            attention_optimization.version())


def _make_compiler(module: torch.nn.Module, forward: Forward, backend: Any) -> _ModuleCompiler:
    use_disk_cache()
    compiled = torch.compile(forward, backend=backend, dynamic=False, fullgraph=False, options=_options(backend))
    return _ModuleCompiler(compiled=compiled, version=_module_version(module), backend=backend)


def _may_compile_here(state: _ModuleCompiler, key: tuple, module: torch.nn.Module, forward: Forward,
                      args: tuple, kwargs: dict) -> bool:
    """Whether this call may compile in its thread: a compile process has finished for these inputs (its caches
    make this quick), or none is used. Otherwise starts one the first time and says no."""
    if not IN_WORKER or not isinstance(state.backend, str) or state.backend not in WORKER_BACKENDS or state.in_thread:
        return True
    with compile_processes.start_lock:  # a decode outside the queue (an API call) may meet the same new structure meanwhile
        job = state.jobs.get(key)
        if job is None and not state.in_thread:
            job = compile_processes.start(module, forward, args, kwargs, state.backend, _options(state.backend))
            if job is None:
                state.in_thread = True
            else:
                state.jobs[key] = job
    if job is None:
        return True
    if job.status == "done":
        return True
    if job.status == "failed":
        state.uncompiled.add(key)
    return False


def forward_for(module: torch.nn.Module, forward: Forward, args: tuple, kwargs: dict) -> Forward:
    """The compiled `forward` for these inputs once it is ready, `forward` itself until then (a compile process
    is working on it, see the module docstring) and for good when compiling failed (logged once; the module keeps
    running uncompiled). With `IN_WORKER` off or a backend outside `WORKER_BACKENDS`, compiles now, in this
    thread."""
    from modules.engine.unet_graph import current_variant

    if current_variant(module) is not None:  # a per-job patch (token merging): see modules.engine.token_merging
        return forward
    use_channels_last(module)
    state: _ModuleCompiler | None = getattr(module, "_sd_compiler", None)
    if state is None or state.version != _module_version(module) or state.backend != BACKEND:
        state = _make_compiler(module, forward, BACKEND)
        module._sd_compiler = state
    if state.failed:
        return forward
    key = input_key(args, kwargs)
    if key in state.ready:
        return state.compiled
    if key in state.uncompiled or not _may_compile_here(state, key, module, forward, args, kwargs):
        return forward
    copies, copied_kwargs = pytree.tree_map(
        lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, (args, kwargs))
    try:  # a first call on copies, in the caller's autograd mode (dynamo guards on it): compiles
        state.compiled(module, *copies, **copied_kwargs)
    except Exception as e:  # a compiler failure must never fail a job: the plain forward keeps running
        log.warning("compiling %s failed (%s); it keeps running uncompiled", type(module).__name__,
                    failure_cause(e))
        state.failed = True
        return forward
    state.ready.add(key)
    return state.compiled
