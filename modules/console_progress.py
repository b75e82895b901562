"""A1111's console progress bars (on stderr): one tqdm bar per sampling run ("20/20 [00:02<00:00, 8.1it/s]")
and, with the `multiple_tqdm` setting (default on), a "Total progress" bar across the whole job.

`--disable-console-progressbars` turns both off. `modules.shared_state.State` drives this from its own
methods (begin, each sampling step, nextjob, end), so every job gets the bars, whether it came from the UI,
the API or a direct `process_images` call, without the engine knowing about the console.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

TOTAL_DESC = "Total progress"


def _shared() -> Any:
    from modules import shared  # at call time: shared imports shared_state, which imports this module

    return shared


def enabled() -> bool:
    # No stderr at all (pythonw, some service managers): nowhere to draw.
    return sys.stderr is not None and not getattr(_shared().cmd_opts, "disable_console_progressbars", False)


def total_enabled() -> bool:
    return bool(getattr(_shared().opts, "multiple_tqdm", True))


def _open_bar(total: int | None, position: int, desc: str | None = None) -> Any:
    from tqdm import tqdm  # only once a job samples: importing the state stays cheap

    # file=None: tqdm writes to sys.stderr as it is at this moment (what pytest's capture replaces, too)
    return tqdm(total=total or None, position=position, desc=desc, leave=True, file=None)


class ConsoleProgress:
    """The bars of the running job. Thread-safe; every call is cheap when the bars are off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: Any = None  # the bar of the current sampling run (one batch)
        self._total: Any = None  # "Total progress" across the job's batches

    def step(self, step: int, steps: int, job_no: int, job_count: int) -> None:
        """The sampler has done `step` of `steps` steps in batch `job_no` (0-based) of `job_count`.

        Reporting the same step again moves nothing, so extra calls (a preview made twice) are harmless.
        """
        if step <= 0 or not enabled():
            return
        with self._guard():
            self._advance_run(step, steps)
            if total_enabled():
                self._advance_total(step, steps, job_no, job_count)

    def next_batch(self) -> None:
        """A batch has finished (or was skipped): its bar stays on screen as it ended."""
        with self._guard():
            self._run = _close(self._run)

    def end(self) -> None:
        """The job has ended (finished, interrupted or failed): close both bars."""
        with self._guard():
            self._run = _close(self._run)
            self._total = _close(self._total)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the lock; a console that went away (closed stderr, broken pipe) must never fail the job."""
        with self._lock:
            try:
                yield
            except (OSError, ValueError) as e:
                self._run = self._total = None
                log.debug("console progress bar dropped: %s", e)

    def _advance_run(self, step: int, steps: int) -> None:
        if self._run is not None and step < self._run.n:
            self._run = _close(self._run)  # a new sampling run began without nextjob
        if self._run is None:
            self._run = _open_bar(steps, position=0)
        _move_to(self._run, step, max(steps, step) if steps > 0 else None)  # DPM adaptive may run over

    def _advance_total(self, step: int, steps: int, job_no: int, job_count: int) -> None:
        if steps <= 0:
            return  # without a step count the job's length is unknown
        # A batch job (img2img from a directory) resets job_count per image while job_no keeps counting.
        jobs = max(job_count, job_no + 1)
        done = job_no * steps + step
        if self._total is None:
            self._total = _open_bar(jobs * steps, position=1, desc=TOTAL_DESC)
        _move_to(self._total, done, max(jobs * steps, done))


def _move_to(bar: Any, n: int, total: int | None) -> None:
    """Set the total, then advance to `n` through update(), so tqdm measures the speed and ETA itself."""
    bar.total = total
    if n > bar.n:
        bar.update(n - bar.n)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()
    return None


__all__ = ["TOTAL_DESC", "ConsoleProgress", "enabled", "total_enabled"]
