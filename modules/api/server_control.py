"""A1111's `/sdapi/v1/server-stop`, `/server-restart` and `/server-kill`, only with `--api-server-stop` (and behind
`--api-auth` like every route). Notebook and RunPod users script these to restart after installing extensions.

Stop and restart are jobs on the shared queue, as the Extensions tab's restart is: they wait for the jobs already
queued instead of cutting a picture short, and the answer reaches the client before the server goes. Kill is
immediate, for a server whose job hangs.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fastapi.responses import JSONResponse

from modules import restart

log = logging.getLogger(__name__)

KILL_DELAY_S = 0.5  # lets the answer leave before the process ends


def server_stop() -> dict[str, Any]:
    job = restart.request_stop()
    return {"message": "Stopping after the jobs already queued.", "task_id": job.id}


def server_restart() -> Any:
    if not restart.is_restartable():
        return JSONResponse({"error": "not restartable", "detail": "this server cannot start itself again"},
                            status_code=501)
    job = restart.request_restart()
    return {"message": "Restarting after the jobs already queued.", "task_id": job.id}


def server_kill() -> dict[str, Any]:
    log.warning("Killing the server (POST /sdapi/v1/server-kill)")
    threading.Timer(KILL_DELAY_S, os._exit, (0,)).start()
    return {"message": "Killing the server now."}


def register(api: Any) -> None:
    add = api.add_api_route
    add("/sdapi/v1/server-stop", server_stop, methods=["POST"])
    add("/sdapi/v1/server-restart", server_restart, methods=["POST"])
    add("/sdapi/v1/server-kill", server_kill, methods=["POST"])
