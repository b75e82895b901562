"""Compile processes (modules.engine.compile_worker) started for the compiled engine (modules.engine.unet_compile):
one at a time, from a thread that only starts a child and waits for it (it traces nothing, so jobs running
meanwhile are safe), each stopped past `WORKER_TIMEOUT_S` and at exit; none where the GPU has no room for the
child's copy of the network."""

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

from modules.engine.compile_cache import compile_cache_dir

log = logging.getLogger(__name__)

Forward = Callable[..., Any]
# a child compiling for longer than this is stopped and its structure runs uncompiled (SDXL on a slow GPU with
# cold caches takes minutes, not an hour)
WORKER_TIMEOUT_S = 3600.0
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
start_lock = threading.Lock()  # held by callers that check for a running compile and start one


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
    needed = (weights + WORKER_MARGIN_BYTES) / 2**30
    return f"{free / 2**30:.1f} GiB free on the GPU, a compile process needs about {needed:.1f}"


def start(module: torch.nn.Module, forward: Forward, args: tuple, kwargs: dict, backend: str,
          options: dict[str, Any] | None) -> WorkerJob | None:
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
            dump_spec(out, module, forward, args, kwargs, backend, options)
    except Exception as e:  # pickling by reference failed: a local class, a closure as forward, a tensor subclass
        _remove(path)
        log.warning("cannot hand %s to a compile process (%s: %s); compiling it in the job instead",
                    type(module).__name__, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
    job = WorkerJob(name=_describe(module, args), spec_path=path, cache_dir=compile_cache_dir())
    log.info("compiling %s in a separate process; running uncompiled until it is ready", job.name)
    _workers.submit(job)
    return job


