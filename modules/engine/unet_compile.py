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
wait in a queue. A child that fails or runs past `WORKER_TIMEOUT_S` is logged once and its structure keeps running
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

import atexit
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from modules.engine.compile_cache import compile_cache_dir, use_disk_cache

log = logging.getLogger(__name__)

Forward = Callable[..., Any]
# the compiler backend; tests use a counting backend over dynamo's tracing (no kernels generated)
BACKEND: str | Callable[..., Any] = "inductor"
# compile new structures in a child process; off: in the job's thread, the job waiting
IN_WORKER = True
# backends whose work a child leaves in disk caches for the job's own compile (tests add dynamo's "eager")
WORKER_BACKENDS: frozenset[str] = frozenset({"inductor"})
# a child compiling for longer than this is stopped and its structure runs uncompiled (SDXL on a slow GPU with
# cold caches takes minutes, not an hour)
WORKER_TIMEOUT_S = 3600.0
INDUCTOR_OPTIONS = {
    # 1x1 convolutions as matrix products let inductor fuse their epilogues (diffusers' speed guide uses this)
    "conv_1x1_as_mm": True,
    "epilogue_fusion": False,
}
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


# --- compile processes -----------------------------------------------------------------------------------------

@dataclass
class WorkerJob:
    """One compile in a child process: queued -> running -> done | failed."""

    name: str  # for the log: the module's class and the input shapes
    spec_path: str
    cache_dir: str
    status: str = "queued"
    error: str = ""
    started: float | None = None  # time.monotonic()
    finished: float | None = None
    returncode: int | None = None
    finished_event: threading.Event = field(default_factory=threading.Event)


class _WorkerQueue:
    """Runs compile processes one at a time (each holds a copy of its network on the GPU), from one thread that
    only starts them and waits (it traces nothing, so jobs running meanwhile are safe)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[WorkerJob] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._closed = False
        self.unfinished: list[WorkerJob] = []

    def submit(self, job: WorkerJob) -> None:
        with self._lock:
            if self._thread is None:
                atexit.register(self.close)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="compile-worker-wait", daemon=True)
                self._thread.start()
            self.unfinished.append(job)
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._run(job)
            except Exception as e:  # an OSError starting the child, say: that structure stays uncompiled
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            finally:
                job.finished = time.monotonic()
                if job.status == "failed" and not self._closed:
                    log.warning("compiling %s in a separate process failed (%s); these inputs keep running "
                                "uncompiled", job.name, job.error or f"exit status {job.returncode}")
                with self._lock:
                    self.unfinished.remove(job)
                _remove(job.spec_path)
                job.finished_event.set()

    def _run(self, job: WorkerJob) -> None:
        env = dict(os.environ)  # CUDA_VISIBLE_DEVICES and the rest as ours
        env["TORCHINDUCTOR_CACHE_DIR"] = job.cache_dir
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
        with self._lock:
            if self._closed:
                job.status, job.error = "failed", "the web UI is exiting"
                return
            process = subprocess.Popen(
                [sys.executable, "-m", "modules.engine.compile_worker", job.spec_path], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                errors="replace")
            self._process = process
        job.status, job.started = "running", time.monotonic()
        try:
            _, err = process.communicate(timeout=WORKER_TIMEOUT_S)
            timed_out = False
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            timed_out = True
        with self._lock:
            self._process = None
        job.returncode = process.returncode
        if process.returncode == 0 and not timed_out:
            job.status = "done"
            return
        lines = [line.strip() for line in (err or "").splitlines() if line.strip()]
        job.status = "failed"
        job.error = f"no result after {WORKER_TIMEOUT_S:g} s" if timed_out else (lines[-1] if lines else "")

    def close(self) -> None:
        """At exit: stop the running child (a compile nobody will use), start no other."""
        with self._lock:
            self._closed = True
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


_workers = _WorkerQueue()
_start_lock = threading.Lock()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def wait_for_workers(timeout: float | None = None) -> bool:
    """Wait until no compile process is queued or running (tests, benchmarks); False when `timeout` ran out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _workers._lock:
            pending = list(_workers.unfinished)
        if not pending:
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        pending[0].finished_event.wait(left)


def _describe(module: torch.nn.Module, args: tuple) -> str:
    shapes = ", ".join("x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))
    return f"{type(module).__name__} for inputs {shapes}"


# what a compile process needs on the GPU besides its copy of the weights: CUDA context, inductor's workspace
WORKER_MARGIN_BYTES = 3 * 2**30


def _free_device_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (None where that cannot be asked: the CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _room_for_worker(module: torch.nn.Module) -> str | None:
    """Why a compile process would not fit beside this one on the GPU (it holds a second copy of the weights and
    its own workspace, and would take the memory the next jobs need), or None when it fits."""
    first = next(module.parameters())
    free = _free_device_bytes(first.device)
    if free is None:
        return None
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    if free >= weights + WORKER_MARGIN_BYTES:
        return None
    return f"{free / 2**30:.1f} GiB free on the GPU, a compile process needs about {(weights + WORKER_MARGIN_BYTES) / 2**30:.1f}"


def _start_worker(module: torch.nn.Module, forward: Forward, args: tuple, kwargs: dict,
                  backend: str) -> WorkerJob | None:
    """Queue a compile process for these inputs; None when the module or the forward cannot be handed to one, or
    when it would not fit on the GPU (logged; the caller then compiles in its own thread)."""
    from modules.engine.compile_worker import dump_spec

    too_small = _room_for_worker(module)
    if too_small is not None:
        log.warning("compiling %s in the job, not in a separate process: %s", type(module).__name__, too_small)
        return None

    fd, path = tempfile.mkstemp(prefix="sd-compile-", suffix=".spec")
    try:
        with os.fdopen(fd, "wb") as out:
            dump_spec(out, module, forward, args, kwargs, backend, _options(backend))
    except Exception as e:  # pickling by reference failed: a local class, a closure as forward, a tensor subclass
        _remove(path)
        log.warning("cannot hand %s to a compile process (%s: %s); compiling it in the job instead",
                    type(module).__name__, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
    job = WorkerJob(name=_describe(module, args), spec_path=path, cache_dir=compile_cache_dir())
    log.info("compiling %s in a separate process; running uncompiled until it is ready", job.name)
    _workers.submit(job)
    return job


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
    """A changed structure (attention processors swapped, patcher storages replaced, weights moved or cast)
    gets a fresh compiled forward rather than dynamo's guards failing inside a job."""
    from modules.engine.unet_graph import structure_version

    patcher = getattr(module, "_sd_patcher", None)
    first = next(module.parameters())
    return (structure_version(module), getattr(patcher, "storage_version", 0), first.device, first.dtype)


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
    with _start_lock:  # a decode outside the queue (an API call) may meet the same new structure meanwhile
        job = state.jobs.get(key)
        if job is None and not state.in_thread:
            job = _start_worker(module, forward, args, kwargs, state.backend)
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
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        state.failed = True
        return forward
    state.ready.add(key)
    return state.compiled
