"""Glue between a Generate button and the queue: build the request object, stream progress, show the result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from modules.ui import results, tasks, toprow


def stream(kind: str, make_work: Callable[[], Callable[[], Any]], request: gr.Request | None
           ) -> Iterator[tuple[Any, ...]]:
    """Build the job from the widgets' values (make_work), run it on the queue, and yield the results panel's
    outputs as it waits, runs and ends. A request refused while it is built shows its reason like a failed job."""
    session = getattr(request, "session_hash", None)
    started = time.perf_counter()
    yield results.starting()  # clear the last run's log and errors at once
    try:
        work = make_work()
    except (TypeError, ValueError) as e:  # a refused request, an empty or unreadable input
        yield results.failed(str(e))
        return
    for update in tasks.run(kind, work, session, getattr(request, "username", None)):
        if not update.finished:
            yield results.in_progress(update.progress_html)
        elif update.error is not None:
            yield results.failed(update.error)
        else:
            yield results.finished(update.result, started)


def wire_buttons(top: toprow.Toprow, panel: results.Results, handler: Callable[..., Any], inputs: list[Any]) -> None:
    """Generate (and Ctrl+Enter, which clicks it), Interrupt, Skip; "generate forever" re-clicks from the page."""
    event = top.generate.click(handler, inputs=inputs, outputs=panel.outputs, show_progress="hidden",
                               concurrency_limit=None, concurrency_id="generate")
    # After each run the page decides whether "generate forever" wants another (javascript/ui.js).
    event.then(None, js=f"() => window.studioAfterGenerate && window.studioAfterGenerate('{top.tabname}')")

    def interrupt(request: gr.Request) -> None:
        tasks.interrupt(getattr(request, "session_hash", None))

    def skip(request: gr.Request) -> None:
        tasks.skip(getattr(request, "session_hash", None))

    top.interrupt.click(interrupt, show_progress="hidden", concurrency_limit=None, queue=False)
    top.skip.click(skip, show_progress="hidden", concurrency_limit=None, queue=False)
