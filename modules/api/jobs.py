"""Run work on the shared job queue from an async route, without holding a thread while it waits.

Requests wait in the queue's FIFO, behind UI jobs too; the route's coroutine sleeps on an asyncio event that the
worker thread sets when the function returns. A failure becomes an `ApiError` with a status that says whose
fault it was: 422 for input the engine refused, 503 when no model can run or the GPU ran out of memory, 500
for anything else (a bug, logged by the queue with its traceback).
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
    status = {"code": 500}

    def job() -> Any:
        try:
            return fn()
        except BaseException as e:
            status["code"] = status_for(e)
            raise
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone when the server shut down meanwhile
                loop.call_soon_threadsafe(finished.set)

    submitted = queue.submit(kind, job, task_id=task_id)
    while not submitted.done and not finished.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), _RECHECK_SECONDS)
    try:
        # fn has returned; the worker records the outcome a moment later, so this wait is short
        return submitted.wait() if submitted.done else await asyncio.to_thread(submitted.wait)
    except call_queue.JobFailed as e:
        raise ApiError(status["code"], e.message) from None
    except call_queue.JobCancelled:
        raise ApiError(409, f"task {submitted.id} was cancelled before it started") from None
