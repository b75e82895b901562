"""The one job queue: every GPU job from the web UI, the HTTP API and scripts runs here, one at a time, in order.

A1111 serialised work with a bare `queue_lock`; we keep that name (extensions take it), but the queue itself
is an explicit FIFO with job ids, positions, results, readable errors and cancellation, which the progress
endpoint (`modules.progress`) reports on. Importing this module pulls in no torch.
"""

from __future__ import annotations

import collections
import functools
import gc
import html
import logging
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from modules import shared

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
OOM_MESSAGE = "Out of GPU memory: try a smaller size or batch"
CPU_OOM_MESSAGE = "Out of memory (RAM): try a smaller size or batch"
# Words of torch's CPU allocator (and the C library) when RAM runs out; none says "out of memory".
_CPU_OOM_MARKERS = ("defaultcpuallocator", "can't allocate memory", "cannot allocate memory")
_ID_CHARS = string.ascii_lowercase + string.digits
_MAX_MESSAGE = 1000


class JobFailed(Exception):
    """Raised by `Job.wait()` when the job's function raised; `message` is the readable one-line error."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class JobCancelled(Exception):
    """Raised by `Job.wait()` when the job was cancelled before it ran."""


class QueueFull(Exception):
    """Raised by `JobQueue.submit()` when a queue limit refuses the job; nothing was queued.

    `message` is the readable reason naming the limit, `setting` the option that sets it."""

    status = 429  # what the API answers: Too Many Requests, try again later

    def __init__(self, message: str, setting: str):
        super().__init__(message)
        self.message = message
        self.setting = setting


def new_task_id(kind: str) -> str:
    """A1111's task id form, `task(<kind>-<15 random chars>)`, which the browser also generates."""
    return f"task({kind}-{''.join(secrets.choice(_ID_CHARS) for _ in range(15))})"


# --- readable errors ---


def _is_instance_of_loaded(e: BaseException, module: str, name: str) -> bool:
    # Checking only modules already imported keeps torch out of this module: if torch (or the model loader)
    # was never imported, the exception cannot be one of its classes.
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(e, cls)


def is_cpu_out_of_memory(e: BaseException) -> bool:
    """RAM ran out: Python's MemoryError (numpy's too) or torch's CPU allocator failing."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _CPU_OOM_MARKERS)


def is_out_of_memory(e: BaseException) -> bool:
    """GPU or CPU memory ran out: the request was too big for this machine, not a bug."""
    if _is_instance_of_loaded(e, "torch", "OutOfMemoryError"):
        return True
    return is_cpu_out_of_memory(e) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _classify(e: BaseException) -> tuple[str, str]:
    """(message, kind): kind "input" (the request was wrong), "oom", or "other" (a bug: log the traceback)."""
    if is_cpu_out_of_memory(e):
        return CPU_OOM_MESSAGE, "oom"
    if is_out_of_memory(e):
        return getattr(e, "user_message", None) or OOM_MESSAGE, "oom"  # the OOM retry's own words, if it failed
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return _one_line(e.args[0]) or "KeyError", "input"  # str(KeyError) would quote the key
    if isinstance(e, ValueError | KeyError) or _is_instance_of_loaded(
        e, "modules.models.checkpoint_files", "ModelFileError"
    ):
        return _one_line(str(e)) or type(e).__name__, "input"
    text = _one_line(str(e))
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__), "other"


def error_message(e: BaseException) -> str:
    """A one-line message a person can act on: input errors as they are, OOM as advice, others with the type."""
    return _classify(e)[0]


def free_gpu_memory() -> None:
    """Release memory after an OOM so the next job starts clean: unreachable cycles (tensors of the failed
    job's frames, for a CPU OOM) and cached CUDA blocks (torch imported only now)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory must never turn into a second failure
        log.exception("could not empty the CUDA cache")


def _describe_failure(e: BaseException, what: str) -> tuple[str, bool]:
    """Log a failure as it deserves and return (message, was it an OOM)."""
    message, kind = _classify(e)
    if kind == "oom":
        log.warning("%s: %s (%s)", what, message, _one_line(str(e)))
    elif kind == "input":
        log.warning("%s failed: %s", what, message)  # the request was wrong: no traceback needed
    else:
        log.error("%s failed: %s", what, message, exc_info=e)
    return message, kind == "oom"


# --- jobs ---


class Job:
    """One unit of work in a `JobQueue`. Read the fields; change it only through `cancel()`."""

    def __init__(self, owner: JobQueue, kind: str, fn: Callable[[], Any], task_id: str | None = None,
                 client: str | None = None):
        self.id: str = task_id or new_task_id(kind)
        self.kind = kind
        self.client = client  # who asked (API user or address, UI session): the per-client limit counts these
        self.fn: Callable[[], Any] | None = fn
        self.status: str = "queued"
        self.error: str | None = None
        self.result: Any = None
        self.created: float = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._queue = owner
        self._done = threading.Event()

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.status})"

    def position(self) -> int:
        """0 when running or finished; otherwise how many jobs run before it, the running one included."""
        return self._queue._position(self)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes and return its result. Raises `JobFailed` / `JobCancelled`, and
        `TimeoutError` when `timeout` seconds pass first."""
        if not self._done.is_set() and self._queue.in_worker():
            raise RuntimeError(f"waiting for {self.id} from inside a running job would deadlock the queue")
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.id} still {self.status} after {timeout} seconds")
        if self.status == "failed":
            raise JobFailed(self.error or "failed")
        if self.status == "cancelled":
            raise JobCancelled(self.id)
        return self.result

    def cancel(self) -> bool:
        """A queued job is removed and becomes "cancelled". A running job is interrupted
        (`shared.state.interrupt()`, the Interrupt button): it stops at the next step and finishes as its
        function decides, usually "done" with partial results, as in A1111. False once it has finished."""
        return self._queue._cancel(self)

    @property
    def done(self) -> bool:
        return self._done.is_set()


class JobQueue:
    """FIFO of jobs run by one worker thread (started on the first submit). Thread-safe.

    Around each job the worker holds `queue_lock` (so extension code that takes it still never overlaps a
    job) and calls `shared.state.begin(job=job.id)` / `shared.state.end()`.
    """

    def __init__(self, keep_recent: int = 100, lock: AbstractContextManager[Any] | None = None):
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: collections.deque[Job] = collections.deque()
        self._current: Job | None = None
        self._recent: collections.deque[Job] = collections.deque(maxlen=keep_recent)
        self._by_id: dict[str, Job] = {}
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._run_lock = lock if lock is not None else queue_lock
        # Jobs of a batch turn (setting queue_batch_jobs), each with the thread its function runs on.
        self._members: dict[Job, _Member] = {}
        self._member_local = threading.local()

    # --- submitting and looking up ---

    def submit(self, kind: str, fn: Callable[[], Any], task_id: str | None = None, client: str | None = None
               ) -> Job:
        """Queue `fn`. Raises `QueueFull` when the queue already holds `queue_max_jobs` waiting jobs, or
        `client` (None: not counted per client) has `queue_max_jobs_per_client` jobs waiting or running."""
        job = Job(self, kind, fn, task_id, client)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the job queue has been shut down")
            if not self.in_worker():  # a job's own sub-job runs inline or deadlocks anyway: never refused
                self._check_limits(client)
            self._pending.append(job)
            self._by_id[job.id] = job  # a reused task id now names the newest job
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="job-queue", daemon=True)
                self._worker.start()
            self._wakeup.notify()
        return job

    def get(self, task_id: str) -> Job | None:
        with self._lock:
            return self._by_id.get(task_id)

    def pending(self) -> list[Job]:
        """Queued jobs, next first."""
        with self._lock:
            return list(self._pending)

    def current(self) -> Job | None:
        with self._lock:
            return self._current

    def recent(self) -> list[Job]:
        """Finished jobs (done, failed, cancelled), oldest first; bounded so memory stays flat."""
        with self._lock:
            return list(self._recent)

    def in_worker(self) -> bool:
        """True on the worker thread, i.e. inside a running job (also the thread of a job of a batch turn)."""
        if getattr(self._member_local, "member", None) is not None:
            return True
        return self._worker is not None and threading.current_thread() is self._worker

    def offload(self, entry: str, p: Any) -> Any | None:
        """Where the running job's generation goes: `scripts.process_request` and `processing.process_images`
        (`entry`, by name) ask before they run `p`. None: here, in this process, as always. A queue whose jobs run
        on other machines (--ray: modules/serve sends them to Ray replicas) runs it there and returns the result.

        In a batch turn (setting queue_batch_jobs) a job's first request stops here until the worker has run it,
        with others or alone (see `_run_turn`)."""
        member = getattr(self._member_local, "member", None)
        if member is None or member.intercepted:
            return None
        member.intercepted = True  # only the job's own request: a script's inner process_images runs as usual
        return member.park(p)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Cancel queued jobs, let the running one finish, stop the worker. For tests and process exit."""
        with self._lock:
            self._stop_taking_jobs()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def _stop_taking_jobs(self) -> None:
        """Refuse new jobs, cancel the waiting ones and wake the workers; caller holds self._lock."""
        self._stopping = True
        cancelled = list(self._pending)
        self._pending.clear()
        for job in cancelled:
            self._finish(job, "cancelled")
        self._wakeup.notify_all()

    # --- internals ---

    def _check_limits(self, client: str | None) -> None:
        """Refuse a new job over a limit; caller holds self._lock. Read on each submit: settings apply at once."""
        most = queue_limit("queue_max_jobs")
        if len(self._pending) >= most:
            raise QueueFull(f"The queue is full: {len(self._pending)} jobs are waiting, the most allowed is {most} "
                            "(setting queue_max_jobs). Try again later.", "queue_max_jobs")
        if client is None:
            return
        most = queue_limit("queue_max_jobs_per_client")
        mine = sum(1 for j in (*self._running(), *self._pending) if j.client == client)
        if mine >= most:
            raise QueueFull(f"Too many jobs from this client: {mine} are waiting or running, the most allowed is "
                            f"{most} (setting queue_max_jobs_per_client). Wait for one to finish.",
                            "queue_max_jobs_per_client")

    def _position(self, job: Job) -> int:
        with self._lock:
            if job.status != "queued":
                return 0
            try:
                index = self._pending.index(job)
            except ValueError:
                return 0
            return index + len(self._running())

    def _running(self) -> list[Job]:
        """The jobs running now; caller holds self._lock. One here, or the jobs of a batch turn; a queue that runs
        several at once (modules/serve) says which."""
        current = [self._current] if self._current is not None else []
        return current + [job for job in self._members if job is not self._current]

    def _cancel(self, job: Job) -> bool:
        with self._lock:
            if job.status == "queued" and job in self._pending:
                self._pending.remove(job)
                self._finish(job, "cancelled")
                return True
            member = self._members.get(job)
            if job.status == "running" and member is not None:
                # A job of a batch turn: the others of a batch it stops run again alone (`_run_merged`); one
                # still waiting for its turn is stopped as it starts (`_run_alone`).
                member.cancel_asked = True
                if member.phase in ("merged", "alone"):
                    shared.state.interrupt()
                return True
            if job.status == "running" and job is self._current:
                # Under the lock the worker cannot move on to the next job, so the flag hits this one.
                shared.state.interrupt()
                return True
            return False

    def _finish(self, job: Job, status: str) -> None:
        """Record a finished job; caller holds self._lock."""
        job.status = status
        job.finished = time.time()
        job.fn = None  # drop the closure (and the images it references) once it has run
        if len(self._recent) == self._recent.maxlen:
            evicted = self._recent[0]
            if self._by_id.get(evicted.id) is evicted:
                del self._by_id[evicted.id]
        self._recent.append(job)
        job._done.set()

    def _next_job(self) -> Job | None:
        """Wait for a job; None when shutting down."""
        with self._lock:
            while not self._pending and not self._stopping:
                self._wakeup.wait()
            return None if self._stopping else self._pending[0]

    def _run(self) -> None:
        while self._next_job() is not None:
            with self._run_lock:
                with self._lock:
                    if not self._pending:  # cancelled while we waited for the run lock
                        continue
                    job = self._pending.popleft()
                    job.status = "running"
                    job.started = time.time()
                    self._current = job
                    # State changes under our lock so cancel() never interrupts the wrong job.
                    _safe_state_call("begin", job=job.id)
                    turn = self._may_batch(job)
                if turn:
                    self._run_turn(job)
                else:
                    self._run_one(job)

    def _run_one(self, job: Job) -> None:
        status, oom = "done", False
        try:
            job.result = job.fn()
        except BaseException as e:  # any failure is the job's, never the worker's
            job.error, oom = _describe_failure(e, f"job {job.id}")
            status = "failed"
        if oom:
            free_gpu_memory()  # after the except block, so the traceback's tensors are already released
        with self._lock:
            _safe_state_call("end")
            self._current = None
            self._finish(job, status)


    # --- batch turns (setting queue_batch_jobs, modules.job_batching) ---

    def _may_batch(self, job: Job) -> bool:
        """Worth a batch turn: the setting is on and the next waiting job is of the same batchable kind. Caller
        holds self._lock. Reads only settings, so the queue still imports no torch."""
        from modules import job_batching

        return (job_batching.enabled() and job_batching.max_batch() > 1 and job.kind in job_batching.BATCH_KINDS
                and bool(self._pending) and self._pending[0].kind == job.kind)

    def _run_turn(self, leader: Job) -> None:
        """Run `leader` and the compatible jobs waiting right behind it as one batch.

        Each job's function runs on a thread of its own up to its request (`offload`), where it waits. Waiting
        jobs are taken in order while they are compatible with the leader; the first that is not (or that makes
        no request) ends the batch and runs alone right after it, where it would have run anyway. Each job then
        gets its own `Processed` back in its function, which finishes as if it had run alone."""
        from modules import job_batching

        lead = self._start_member(leader)
        members = [lead] if lead.p is not None else []
        after: list[_Member] = []  # started, but not in the batch: run alone after it, in order
        if lead.p is not None and self._why_alone(lead.p) is None:
            while len(members) < job_batching.max_batch():
                job = self._take_same_kind(leader.kind)
                if job is None:
                    break
                member = self._start_member(job)
                if member.p is None:
                    continue  # its function finished without a request: it is done
                if self._why_alone(member.p) is None and job_batching.compatible(lead.p, member.p):
                    members.append(member)
                else:
                    after.append(member)
                    break
        batch = [m for m in members if not m.cancel_asked]
        after = [m for m in members if m.cancel_asked] + after  # cancelled while starting: stopped alone
        if len(batch) > 1:
            self._run_merged(batch)
        else:
            after = batch + after
        for member in after:
            self._run_alone(member)
        with self._lock:
            _safe_state_call("end")
            self._current = None

    @staticmethod
    def _why_alone(p: Any) -> str | None:
        from modules import job_batching

        try:
            reason = job_batching.why_alone(p)
        except Exception:  # a request the rule cannot read runs alone
            log.exception("could not tell whether a job may be batched")
            reason = "unreadable"
        if reason is not None:
            log.debug("job runs alone: %s", reason)
        return reason

    def _take_same_kind(self, kind: str) -> Job | None:
        """The next waiting job when it is of `kind`, marked running (its function starts now); else None."""
        with self._lock:
            if self._stopping or not self._pending or self._pending[0].kind != kind:
                return None
            job = self._pending.popleft()
            job.status = "running"
            job.started = time.time()
            return job

    def _start_member(self, job: Job) -> _Member:
        """Start the job's function on its own thread; back when it waits at its request or has finished."""
        member = _Member(self, job)
        with self._lock:
            self._members[job] = member
        member.start()
        if member.finished:
            self._close(member)
        return member

    def _run_merged(self, batch: list[_Member]) -> None:
        from modules import job_batching

        with self._lock:
            for member in batch:
                member.phase = "merged"
        failure: BaseException | None = None
        oom = False
        try:
            merged = job_batching.merge([m.p for m in batch])
            log.info("running %d jobs as one batch: %s", len(batch), ", ".join(m.job.id for m in batch))
            processed = job_batching.run(merged)
        except BaseException as e:
            oom = is_out_of_memory(e)
            failure = None if oom else e
        if oom:  # a batch may not fit where each job alone does (outside the except: its tensors are freed)
            log.warning("a batch of %d jobs ran out of memory; running them one by one", len(batch))
            free_gpu_memory()
            for member in batch:
                self._run_alone(member)
            return
        if failure is not None:
            for member in batch:  # the error every job of the batch would have met
                member.resume("error", failure)
                self._close(member)
            return
        state = shared.state
        stopped = bool(getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False))
        with self._lock:
            asked = [m for m in batch if m.cancel_asked]
        # Stopping one job by its id stops the batch: the others run again alone. A stop for everyone (no id)
        # stops them all, as it stops the one running job.
        again = [m for m in batch if not m.cancel_asked] if stopped and asked else []
        for index, member in enumerate(batch):
            if member in again:
                continue
            try:
                result = job_batching.member_result(merged, processed, index, member.p)
            except BaseException as e:
                member.resume("error", e)
            else:
                member.resume("result", result)
            self._close(member)
        for member in again:
            self._run_alone(member)

    def _run_alone(self, member: _Member) -> None:
        """A started job's request, run by its own function as if there were no batching."""
        if member.finished:
            return
        with self._lock:
            self._current = member.job
            member.phase = "alone"
            _safe_state_call("end")
            _safe_state_call("begin", job=member.job.id)
            if member.cancel_asked:
                shared.state.interrupt()
        member.resume("alone")
        self._close(member)

    def _close(self, member: _Member) -> None:
        """Record a member's outcome once its function has returned (or raised)."""
        job, status, oom = member.job, "done", False
        job.result = member.result
        if member.error is not None:
            job.error, oom = _describe_failure(member.error, f"job {job.id}")
            status = "failed"
        member.error = member.result = None
        if oom:
            free_gpu_memory()
        with self._lock:
            member.phase = "done"
            self._members.pop(job, None)
            if self._current is job:
                self._current = next(iter(self._members), None)
            self._finish(job, status)


class _Member:
    """A job of a batch turn: its function runs on its own thread and waits at its request (`park`, reached
    through `JobQueue.offload`) until the worker answers with a result, an error, or "run it alone"."""

    def __init__(self, owner: JobQueue, job: Job):
        self.job = job
        self.p: Any = None
        self.intercepted = False
        self.cancel_asked = False
        self.phase = "starting"  # starting -> merged | alone -> done; changed under the queue's lock
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self._queue = owner
        self._stopped = threading.Event()  # set when the function waits at its request or has returned
        self._resume = threading.Event()
        self._answer: tuple[str, Any] = ("alone", None)
        self._thread = threading.Thread(target=self._body, name=f"job-queue-{job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._stopped.wait()

    def _body(self) -> None:
        self._queue._member_local.member = self
        try:
            fn = self.job.fn
            self.result = fn() if fn is not None else None
        except BaseException as e:  # the job's failure, recorded by the worker
            self.error = e
        finally:
            self._queue._member_local.member = None
            self.finished = True
            self._stopped.set()

    def park(self, p: Any) -> Any:
        """On the job's thread: hand `p` over and wait. Returns the job's `Processed`, None to run it here."""
        self.p = p
        self._stopped.set()
        self._resume.wait()
        how, value = self._answer
        self._answer = ("alone", None)  # drop the reference: the caller holds it now
        if how == "error":
            raise value
        return value

    def resume(self, how: str, value: Any = None) -> None:
        """On the worker: answer the waiting function ("result", "error" or "alone") and wait until it returns."""
        self._answer = (how, value)
        self._stopped.clear()
        self._resume.set()
        self._stopped.wait()


def _safe_state_call(name: str, **kwargs: Any) -> None:
    # A broken state object (an extension replaced it) must not stop the worker thread.
    try:
        getattr(shared.state, name)(**kwargs)
    except Exception:
        log.exception("shared.state.%s failed", name)


# --- limits ---

QUEUE_LIMIT_DEFAULTS = {"queue_max_jobs": 64, "queue_max_jobs_per_client": 4}


def queue_limit(name: str) -> int:
    """A queue limit setting; its default while settings are not loaded (tests, scripts)."""
    return int(getattr(shared.opts, name, QUEUE_LIMIT_DEFAULTS[name]))


# --- A1111-compatible names extensions import ---

# Kept for extensions: `with queue_lock:` still excludes generation, because the queue worker holds it while
# each job runs. New code submits to `queue` instead, which is what serialises jobs.
queue_lock = threading.Lock()

queue = JobQueue()  # process-wide: every browser tab and the API share it


def wrap_queued_call(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run `func` under `queue_lock`, i.e. never at the same time as a queued job."""

    @functools.wraps(func)
    def f(*args: Any, **kwargs: Any) -> Any:
        if queue.in_worker():  # already inside a job, which holds the lock
            return func(*args, **kwargs)
        with queue_lock:
            return func(*args, **kwargs)

    return f


def _error_outputs(message: str, extra_outputs: list[Any] | None) -> list[Any]:
    """A1111's failure shape: `extra_outputs` (default `[None, ""]`, e.g. gallery and generation info)
    followed by an HTML error for the last (HTML info) output."""
    outputs = list(extra_outputs) if extra_outputs is not None else [None, ""]
    return outputs + [f"<div class='error'>{html.escape(message)}</div>"]


def _task_id_from_args(args: tuple[Any, ...]) -> str | None:
    # The UI passes the id it polls progress with as the first argument, as A1111's does.
    first = args[0] if args else None
    if isinstance(first, str) and first.startswith("task(") and first.endswith(")"):
        return first
    return None


def wrap_gradio_gpu_call(func: Callable[..., Any], extra_outputs: list[Any] | None = None) -> Callable[..., Any]:
    """Wrap a UI callback: `func(*args)` runs as a "ui" job on `queue` (task id taken from a first argument
    shaped `task(...)`), and the caller blocks until it is done.

    Returns func's result unchanged on success. On failure or cancellation it returns
    `[*extra_outputs, "<div class='error'>message</div>"]` (extra_outputs defaults to `[None, ""]`), so the
    outputs keep their count and the readable message lands in the last (HTML) one."""

    @functools.wraps(func)
    def f(*args: Any, **kwargs: Any) -> Any:
        if queue.in_worker():  # called from inside a job: queueing would wait on ourselves
            return wrap_gradio_call(func, extra_outputs)(*args, **kwargs)
        try:
            job = queue.submit("ui", lambda: func(*args, **kwargs), task_id=_task_id_from_args(args))
            return job.wait()
        except QueueFull as e:
            return _error_outputs(e.message, extra_outputs)
        except JobFailed as e:
            return _error_outputs(e.message, extra_outputs)
        except JobCancelled:
            return _error_outputs("Cancelled", extra_outputs)

    return f


def wrap_gradio_call(
    func: Callable[..., Any], extra_outputs: list[Any] | None = None, add_stats: bool = False
) -> Callable[..., Any]:
    """The same error handling as `wrap_gradio_gpu_call`, without the queue. With `add_stats`, a result
    whose last element is an HTML string gets A1111's "Time taken" line appended to it."""

    @functools.wraps(func)
    def f(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        oom = False
        try:
            result = func(*args, **kwargs)
        except Exception as e:
            message, oom = _describe_failure(e, getattr(func, "__name__", "call"))
            result = _error_outputs(message, extra_outputs)
        if oom:
            free_gpu_memory()
        if add_stats and isinstance(result, list | tuple) and result and isinstance(result[-1], str):
            elapsed = time.perf_counter() - start
            stats = (
                "<div class='performance'><p class='time'>Time taken: <wbr>"
                f"<span class='measurement'>{elapsed:.1f} sec.</span></p></div>"
            )
            items = [*result[:-1], result[-1] + stats]
            result = tuple(items) if isinstance(result, tuple) else items
        return result

    return f


__all__ = [
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobQueue",
    "QueueFull",
    "error_message",
    "new_task_id",
    "queue",
    "queue_lock",
    "wrap_gradio_call",
    "wrap_gradio_gpu_call",
    "wrap_queued_call",
]
