"""Run work on the shared job queue from an async route, without holding a thread while it waits.

Requests wait in the queue's FIFO, behind UI jobs too; the route's coroutine sleeps on an asyncio event that the
worker thread sets as soon as the function has returned, and takes the result straight from it (the queue keeps
no reference to the images: its job result is None). A failure becomes an `ApiError` with a status that says
whose fault it was: 422 for input the engine refused, 503 when no model can run or memory (GPU or RAM) ran out,
500 for anything else (a bug, logged by the queue with its traceback). A queue limit refuses with 429.

Given the route's `request`, the wait also watches the HTTP connection: when the client goes away its job is
cancelled (a queued one leaves the queue, a running one is interrupted), so nobody's abandoned work holds the
queue; the same happens when the route's coroutine itself is cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request

from modules import call_queue
from modules.api.errors import ApiError

log = logging.getLogger(__name__)

# How often a waiting request looks whether its client is still connected, and whether its job was cancelled
# while queued (a cancelled queued job never runs its function, so nothing would wake the route).
_RECHECK_SECONDS = 0.5
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but the request log shows why it ended


def status_for(e: BaseException) -> int:
    """HTTP status of a job failure, decided in the worker while the exception is at hand."""
    from modules.models.checkpoint_files import ModelFileError
    from modules.sd_models import NoCheckpointError

    if call_queue.is_out_of_memory(e) or isinstance(e, NoCheckpointError):
        return 503
    declared = getattr(e, "http_status", None)  # errors of upper layers that know their status (a lost replica)
    if isinstance(declared, int) and 400 <= declared < 600:
        return declared
    # RecursionError: a prompt nested thousands of levels deep exhausts the parser's stack
    if isinstance(e, ValueError | KeyError | ModelFileError | RecursionError):
        return 422
    return 500


def _basic_user(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, _ = base64.b64decode(token.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return None
    return user.decode("utf8", "replace") if sep else None


def client_of(request: Request) -> str | None:
    """Whom a request counts against for `queue_max_jobs_per_client`: its --api-auth user (checked by the route
    before the body was read), else its address. A user name is only believed when auth is on: without it a
    client could name itself anew on every request."""
    auth = getattr(request.scope.get("route"), "auth", None)
    user = _basic_user(request.headers.get("authorization")) if auth is not None else None
    if user is not None:
        return f"user:{user}"
    return f"address:{request.client.host}" if request.client is not None else None


async def _client_gone(request: Request | None) -> bool:
    if request is None:
        return False
    try:
        return await request.is_disconnected()
    except Exception:  # a server that cannot tell: assume the client is still there
        log.debug("could not check whether the client disconnected", exc_info=True)
        return False


async def _wait(job: call_queue.Job, finished: asyncio.Event, request: Request | None) -> None:
    """Until the function ran or the job finished without running it; ApiError 499 when the client left."""
    while not finished.is_set() and not job.done:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), _RECHECK_SECONDS)
        if not finished.is_set() and not job.done and await _client_gone(request):
            log.info("%s: the client disconnected; cancelling the job (%s)", job.id, job.status)
            raise ApiError(CLIENT_CLOSED, f"task {job.id} was cancelled: the client disconnected")


async def run(queue: call_queue.JobQueue, kind: str, fn: Callable[[], Any], task_id: str | None = None, *,
              request: Request | None = None, client: str | None = None) -> Any:
    """Submit `fn` and return its result once it ran; raises ApiError when it was refused (429), failed or was
    cancelled. `request`: the route's, watched for a disconnect and, unless `client` is given, naming the
    client for the per-client limit."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as e:
            # an ApiError (a damaged upload found while decoding) already says what to answer
            outcome["error"] = e if isinstance(e, ApiError) else ApiError(status_for(e), call_queue.error_message(e))
            raise  # the queue records the failure and logs it as it deserves
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone when the server shut down meanwhile
                loop.call_soon_threadsafe(finished.set)

    if client is None and request is not None:
        client = client_of(request)
    try:
        submitted = queue.submit(kind, job, task_id=task_id, client=client)
    except call_queue.QueueFull as e:
        raise ApiError(e.status, e.message) from None
    try:
        await _wait(submitted, finished, request)
    finally:
        if not finished.is_set() and not submitted.done:  # the client left, or this coroutine was cancelled
            submitted.cancel()
    return _outcome(submitted, outcome)


def _outcome(submitted: call_queue.Job, outcome: dict[str, Any]) -> Any:
    if "error" in outcome:
        raise outcome["error"]
    if "result" in outcome:
        return outcome["result"]
    try:  # finished without running its function: cancelled while queued (or the queue shut down)
        submitted.wait(timeout=0)
    except call_queue.JobFailed as e:
        raise ApiError(500, e.message) from None
    except (call_queue.JobCancelled, TimeoutError):
        pass
    raise ApiError(409, f"task {submitted.id} was cancelled before it started")
