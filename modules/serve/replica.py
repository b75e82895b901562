"""One replica of the Ray Serve deployment: this process becomes an engine, as the single-process server is one.

Start-up is webui's (settings, model folders, extensions and scripts, the first checkpoint), with the front
door's flags and settings. Each call (`run`) is one engine call of one front-door job: it runs on this
process's own job queue (so `shared.state`, interrupt and skip behave exactly as in the single-process server),
after the model is made the one the job needs, and streams `Started`, `Progress`... and `Finished`/`Failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from modules import call_queue, shared
from modules.serve.work import (
    ENTRIES,
    MODEL_FREE_ENTRIES,
    Failed,
    Finished,
    Holding,
    Progress,
    Started,
    Work,
    resolve_checkpoint,
    unpack,
)

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often a running job reports progress and looks for interrupt/skip


@dataclass
class ReplicaSetup:
    """What every replica starts from: the front door's flags and settings, where its control actor lives."""

    cmd_opts: argparse.Namespace
    settings: dict[str, Any] = field(default_factory=dict)
    namespace: str = "sd-webui"
    preload: bool = True  # load the checkpoint in settings before taking jobs, as the single-process server does


def replica_flags(cmd_opts: argparse.Namespace) -> argparse.Namespace:
    """The front door's flags as a replica uses them: Ray gives it its GPU (as cuda:0), start-up downloads were
    done by the front door, and it serves nothing itself."""
    ns = copy.copy(cmd_opts)
    ns.device_id = None
    ns.download = []
    for name in ("ray", "nowebui", "api", "share", "listen", "autolaunch"):
        if hasattr(ns, name):
            setattr(ns, name, False)
    ns.ngrok = None
    return ns


def start_engine(setup: ReplicaSetup) -> float | None:
    """Make this process an engine: flags, settings, model folders, extensions and scripts, first checkpoint.
    Returns how long loading the checkpoint took (None when none was loaded)."""
    import gc

    gc.disable()  # while the libraries are imported, as the server does (webui.start)
    try:
        from modules import device_warm_up, devices, initialize

        shared.set_cmd_opts(replica_flags(setup.cmd_opts))
        device_warm_up.start(devices.choose_device(shared.cmd_opts.use_cpu, None))  # as webui.start does
        initialize.initialize()
        shared.opts.data.update(setup.settings)
        if not setup.preload or shared.cmd_opts.skip_load_model_at_start:
            return None
        initialize.freeze_imported_objects()
        started = time.perf_counter()
        return time.perf_counter() - started if initialize.load_first_model() else None
    finally:
        gc.enable()


def _entry(name: str) -> Callable[[Any], Any]:
    from modules import postprocessing, processing, scripts

    return {"process_request": scripts.process_request, "process_images": processing.process_images,
            "postprocess": postprocessing.run_request}[name]


def failure(e: BaseException, holding: Holding | None) -> Failed:
    """A failure as it travels: the exception itself when it can be pickled, else its class of answer."""
    from ray import cloudpickle

    from modules.models.checkpoint_files import ModelFileError
    from modules.sd_models import NoCheckpointError

    if call_queue.is_out_of_memory(e):
        kind = "oom"
    elif isinstance(e, NoCheckpointError):
        kind = "no-model"
    elif isinstance(e, ValueError | KeyError | ModelFileError | RecursionError):
        kind = "input"
    else:
        kind = "other"
    try:
        error: BaseException | None = cloudpickle.loads(cloudpickle.dumps(e))
    except Exception:  # an exception holding something that cannot travel: its message and class of answer do
        error = None
    return Failed(call_queue.error_message(e), kind, error, holding)


class _Reporter:
    """Turns this process's `shared.state` into Progress reports, only when something changed."""

    def __init__(self, task_id: str):
        self.task_id = task_id
        self._last: tuple[Any, ...] | None = None
        self._sent_preview = 0

    def report(self) -> Progress | None:
        state = shared.state
        if state.job != self.task_id:
            return None  # not begun yet (or already ended)
        values = state.dict()
        preview_id = state.id_live_preview
        key = (tuple(values.values()), state.textinfo, preview_id)
        if key == self._last:
            return None
        self._last = key
        preview = None
        if preview_id != self._sent_preview and state.current_image is not None:
            preview, self._sent_preview = state.current_image, preview_id
        return Progress(values, time.time() - (state.time_start or time.time()), state.textinfo, preview_id, preview,
                        bool(state.processing_has_refined_job_count))


class EngineReplica:
    """The deployment's class (made a Serve deployment by `modules.serve.cluster`)."""

    def __init__(self, setup: ReplicaSetup):
        import ray
        from ray import serve

        from modules import script_callbacks
        from modules.serve import control

        self._load_s = start_engine(setup)  # what a switch costs here, until a switch measures it
        self._id = serve.get_replica_context().replica_id.unique_id
        self._node = ray.util.get_node_ip_address()
        self._node_id = ray.get_runtime_context().get_node_id()
        self._control = control.find(setup.namespace)
        self._lock = threading.Lock()
        self._version = 0
        self._networks: tuple[str, ...] = ()
        self._loads = 0
        self._last_loaded = getattr(getattr(shared.sd_model, "sd_checkpoint_info", None), "filename", None)
        self._vae_applied = shared.opts.data.get("sd_vae")
        script_callbacks.on_model_loaded(self._count_load)  # after start-up: every later load is a switch
        log.info("replica %s ready on %s (pid %d), holding %s", self._id, self._node, os.getpid(),
                 self.holding().checkpoint)

    def _count_load(self, model: Any) -> None:
        """A load of another checkpoint than the last one (a setting re-applied to the current model loads
        nothing, though it announces the model again)."""
        filename = getattr(getattr(model, "sd_checkpoint_info", None), "filename", None)
        with self._lock:
            if filename != self._last_loaded:
                self._loads += 1
            self._last_loaded = filename

    def holding(self) -> Holding:
        info = getattr(shared.sd_model, "sd_checkpoint_info", None)
        with self._lock:
            return Holding(self._id, getattr(info, "name", None), self._networks, self._version, self._loads,
                           self._load_s)

    def record_routing_stats(self) -> dict[str, Any]:
        """Polled by Serve for the affinity router (modules.serve.affinity)."""
        return self.holding().as_stats()

    def _prepare(self, work: Work) -> Any:
        """In the job, on the engine thread: the front door's settings, the job's checkpoint loaded (a switch is
        what affinity avoids), its VAE choice applied; then the request object."""
        from modules import sd_models

        shared.opts.data.update(work.settings)
        if work.entry in MODEL_FREE_ENTRIES:
            return unpack(work)
        info = resolve_checkpoint(work.checkpoint) if work.checkpoint else resolve_checkpoint(
            work.settings.get("sd_model_checkpoint"))
        if info is not None:
            current = getattr(shared.sd_model, "sd_checkpoint_info", None)
            if current is None or current.filename != info.filename:
                started = time.perf_counter()
                sd_models.load_model(info)  # with the VAE the settings choose
                self._load_s = time.perf_counter() - started
            elif shared.opts.data.get("sd_vae") != self._vae_applied:
                sd_models.reload_vae_weights()
            # The job's own checkpoint is the setting for its duration: an override then switches nothing, and
            # nothing switches back afterwards (the next job says what it needs).
            shared.opts.data["sd_model_checkpoint"] = info.title
        self._vae_applied = shared.opts.data.get("sd_vae")
        return unpack(work)

    async def run(self, work: Work) -> AsyncIterator[Any]:
        if work.entry not in ENTRIES:
            raise ValueError(f"unknown engine entry {work.entry!r}")
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        outcome: dict[str, Any] = {}

        def job() -> None:
            try:
                outcome["processed"] = _entry(work.entry)(self._prepare(work))
            except BaseException as e:
                outcome["error"] = e
                raise  # the queue logs it as it deserves
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone when the replica is shutting down
                    loop.call_soon_threadsafe(finished.set)

        submitted = call_queue.queue.submit("ray", job, task_id=work.task_id)
        yield Started(self._id, self._node, os.getpid(), self._node_id)
        reporter = _Reporter(work.task_id)
        while not finished.is_set() and not submitted.done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), TICK_S)
            if finished.is_set():
                break
            await self._deliver_flags(work)
            report = reporter.report()
            if report is not None:
                yield report
        with self._lock:
            self._version += 1
            self._networks = work.networks
        holding = self.holding()
        if "error" in outcome or "processed" not in outcome:
            error = outcome.get("error") or RuntimeError(f"the job ended without a result ({submitted.status})")
            yield failure(error, holding)
            return
        processed = outcome["processed"]
        saved = [getattr(image, "already_saved_as", None) for image in getattr(processed, "images", []) or []]
        yield Finished(processed, saved, holding)

    async def _deliver_flags(self, work: Work) -> None:
        """Interrupt/skip/stop sent for this job reach this process's state once the job has begun here (begin
        clears the flags, so earlier ones wait for it)."""
        if shared.state.job != work.task_id:
            return
        try:
            flags = await self._control.take.remote(work.dispatch_id)
        except Exception:  # the front door (and its control actor) went away: the job still runs to its end
            log.warning("could not reach the job control actor", exc_info=True)
            return
        for flag in flags:
            getattr(shared.state, flag)()


__all__ = ["EngineReplica", "ReplicaSetup", "TICK_S", "failure", "replica_flags", "start_engine"]
