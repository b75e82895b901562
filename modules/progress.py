"""What A1111's `POST /internal/progress` and `GET /internal/pending-tasks` compute, without a web framework.

The browser makes up a task id, starts polling with it, then submits the job; so an id the queue has not
seen yet is simply "waiting", never an error.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from modules import call_queue, shared

_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}


def pending_tasks() -> list[str]:
    """Ids of queued jobs, next first."""
    return [job.id for job in call_queue.queue.pending()]


def current_task() -> str | None:
    job = call_queue.queue.current()
    return job.id if job is not None else None


def _response(**values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "active": False,
        "queued": False,
        "completed": False,
        "progress": None,
        "eta": None,
        "live_preview": None,
        "id_live_preview": -1,
        "textinfo": None,
        "queue_position": 0,
    }
    out.update(values)
    return out


def encode_preview(image: Any, image_format: str) -> str:
    """A data: URI for a PIL image in the live preview format."""
    fmt = _FORMATS.get(str(image_format).lower(), "png")
    kwargs: dict[str, Any] = {}
    if fmt == "png":
        # optimize is slow on large images; a fast, light compression keeps polling cheap
        kwargs = {"optimize": True} if max(image.size) <= 256 else {"optimize": False, "compress_level": 1}
    elif fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **kwargs)
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _live_preview(state: Any, id_live_preview: int) -> tuple[str | None, int]:
    # Read the id before the image: if a new preview lands in between, the client gets the newer picture
    # under the older id and simply receives it once more on its next poll.
    current_id = state.id_live_preview
    if current_id == id_live_preview:
        return None, id_live_preview
    image = state.current_image
    if image is None:
        return None, id_live_preview
    image_format = getattr(shared.opts, "live_previews_image_format", "png")
    return encode_preview(image, image_format), current_id


def _finished(job: call_queue.Job) -> dict[str, Any]:
    textinfo = {"failed": job.error, "cancelled": "Cancelled"}.get(job.status)
    return _response(completed=True, progress=1.0, eta=0.0, textinfo=textinfo)


def progress_for(task_id: str, id_live_preview: int = -1, live_preview: bool = True) -> dict[str, Any]:
    """The /internal/progress response for one task:
    `{active, queued, completed, progress, eta, live_preview, id_live_preview, textinfo, queue_position}`."""
    job = call_queue.queue.get(task_id)
    if job is None:
        return _response(textinfo="Waiting...")

    if job.status == "queued":
        pending = call_queue.queue.pending()
        if job in pending:  # else it started (or was cancelled) a moment ago: the next poll will tell
            textinfo = f"In queue: {pending.index(job) + 1}/{len(pending)}"
        else:
            textinfo = "Waiting..."
        return _response(queued=True, textinfo=textinfo, queue_position=job.position())

    if job.status != "running":
        return _finished(job)

    # A job that runs on another machine (--ray, modules/serve) carries the state its replica reports.
    state = getattr(job, "progress_state", None) or shared.state
    progress, eta = state.progress()
    if state.job_count <= 0:
        eta = None  # the job count is not known yet: an ETA would be a guess
    preview, preview_id = None, id_live_preview
    # The engine makes previews as it samples (state.set_current_image); here we only encode the latest, so
    # a poll never decodes latents on the request thread.
    if live_preview and getattr(shared.opts, "live_previews_enable", True):
        preview, preview_id = _live_preview(state, id_live_preview)
    if state.job != job.id and job.done:
        return _finished(job)  # it ended while we read: those numbers may be the next job's
    return _response(
        active=True,
        progress=progress,
        eta=eta,
        live_preview=preview,
        id_live_preview=preview_id,
        textinfo=state.textinfo,
    )


__all__ = ["current_task", "encode_preview", "pending_tasks", "progress_for"]
