"""Compiled UNet forwards (setting `compile_unet`), made in the background so no job waits for the compiler.

`torch.compile` turns the UNet's forward into fused kernels; replayed inside our CUDA graph
(modules.engine.unet_graph) the launch overhead goes too. Parameters are graph inputs to the compiled code
(dynamo's default for nn.Module parameters), so the model patcher's in-place LoRA weights and any change of
prompt, CFG scale or ControlNet weight (all tensors) never recompile. What does recompile is a new input
structure: a new image size or batch, ControlNet residuals present or absent; each compiles once.

Compilation runs on a worker thread. Until a given input structure is compiled, `forward_for` answers with the
plain forward, so the first job at a new size runs at once (graphs or eager) while the compiler works; later
calls with that structure get the compiled forward. Inductor's caches (generated code, FX graphs, autotuning)
live on disk under `compile_cache_dir()`: the compiler keys them on the graph (architecture, dtype, shapes) and
the torch version, so after a restart a structure compiled before is ready in seconds instead of minutes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)

Forward = Callable[..., Any]
# benchmarks and tests set this to compile in the caller's thread instead of the background
WAIT_FOR_COMPILE = False
# the compiler backend; tests use "aot_eager" (the same tracing without generating kernels)
BACKEND = "inductor"
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


def _detached_copy(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, (args, kwargs))


@dataclass
class _ModuleCompiler:
    """One module's compiled forward and which input structures it is ready for."""

    compiled: Forward
    version: tuple
    ready: set[tuple] = field(default_factory=set)
    pending: set[tuple] = field(default_factory=set)
    failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _module_version(module: torch.nn.Module) -> tuple:
    """A changed structure (attention processors swapped, patcher storages replaced, weights moved) needs a fresh
    compile rather than dynamo's guard failing inside a job."""
    from modules.engine.unet_graph import structure_version

    patcher = getattr(module, "_sd_patcher", None)
    first = next(module.parameters())
    return (structure_version(module), getattr(patcher, "storage_version", 0), first.device, first.dtype)


def _make_compiler(module: torch.nn.Module, forward: Forward, backend: str) -> _ModuleCompiler:
    _use_disk_cache()
    options = INDUCTOR_OPTIONS if backend == "inductor" else None
    compiled = torch.compile(forward, backend=backend, dynamic=False, fullgraph=False, options=options)
    return _ModuleCompiler(compiled=compiled, version=_module_version(module))


class _CallerModes:
    """The caller's autograd modes: dynamo guards on them, so the background thread compiles under the same ones
    (otherwise the first compiled call in the job would fail its guards and recompile there)."""

    def __init__(self) -> None:
        self.grad = torch.is_grad_enabled()
        self.inference = torch.is_inference_mode_enabled()

    def __enter__(self) -> None:
        self._stack = [torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad)]
        for manager in self._stack:
            manager.__enter__()

    def __exit__(self, *exc: object) -> None:
        for manager in reversed(self._stack):
            manager.__exit__(None, None, None)


def _compile_in_background(module: torch.nn.Module, state: _ModuleCompiler, key: tuple, args: tuple,
                           kwargs: dict, on_done: Callable[[tuple, bool], None] | None) -> None:
    modes = _CallerModes()

    def work() -> None:
        ok = False
        try:
            stream = torch.cuda.Stream() if args[0].is_cuda else None
            with modes, (torch.cuda.stream(stream) if stream is not None else _nothing()):
                state.compiled(module, *args, **kwargs)
            if stream is not None:
                stream.synchronize()
            ok = True
        except Exception as e:  # a compiler failure must never fail a job: the plain forward keeps running
            log.warning("compiling %s failed (%s); it keeps running uncompiled", type(module).__name__,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            state.failed = True
        with state.lock:
            state.pending.discard(key)
            if ok:
                state.ready.add(key)
        if on_done is not None:
            on_done(key, ok)

    thread = threading.Thread(target=work, name="unet-compile", daemon=True)
    _threads.add(thread)
    thread.start()


_threads: set[threading.Thread] = set()


def wait_for_background(timeout: float | None = None) -> bool:
    """Until every background compilation has finished; False if some still run after `timeout` seconds.
    (Resetting dynamo or leaving the interpreter while one runs crashes the process.)"""
    for thread in list(_threads):
        thread.join(timeout)
        if thread.is_alive():
            return False
        _threads.discard(thread)
    return True


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def forward_for(module: torch.nn.Module, forward: Forward, args: tuple, kwargs: dict, backend: str | None = None,
                wait: bool | None = None, on_done: Callable[[tuple, bool], None] | None = None) -> Forward:
    """The compiled `forward` when it is ready for these inputs, else `forward` itself (compilation for them is
    started in the background the first time). `wait` compiles in the caller's thread instead (benchmarks)."""
    backend = backend or BACKEND
    state: _ModuleCompiler | None = getattr(module, "_sd_compiler", None)
    if state is None or state.version != _module_version(module) or getattr(state, "backend", backend) != backend:
        state = _make_compiler(module, forward, backend)
        state.backend = backend  # type: ignore[attr-defined]
        module._sd_compiler = state
    if state.failed:
        return forward
    key = input_key(args, kwargs)
    with state.lock:
        if key in state.ready:
            return state.compiled
        start = key not in state.pending
        if start:
            state.pending.add(key)
    if start:
        copy_args, copy_kwargs = _detached_copy(args, kwargs)
        if WAIT_FOR_COMPILE if wait is None else wait:
            state.compiled(module, *copy_args, **copy_kwargs)
            with state.lock:
                state.pending.discard(key)
                state.ready.add(key)
            return state.compiled
        _compile_in_background(module, state, key, copy_args, copy_kwargs, on_done)
    return forward


def is_ready(module: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    state: _ModuleCompiler | None = getattr(module, "_sd_compiler", None)
    return state is not None and input_key(args, kwargs) in state.ready


def forget(module: torch.nn.Module) -> None:
    """Drop a module's compiled forwards (e.g. the model is unloaded)."""
    if hasattr(module, "_sd_compiler"):
        del module._sd_compiler
