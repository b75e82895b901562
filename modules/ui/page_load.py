"""What the page refreshes from the server each time it opens, sent as one load event.

Gradio's front end walks every component (about a thousand on this page) for each event's status messages and for
each load event's dispatch, so seven small load events cost over a second of the browser's time per page open on a
slow machine; one event costs one walk. A value the page already has (the one its config was built with) is not
sent again: each output the front end applies costs it a re-render, and most settings are as they were. A part
that raises leaves its own outputs as they were and the others still arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

log = logging.getLogger(__name__)
_MISSING = object()


def _same(value: Any, served: Any) -> bool:
    """A plain value equal to the served one, of the same type (an update object or a doubtful comparison: not)."""
    if served is _MISSING or type(value) is not type(served) or not isinstance(value, str | int | float | bool | list):
        return False
    try:
        return bool(value == served)
    except Exception:
        return False


class PageLoad:
    """Collects (function, outputs) parts; `wire(demo)` registers them as one non-queued, silent load event."""

    def __init__(self) -> None:
        self._parts: list[tuple[Callable[[], Any], list[gr.components.Component]]] = []
        self._demo: gr.Blocks | None = None
        self._served: tuple[dict, dict[int, Any]] | None = None  # (the config, its values by component id)

    def add(self, fn: Callable[[], Any], outputs: Sequence[gr.components.Component]) -> None:
        """`fn()` returns one value per output (a bare value when there is one output), as a gradio handler does."""
        self._parts.append((fn, list(outputs)))

    def values(self) -> list[Any]:
        """Every part's values in order; a part that raised gives `gr.skip()` for each of its outputs."""
        values: list[Any] = []
        for fn, outputs in self._parts:
            try:
                result = fn()
            except Exception:
                log.exception("refreshing the page's values failed in %s", getattr(fn, "__qualname__", fn))
                values.extend(gr.skip() for _ in outputs)
                continue
            if len(outputs) == 1:
                values.append(result)
            else:
                if len(result) != len(outputs):
                    raise ValueError(f"{fn.__qualname__} returned {len(result)} values for {len(outputs)} outputs")
                values.extend(result)
        served = self._served_values()
        return [gr.skip() if _same(value, served.get(component._id, _MISSING)) else value
                for component, value in zip(self._outputs(), values, strict=True)]

    def _outputs(self) -> list[gr.components.Component]:
        return [component for _, part in self._parts for component in part]

    def _served_values(self) -> dict[int, Any]:
        """Each component's value in the config pages are given (gradio builds it again at launch)."""
        config = getattr(self._demo, "config", None)
        if not config:
            return {}
        if self._served is None or self._served[0] is not config:
            self._served = (config, {c["id"]: c["props"]["value"] for c in config.get("components", [])
                                     if "value" in c.get("props", {})})
        return self._served[1]

    def wire(self, demo: gr.Blocks) -> None:
        outputs = self._outputs()
        self._demo = demo
        if outputs:
            demo.load(self.values, outputs=outputs, show_progress="hidden", queue=False)
