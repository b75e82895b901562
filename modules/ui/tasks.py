"""Run a UI job on the shared queue and stream its progress (queue place, bar, ETA, live preview) to the page.

Every browser tab submits to `call_queue.queue`, so one job runs at a time and the others see their place in
line. The generator below is what a Generate button's gradio event runs; it yields progress HTML while the job
waits or runs, then the job's result or its readable error. Jobs are remembered per browser session, so
Interrupt and Skip act on the job of the tab that pressed them. The queue's limits (`queue_max_jobs`,
`queue_max_jobs_per_client`, a tab or logged-in user being the client) refuse a job with a readable error, and a
tab that goes away takes its job with it.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from modules import call_queue, progress, shared

DEFAULT_REFRESH_MS = 500  # A1111's page polls this often when the setting is 0
_MAX_SESSIONS = 1000

_lock = threading.Lock()
_session_jobs: dict[str, call_queue.Job] = {}


@dataclass
class Update:
    """One step of a job as the page sees it: progress HTML while it runs, then a result or an error."""

    progress_html: str = ""
    result: Any = None
    error: str | None = None
    finished: bool = False


def _remember(session: str, job: call_queue.Job) -> None:
    with _lock:
        _session_jobs[session] = job
        if len(_session_jobs) > _MAX_SESSIONS:  # forget the oldest finished jobs so memory stays flat
            for key in [k for k, j in _session_jobs.items() if j.done][: len(_session_jobs) - _MAX_SESSIONS]:
                del _session_jobs[key]


def job_of(session: str | None) -> call_queue.Job | None:
    with _lock:
        return _session_jobs.get(session or "")


def client_of(session: str | None, user: str | None = None) -> str | None:
    """Whom a UI job counts against for `queue_max_jobs_per_client`: the logged-in user (all their tabs), else
    the browser tab (gradio's session)."""
    if user:
        return f"ui-user:{user}"
    return f"ui-session:{session}" if session else None


def run(kind: str, fn: Callable[[], Any], session: str | None, user: str | None = None) -> Iterator[Update]:
    """Submit fn as a job and follow it until it finishes. A queue limit refuses it with a readable error.

    When the page goes away gradio stops the event and this generator is closed (GeneratorExit at a yield, or
    it is dropped): the job is cancelled then, so a closed tab's work leaves the queue or stops running."""
    try:
        job = call_queue.queue.submit(kind, fn, task_id=call_queue.new_task_id(kind), client=client_of(session, user))
    except call_queue.QueueFull as e:
        yield Update(error=e.message, finished=True)
        return
    _remember(session or "", job)
    try:
        yield from _follow(job)
    finally:
        if not job.done:  # closed before the end: nobody is waiting for this job any more
            job.cancel()


def stream_html(kind: str, fn: Callable[[], Any], request: Any, done: Callable[[Any], str],
                failed: Callable[[str], str]) -> Iterator[str]:
    """A button's job as one HTML line that follows it: queued, progress, then `done(result)` or
    `failed(message)`. For jobs whose result is a message (a download, a merge, a settings action)."""
    yield progress_html({"queued": True}, None)
    for update in run(kind, fn, getattr(request, "session_hash", None), getattr(request, "username", None)):
        if not update.finished:
            yield update.progress_html
        elif update.error is not None:
            yield failed(update.error)
        else:
            yield done(update.result)


def refresh_seconds() -> float:
    """How often the page's bar and preview update: the "Progressbar and preview update period" setting. Each
    update costs the page a pass over all its components, so the default (1 s, as in A1111) keeps a slow machine's
    browser from spending a third of a core on it; a finished job is shown at once whatever the period."""
    period_ms = shared.opts.live_preview_refresh_period or DEFAULT_REFRESH_MS
    return max(float(period_ms), 1.0) / 1000


def _follow(job: call_queue.Job) -> Iterator[Update]:
    id_live_preview, preview = -1, None
    while True:
        try:
            result = job.wait(timeout=refresh_seconds())
        except TimeoutError:
            info = progress.progress_for(job.id, id_live_preview=id_live_preview, live_preview=True)
            if info.get("live_preview"):
                preview = info["live_preview"]
                id_live_preview = info.get("id_live_preview", id_live_preview)
            yield Update(progress_html=progress_html(info, preview))
            continue
        except call_queue.JobFailed as e:
            yield Update(error=e.message, finished=True)
            return
        except call_queue.JobCancelled:
            yield Update(error="Cancelled before it started.", finished=True)
            return
        yield Update(result=result, finished=True)
        return


def _format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_html(info: dict[str, Any], preview: str | None) -> str:
    """The progress bar (with queue place or percentage and ETA) and the last live preview."""
    if not info.get("active") and info.get("queued"):
        position = info.get("queue_position") or 0
        text = f"Waiting in queue: {position} job{'s' if position != 1 else ''} ahead" if position else "Waiting..."
        percent = 0.0
    else:
        percent = float(info.get("progress") or 0.0) * 100
        eta = _format_eta(info.get("eta"))
        text = f"{percent:.0f}%" + (f" ETA: {eta}" if eta else "")
    textinfo = info.get("textinfo") if info.get("active") else None  # the queue place is already in the bar
    bar = (
        "<div class='progressDiv'>"
        f"<div class='progress' style='width:{percent:.1f}%'></div>"
        f"<span class='progress-text'>{html.escape(text)}</span></div>"
    )
    extra = f"<div class='progress-info'>{html.escape(str(textinfo))}</div>" if textinfo else ""
    # The preview is a data: URI made by the server from the latent, never text from a request.
    image = f"<div class='livePreview'><img src='{html.escape(preview, quote=True)}' alt='live preview'></div>" \
        if preview and preview.startswith("data:image/") else ""
    return bar + extra + image


def interrupt(session: str | None) -> None:
    """Stop this tab's job: a queued one leaves the queue, a running one stops at the next step.

    A tab that has no job of its own (reloaded page) interrupts the running job, as A1111's global button does.
    """
    job = job_of(session)
    if job is not None and not job.done:
        job.cancel()
    elif call_queue.queue.current() is not None:
        shared.state.interrupt()


def skip(session: str | None) -> None:
    """Skip the current image of this tab's running job (or of the running job, for a tab without one)."""
    job = job_of(session)
    if job is not None and not job.done:
        if job.status == "running":  # a job run on a replica (--ray) carries its own state to ask
            (getattr(job, "progress_state", None) or shared.state).skip()
    elif call_queue.queue.current() is not None:
        shared.state.skip()
