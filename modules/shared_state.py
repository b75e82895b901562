"""Progress of the running job (A1111's `shared.state`): what the progress API reports and the flags the
engine polls every step (interrupt, skip, stop generating).

One `State` lives at `modules.shared.state`. It imports neither torch nor `modules.shared` at module level
(shared imports this module), so reading it stays cheap; settings are read at call time. It never imports the
engine either: the job that knows the model hands over the function that turns latents into previews
(`state.preview_function`, e.g. `modules.engine.previews.preview_function()`); without one, no previews.

It also drives A1111's console progress bars (`modules.console_progress`) from the same calls: begin, the
engine's once-per-step `set_current_image`, nextjob and end.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from modules.console_progress import ConsoleProgress

log = logging.getLogger(__name__)

PreviewFunction = Callable[[Any], Any]  # latent batch -> PIL image


def _opt(name: str, default: Any) -> Any:
    from modules import shared  # at call time: shared imports this module

    return getattr(shared.opts, name, default)


class State:
    """Field names, defaults and methods are A1111's; `progress()` is the computation /sdapi/v1/progress does."""

    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_latent: Any = None
    current_image: Any = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo: str | None = None
    time_start: float | None = None
    server_start: float | None = None

    def __init__(self, preview_function: PreviewFunction | None = None) -> None:
        self.server_start = time.time()
        # Decodes current_latent for live previews; handed over by the job, which knows the model.
        self.preview_function = preview_function
        self._lock = threading.RLock()
        self.console = ConsoleProgress()

    # --- flags the engine polls ---

    def interrupt(self) -> None:
        self.interrupted = True
        log.info("Received interrupt request")

    def skip(self) -> None:
        self.skipped = True
        log.info("Received skip request")

    def stop_generating(self) -> None:
        self.stopping_generation = True
        log.info("Received stop generating request")

    # --- job life cycle ---

    def begin(self, job: str = "(unknown)") -> None:
        with self._lock:
            self.sampling_step = 0
            self.time_start = time.time()
            self.job_count = -1
            self.processing_has_refined_job_count = False
            self.job_no = 0
            self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
            self.current_latent = None
            self.current_image = None
            self.current_image_sampling_step = 0
            self.id_live_preview = 0
            self.skipped = False
            self.interrupted = False
            self.stopping_generation = False
            self.textinfo = None
            self.job = job
        self.console.end()  # bars a job left open (it never called end) do not run into this one's
        # DEBUG, not INFO: the console bars already show each job; two lines per job with its id are noise.
        log.debug("Starting job %s", job)

    def end(self) -> None:
        self.console.end()  # first, so the log line below never lands inside a bar
        with self._lock:
            duration = time.time() - (self.time_start or time.time())
            log.debug("Ending job %s (%.2f seconds)", self.job, duration)
            self.job = ""
            self.job_count = 0

    @contextlib.contextmanager
    def job_scope(self, job: str) -> Iterator[None]:
        """Begin a job unless one is running, and end only what was begun here: the generations of a script (the
        cells of a plot, the lines of a file) are one job, so an interrupt stops all that come after it."""
        owns = not self.job
        if owns:
            self.begin(job=job)
        try:
            yield
        finally:
            if owns:
                self.end()

    @property
    def stopping(self) -> bool:
        """Interrupted, or asked to stop after the current generation."""
        return bool(self.interrupted or self.stopping_generation)

    def nextjob(self) -> None:
        # With previews set to -1 ("only after each batch"), the batch just finished is shown now.
        if _opt("live_previews_enable", True) and _opt("show_progress_every_n_steps", 10) == -1:
            self.do_set_current_image()
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0
            self.current_image_sampling_step = 0
        self.console.next_batch()

    # --- reporting ---

    def dict(self) -> dict[str, Any]:
        """The "state" object of GET /sdapi/v1/progress."""
        with self._lock:
            return {
                "skipped": self.skipped,
                "interrupted": self.interrupted,
                "stopping_generation": self.stopping_generation,
                "job": self.job,
                "job_count": self.job_count,
                "job_timestamp": self.job_timestamp,
                "job_no": self.job_no,
                "sampling_step": self.sampling_step,
                "sampling_steps": self.sampling_steps,
            }

    def progress(self, now: float | None = None) -> tuple[float, float]:
        """(progress 0..1, eta_relative in seconds), computed as A1111's progress API does: finished jobs plus
        the fraction of the current job's steps, starting from 0.01 so the ETA never divides by zero."""
        with self._lock:
            job_count, job_no = self.job_count, self.job_no
            step, steps, start = self.sampling_step, self.sampling_steps, self.time_start
        if job_count == 0:
            return 0.0, 0.0
        progress = 0.01
        if job_count > 0:
            progress += job_no / job_count
            # A1111 divides by job_count here even while it is still -1 (unknown), which gives a negative
            # progress; we count the step fraction only once the job count is known.
            if steps > 0:
                progress += 1 / job_count * step / steps
        elapsed = (now if now is not None else time.time()) - (start if start is not None else time.time())
        eta_relative = elapsed / progress - elapsed
        return min(progress, 1.0), eta_relative

    # --- live previews ---

    def set_current_image(self) -> None:
        """The engine calls this once per sampling step, after setting sampling_step and sampling_steps: it
        advances the console bars, and makes a new preview from current_latent once
        `show_progress_every_n_steps` steps have passed since the last one (only when live previews are on)."""
        self.console.step(self.sampling_step, self.sampling_steps, self.job_no, self.job_count)
        every = _opt("show_progress_every_n_steps", 10)
        if not _opt("live_previews_enable", True) or every == -1:
            return
        if self.sampling_step - self.current_image_sampling_step >= every:
            self.do_set_current_image()

    def do_set_current_image(self) -> None:
        latent, preview = self.current_latent, self.preview_function
        if latent is None or preview is None:
            return
        try:
            image = preview(latent)
        except Exception:
            # Switching models mid-job can leave the VAE on the CPU; a missed preview must not stop the job.
            log.exception("live preview failed")
            return
        if image is None:
            return
        self.assign_current_image(image)
        with self._lock:
            self.current_image_sampling_step = self.sampling_step

    def assign_current_image(self, image: Any) -> None:
        # JPEG has no alpha channel.
        if _opt("live_previews_image_format", "png") == "jpeg" and getattr(image, "mode", None) == "RGBA":
            image = image.convert("RGB")
        with self._lock:
            self.current_image = image
            self.id_live_preview += 1


__all__ = ["PreviewFunction", "State"]
