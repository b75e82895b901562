"""The moments around each component of the page, for extensions: A1111's `on_before_component` /
`on_after_component` callbacks and the scripts' `before_component` / `after_component` methods.

Gradio has no event for "a component is being made", so while the page is built (and only then) the component
constructor is wrapped; the wrapper is removed when the page is done. Components an extension makes inside such
a callback land where the callback runs, which is how extensions add a button beside one of ours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gradio.components import Component

from modules import script_callbacks, scripts


def _script_hooks(method: str, component: Any, kwargs: dict[str, Any]) -> None:
    elem_id = kwargs.get("elem_id")
    for runner in (scripts.scripts_txt2img, scripts.scripts_img2img):
        for script in runner.scripts:
            try:
                getattr(script, method)(component, **kwargs)
                pairs = script.on_before_component_elem_id if method == "before_component" \
                    else script.on_after_component_elem_id
                for wanted, callback in pairs or []:
                    if wanted == elem_id:
                        callback(scripts.OnComponent(component))
            except Exception:
                script_callbacks.report(f"{method} of script {type(script).__name__}", script.filename or "")


_depth = 0  # a callback that makes components must not re-enter the hooks for them


@contextlib.contextmanager
def page_build() -> Iterator[None]:
    """Call the component hooks for every component made inside this block."""
    global _depth
    original = Component.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        global _depth
        if _depth:
            original(self, *args, **kwargs)
            return
        _depth += 1
        try:
            script_callbacks.before_component_callback(self, **kwargs)
            _script_hooks("before_component", self, kwargs)
        finally:
            _depth -= 1
        original(self, *args, **kwargs)
        _depth += 1
        try:
            script_callbacks.after_component_callback(self, **kwargs)
            _script_hooks("after_component", self, kwargs)
        finally:
            _depth -= 1

    Component.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        Component.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def extension_ui() -> Iterator[None]:
    """Around UI code written by extensions (script ui(), on_ui_tabs): Gradio 3 arguments are mapped to 6."""
    from modules import gradio_compat

    with gradio_compat.gradio3_compat():
        yield
