"""A1111's `modules.restart`: start this server again in place, with the same command line, so changes that are
read only at start-up (which extensions load, their scripts and tabs) take effect; or stop it for good.

The restart is a job on the shared queue: it waits for the jobs before it, never cuts a generation short. The
process image is replaced (`os.execv`): the data-dir lock and the listening socket are closed on exec (Python
opens them close-on-exec), so the new server takes them again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from modules import call_queue, script_callbacks

log = logging.getLogger(__name__)

DELAY_S = 1.0  # time for the answer ("restarting...") to reach the page before the server goes away
_stop = threading.Event()  # set when a stop was asked for: the serving loop (webui.py, the API server) ends


def is_restartable() -> bool:
    """A1111's name: whether this process can start itself again (it was started from a script file)."""
    return bool(sys.argv and sys.argv[0])


def command() -> list[str]:
    """The command line this process was started with, for `os.execv`."""
    return [sys.executable, *sys.argv]


def restart_program(exec_fn: Callable[[str, list[str]], None] = os.execv) -> None:
    """Replace this process with a fresh start of the same command (extensions undo their set-up first)."""
    script_callbacks.before_reload_callback()
    script_callbacks.script_unloaded_callback()
    argv = command()
    log.warning("Restarting: %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    exec_fn(argv[0], argv)


def request_restart(exec_fn: Callable[[str, list[str]], None] = os.execv) -> call_queue.Job:
    """Queue the restart after the jobs already waiting; when its turn comes it holds the queue for DELAY_S (so
    the page hears back and no job starts that the restart would cut short), then restarts."""
    def restart() -> None:
        time.sleep(DELAY_S)
        restart_program(exec_fn)

    return call_queue.queue.submit("restart", restart)


def request_stop() -> call_queue.Job:
    """Queue a clean stop after the jobs already waiting (A1111's server command "stop"): the serving loop ends,
    the queue shuts down and the process exits with status 0."""
    def stop() -> None:
        time.sleep(DELAY_S)
        log.warning("Stopping the server")
        _stop.set()

    return call_queue.queue.submit("server-stop", stop)


def wait_for_stop(timeout: float | None = None) -> bool:
    """True once a stop was requested; waits up to `timeout` seconds for one."""
    return _stop.wait(timeout)
