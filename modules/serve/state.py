"""Progress and control of jobs that run on replicas, seen from the front door.

`RemoteJobState`: one per running job (the job's `progress_state`, which `modules.progress` and the UI's Skip
read): the replica's `shared.state` as its last report says, and interrupt/skip/stop sent to that replica.
`FrontDoorState`: the front door's `shared.state` under --ray. A1111's global routes (`/sdapi/v1/progress`,
`/interrupt`, `/skip`) read and drive it; it shows the oldest running job, and its interrupt/skip reach every
running job (with one GPU there is one; with several, "the running job" is each of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from modules.serve.work import Progress
from modules.shared_state import State

# What a progress report sets, and what the front door's own state copies from the job it shows.
_FIELDS = ("job", "job_no", "job_count", "job_timestamp", "sampling_step", "sampling_steps", "skipped", "interrupted",
           "stopping_generation")
_MIRRORED = (*_FIELDS, "time_start", "textinfo", "current_image", "id_live_preview", "processing_has_refined_job_count")
WAITING = "Waiting for a replica..."


class RemoteJobState(State):
    """The state of one job on its replica. `send(flag)` delivers "interrupt", "skip" or "stop_generating" to the
    replica that runs (or will run) it."""

    def __init__(self, task_id: str, send: Callable[[str], None]):
        super().__init__()
        self._send = send
        self.job = task_id
        self.job_count = -1  # not known until the replica says
        self.time_start = time.time()
        self.textinfo = WAITING

    def interrupt(self) -> None:
        super().interrupt()
        self._send("interrupt")

    def skip(self) -> None:
        super().skip()
        self._send("skip")

    def stop_generating(self) -> None:
        super().stop_generating()
        self._send("stop_generating")

    def apply(self, report: Progress) -> None:
        """Take a replica's report. Flags asked for here stay set until the replica has seen them."""
        asked = (self.interrupted, self.skipped, self.stopping_generation)
        with self._lock:
            for name in _FIELDS:
                if name in report.state:
                    setattr(self, name, report.state[name])
            self.interrupted, self.skipped, self.stopping_generation = (
                a or b for a, b in zip(asked, (self.interrupted, self.skipped, self.stopping_generation), strict=True))
            self.time_start = time.time() - report.elapsed  # on this host's clock
            self.textinfo = report.textinfo
            self.processing_has_refined_job_count = report.refined_job_count
            if report.preview is not None:
                self.current_image = report.preview
                self.id_live_preview = report.id_live_preview

    def restart(self, textinfo: str) -> None:
        """The job is sent again (its replica died): progress starts over; flags asked for stay."""
        with self._lock:
            self.job_no, self.job_count, self.sampling_step, self.sampling_steps = 0, -1, 0, 0
            self.time_start = time.time()
            self.textinfo = textinfo


class FrontDoorState(State):
    """`shared.state` of a front door whose jobs run on replicas (see the module docstring)."""

    def __init__(self, running: Callable[[], list[Any]]):
        super().__init__()
        self._running = running  # the running jobs, oldest first

    def _remote_states(self) -> list[RemoteJobState]:
        return [s for job in self._running() if isinstance(s := getattr(job, "progress_state", None), RemoteJobState)]

    def interrupt(self) -> None:
        super().interrupt()
        for state in self._remote_states():
            state.interrupt()

    def interrupt_here(self) -> None:
        """Only this process's flag: a job still in its front-door part (it reads this state)."""
        super().interrupt()

    def skip(self) -> None:
        super().skip()
        for state in self._remote_states():
            state.skip()

    def stop_generating(self) -> None:
        super().stop_generating()
        for state in self._remote_states():
            state.stop_generating()

    def show(self, source: State | None) -> None:
        """Show a job's progress (None: nothing runs, as after `end()`)."""
        with self._lock:
            if source is None:
                self.job, self.job_count, self.job_no, self.textinfo = "", 0, 0, None
                self.sampling_step = self.sampling_steps = 0
                return
            for name in _MIRRORED:
                setattr(self, name, getattr(source, name))


__all__ = ["FrontDoorState", "RemoteJobState", "WAITING"]
