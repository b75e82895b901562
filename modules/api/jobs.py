"""Run work on the shared job queue from an async route, without holding a thread while it waits.

Requests wait in the queue's FIFO, behind UI jobs too; the route's coroutine sleeps on an asyncio event that the
worker thread sets as soon as the function has returned, and takes the result straight from it (the queue keeps
no reference to the images: its job result is None). A failure becomes an `ApiError` with a status that says
whose fault it was: 422 for input the engine refused, 503 when no model can run or the GPU ran out of memory,
500 for anything else (a bug, logged by the queue with its traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from modules import call_queue
from modules.api.errors import ApiError

_RECHECK_SECONDS = 1.0  # a cancelled queued job never runs its function; notice that too


def status_for(e: BaseException) -> int:
    """HTTP status of a job failure, decided in the worker while the exception is at hand."""
    from modules.models.checkpoint_files import ModelFileError
    from modules.sd_models import NoCheckpointError

    if call_queue.is_out_of_memory(e) or isinstance(e, NoCheckpointError):
        return 503
    # RecursionError: a prompt nested thousands of levels deep exhausts the parser's stack
    if isinstance(e, ValueError | KeyError | ModelFileError | RecursionError):
        return 422
    return 500


async def run(queue: call_queue.JobQueue, kind: str, fn: Callable[[], Any], task_id: str | None = None) -> Any:
    """Submit `fn` and return its result once it ran; raises ApiError when it failed or was cancelled."""
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

    submitted = queue.submit(kind, job, task_id=task_id)
    while not finished.is_set() and not submitted.done:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), _RECHECK_SECONDS)
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
