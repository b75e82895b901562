"""The front door's job queue under --ray: the same FIFO, limits and job objects, with one worker per replica.

Each job's function runs here, on one of the workers, as in the single-process server (so every front door's
job works unchanged); when it reaches the engine (`offload`), the request object is sent to a replica and the
worker follows the replica's stream: progress into the job's `progress_state`, the result (or the failure,
as the same exception) back to the function. At most one job per replica runs at once, so a job waits here,
in order, with its place in line, until a replica is free.

A replica that dies mid-job (killed, out of host memory, its node lost) loses only that attempt: the job is sent
again, once, to another replica (Ray restarts the dead one meanwhile); if that fails too, or the job had been
interrupted, it fails with a message that says so. Other jobs are untouched: each has its own stream.

The front-door parts of jobs run one at a time, under `call_queue.queue_lock` as every job does in the
single-process server (code written for one job at a time, such as a script runner building its controls on
first use, stays safe); a job lets go of it while its replica works, so the replicas run in parallel.

Model and server management jobs (switching the checkpoint or VAE, reloading, restarting) run alone, after the
jobs before them and before those after them, as in the single-process queue. They run here: the checkpoint
setting they leave is what replicas load for the next jobs, and a model they loaded into this process is
dropped again, so the front door holds no weights.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from modules import call_queue, shared
from modules.serve import work as work_mod
from modules.serve.state import WAITING, FrontDoorState, RemoteJobState

log = logging.getLogger(__name__)

ATTEMPTS = 2  # a job whose replica dies runs once more elsewhere
EXCLUSIVE_KINDS = frozenset({"load-model", "load-vae", "settings", "reload-checkpoint", "unload-checkpoint",
                             "restart"})
MODEL_KINDS = frozenset({"load-model", "load-vae", "settings", "reload-checkpoint"})
RESTARTED = "Its replica stopped; running it again on another..."


class ReplicaLost(RuntimeError):
    """The replica running a job died and the job could not be finished elsewhere."""

    http_status = 503  # the service, not the request, failed: a client may send it again


class ReplicaError(RuntimeError):
    """A failure on a replica whose exception could not travel; its message is the replica's."""


class RayJobQueue(call_queue.JobQueue):
    """`call_queue.queue` of a front door whose engine calls run on a Ray Serve deployment.

    `handle`: the deployment's handle (`EngineReplica.run` streams); `send_flag(dispatch_id, flag)` delivers
    interrupt/skip/stop to the replica of a dispatch; `slots`: how many jobs run at once (one per replica).
    `on_shutdown` runs after the workers stopped (the cluster's teardown)."""

    def __init__(self, handle: Any, send_flag: Callable[[str, str], None], slots: int, *,
                 forget_flags: Callable[[str], None] | None = None, attempts: int = ATTEMPTS,
                 keep_recent: int = 100, on_shutdown: Callable[[], None] | None = None,
                 replica_lost: tuple[type[BaseException], ...] | None = None):
        super().__init__(keep_recent=keep_recent)
        if slots < 1:
            raise ValueError("a Ray job queue needs at least one slot")
        self.slots = slots
        self.attempts = max(1, attempts)
        self._handle = handle
        self._send_flag = send_flag
        self._forget_flags = forget_flags or (lambda dispatch_id: None)
        self._on_shutdown = on_shutdown
        self._replica_lost = replica_lost if replica_lost is not None else _replica_lost_errors()
        self._workers: list[threading.Thread] = []
        self._running_jobs: list[call_queue.Job] = []  # oldest first
        self._local = threading.local()
        self.retried = 0  # jobs sent again after their replica died (for tests and the log)

    # --- the queue's interface ----------------------------------------------------------------------------

    def submit(self, kind: str, fn: Callable[[], Any], task_id: str | None = None, client: str | None = None
               ) -> call_queue.Job:
        job = call_queue.Job(self, kind, fn, task_id, client)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the job queue has been shut down")
            if not self.in_worker():
                self._check_limits(client)
            self._pending.append(job)
            self._by_id[job.id] = job
            self._workers = [w for w in self._workers if w.is_alive()]
            while len(self._workers) < self.slots:
                worker = threading.Thread(target=self._run, name=f"ray-job-queue-{len(self._workers)}", daemon=True)
                self._workers.append(worker)
                worker.start()
            self._wakeup.notify_all()
        return job

    def current(self) -> call_queue.Job | None:
        """The oldest running job (A1111 knows one running job; here there may be one per replica)."""
        with self._lock:
            return self._running_jobs[0] if self._running_jobs else None

    def running(self) -> list[call_queue.Job]:
        with self._lock:
            return list(self._running_jobs)

    def in_worker(self) -> bool:
        return getattr(self._local, "job", None) is not None

    def shutdown(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            self._stop_taking_jobs()
            workers = list(self._workers)
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(timeout)
        if self._on_shutdown is not None:
            self._on_shutdown()

    def offload(self, entry: str, p: Any) -> Any | None:
        """On a worker: send `entry(p)` to a replica and return what it returned there (or raise what it raised)."""
        job = getattr(self._local, "job", None)
        if job is None:
            return None  # not inside one of this queue's jobs: run here
        return self._dispatch(job, entry, p)

    # --- internals ----------------------------------------------------------------------------------------

    def _running(self) -> list[call_queue.Job]:
        return list(self._running_jobs)

    def _cancel(self, job: call_queue.Job) -> bool:
        with self._lock:
            if job.status == "queued" and job in self._pending:
                self._pending.remove(job)
                self._finish(job, "cancelled")
                self._wakeup.notify_all()
                return True
            if job.status != "running" or job not in self._running_jobs:
                return False
        state = getattr(job, "progress_state", None)
        if state is None:  # still in its front-door part: here, and on the replica it may yet be sent to
            _interrupt_here()
            state = self._state_of(job)
        state.interrupt()
        return True

    def _state_of(self, job: call_queue.Job) -> RemoteJobState:
        with self._lock:
            state = getattr(job, "progress_state", None)
            if state is None:
                state = job.progress_state = RemoteJobState(job.id, lambda flag: self._flag(job, flag))
            return state

    def _may_start(self, job: call_queue.Job) -> bool:
        if any(j.kind in EXCLUSIVE_KINDS for j in self._running_jobs):
            return False
        if job.kind in EXCLUSIVE_KINDS:
            return not self._running_jobs
        return len(self._running_jobs) < self.slots

    def _take(self) -> call_queue.Job | None:
        """The next job to run, marked running; None when stopping. Caller holds self._lock."""
        while True:
            if self._stopping:
                return None
            if self._pending and self._may_start(self._pending[0]):
                job = self._pending.popleft()
                job.status = "running"
                job.started = time.time()
                self._running_jobs.append(job)
                return job
            self._wakeup.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                job = self._take()
            if job is None:
                return
            self._local.job = job
            try:
                self._run_one(job)
            finally:
                self._local.job = None

    def _run_one(self, job: call_queue.Job) -> None:
        status, oom = "done", False
        self._run_lock.acquire()
        self._local.holds_lock = True
        try:
            job.result = job.fn()
        except BaseException as e:  # the job's failure, never the worker's
            job.error, oom = call_queue._describe_failure(e, f"job {job.id}")
            status = "failed"
        finally:
            self._local.holds_lock = False
            self._run_lock.release()
        if job.kind in MODEL_KINDS:
            _drop_front_door_model()
        if oom:
            call_queue.free_gpu_memory()
        with self._lock:
            self._running_jobs.remove(job)
            self._finish(job, status)
            self._wakeup.notify_all()
        self._show_oldest()

    def _show_oldest(self, changed: call_queue.Job | None = None) -> None:
        """The front door's own state shows the oldest running job that runs on a replica."""
        state = shared.state
        if not isinstance(state, FrontDoorState):
            return
        with self._lock:
            shown = next((j for j in self._running_jobs if getattr(j, "progress_state", None) is not None), None)
        if changed is not None and shown is not changed:
            return
        state.show(shown.progress_state if shown is not None else None)

    # --- one engine call on a replica ---------------------------------------------------------------------

    def _dispatch(self, job: call_queue.Job, entry: str, p: Any) -> Any:
        state = self._state_of(job)
        settings = dict(shared.opts.data)
        for attempt in range(1, self.attempts + 1):
            work = work_mod.pack(entry, p, job.id, settings, attempt)
            job.dispatch_id = work.dispatch_id
            for flag, asked in (("interrupt", state.interrupted), ("skip", state.skipped),
                                ("stop_generating", state.stopping_generation)):
                if asked:  # asked for before this attempt was sent: it must not be lost
                    self._send_flag(work.dispatch_id, flag)
            try:
                with self._replica_working():
                    return self._follow(job, state, work)
            except self._replica_lost as e:
                reason = _first_line(e)
                if state.interrupted:
                    raise ReplicaLost(f"The job was interrupted, and the replica running it stopped before it "
                                      f"ended ({reason}); nothing was generated.") from None
                if attempt >= self.attempts:
                    raise ReplicaLost(f"The replica running this job stopped ({reason}), and so did the one it "
                                      f"was sent to next; nothing was generated. Try again.") from None
                log.warning("%s: its replica stopped (%s); sending it to another (attempt %d of %d)", job.id, reason,
                            attempt + 1, self.attempts)
                self.retried += 1
                state.restart(RESTARTED)
                self._show_oldest(job)
            finally:
                self._forget_flags(work.dispatch_id)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _replica_working(self) -> Iterator[None]:
        """While a replica works on this worker's job, other jobs' front-door parts may run."""
        held = getattr(self._local, "holds_lock", False)
        if held:
            self._run_lock.release()
            self._local.holds_lock = False
        try:
            yield
        finally:
            if held:
                self._run_lock.acquire()
                self._local.holds_lock = True

    def _flag(self, job: call_queue.Job, flag: str) -> None:
        dispatch_id = getattr(job, "dispatch_id", None)
        if dispatch_id is not None and job.status == "running":
            self._send_flag(dispatch_id, flag)

    def _follow(self, job: call_queue.Job, state: RemoteJobState, work: work_mod.Work) -> Any:
        from modules.serve import affinity

        state.textinfo = WAITING if work.attempt == 1 else RESTARTED
        for event in self._handle.options(stream=True).run.remote(work):
            if isinstance(event, work_mod.Started):
                job.replica, job.replica_pid, job.replica_node = event.replica, event.pid, event.node_id
                job.replicas = [*getattr(job, "replicas", []), event.replica]  # every attempt's, in order
                log.debug("%s runs on replica %s (%s, pid %d)", job.id, event.replica, event.node, event.pid)
            elif isinstance(event, work_mod.Progress):
                state.apply(event)
                self._show_oldest(job)
            elif isinstance(event, work_mod.Finished):
                affinity.note(event.holding)
                for image, path in zip(getattr(event.processed, "images", []) or [], event.saved_as, strict=False):
                    if path:
                        image.already_saved_as = path
                return event.processed
            elif isinstance(event, work_mod.Failed):
                if event.holding is not None:
                    affinity.note(event.holding)
                raise rebuild(event)
        raise ReplicaLost("the replica's answer ended without a result")


def rebuild(failed: work_mod.Failed) -> BaseException:
    """The exception to raise here for a failure on a replica: the same one when it travelled, else one that the
    API and UI answer the same way (422 input, 503 memory or no model, 500 other)."""
    if failed.error is not None:
        return failed.error
    if failed.kind == "input":
        return ValueError(failed.message)
    if failed.kind == "oom":
        return MemoryError(failed.message)
    if failed.kind == "no-model":
        from modules.sd_models import NoCheckpointError

        return NoCheckpointError(failed.message)
    return ReplicaError(failed.message)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _replica_lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's exceptions for an actor that died or cannot be reached (imported only with a Ray queue)."""
    from ray.exceptions import RayActorError

    return (RayActorError,)


def _interrupt_here() -> None:
    state = shared.state
    if isinstance(state, FrontDoorState):
        state.interrupt_here()
    else:
        state.interrupt()


def _drop_front_door_model() -> None:
    """After a model job here: the setting it left stays (replicas follow it), the weights go."""
    if getattr(shared, "sd_model", None) is None:
        return
    from modules import sd_models

    sd_models.unload_model_weights()


__all__ = ["ATTEMPTS", "EXCLUSIVE_KINDS", "MODEL_KINDS", "RayJobQueue", "ReplicaError", "ReplicaLost", "rebuild"]
