"""A1111's `modules.ui_components`: the Gradio component subclasses extensions build their UI from.

Each class is drawn by the browser as the Gradio 6 component it extends (`get_block_name`), and its config is
read with that component's signature, so it behaves like the plain component plus what A1111 added:

    ToolButton        a small square icon button (CSS class "tool"; `tooltip=` becomes its hover text)
    FormRow, FormColumn, FormGroup, FormHTML, FormColorPicker   gr.Row/Column/Group/HTML/ColorPicker
    ResizeHandleRow   a gr.Row with A1111's "resize-handle-row" class
    DropdownMulti     gr.Dropdown(multiselect=True)
    DropdownEditable  gr.Dropdown(allow_custom_value=True)
    InputAccordion    an accordion whose open/closed state is an input value (True when open)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
from gradio import component_meta
from gradio.context import get_blocks_context

from modules.ui import common


def _gradio_base(cls: type) -> type:
    return next(c for c in cls.__mro__ if c.__module__.startswith("gradio."))


def _signature_of(base: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a **kwargs constructor the Gradio base's signature: Gradio reads it to map positional arguments and
    to collect the component's config."""

    def apply(init: Callable[..., Any]) -> Callable[..., Any]:
        init.__signature__ = inspect.signature(base.__init__)  # type: ignore[attr-defined]
        return init

    return apply


class _DrawnAsGradio:
    """Mixin: the browser has no component of our class's name, so it is drawn as the Gradio one it extends."""

    webui_do_not_create_gradio_pyi_thank_you = True  # A1111's marker, kept for extensions that check it

    def get_block_name(self) -> str:
        return _gradio_base(type(self)).__name__.lower()

    def get_block_class(self) -> str:
        return self.get_block_name()


@contextlib.contextmanager
def _no_pyi_files() -> Iterator[None]:
    # Gradio writes a .pyi stub next to the source of every component class it sees defined; not in our tree.
    original = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        component_meta.create_or_modify_pyi = original


with _no_pyi_files():

    class ToolButton(_DrawnAsGradio, gr.Button):
        """Small button with a single emoji as text (A1111's), square and not stretched."""

        @_signature_of(gr.Button)
        def __init__(self, **kwargs: Any) -> None:
            tooltip = kwargs.pop("tooltip", None)  # A1111 took one; here javascript/ui.js sets it as the title
            if tooltip and kwargs.get("elem_id"):
                common.TOOLTIPS[kwargs["elem_id"]] = str(tooltip)
            classes = kwargs.pop("elem_classes", None) or []
            classes = [classes] if isinstance(classes, str) else list(classes)
            kwargs.setdefault("size", "sm")
            kwargs.setdefault("min_width", 40)
            kwargs.setdefault("scale", 0)
            super().__init__(elem_classes=["tool", *classes], **kwargs)

    class FormRow(_DrawnAsGradio, gr.Row):
        """A gr.Row (A1111 let it sit inside forms; Gradio 6 rows need nothing for that)."""

    class FormColumn(_DrawnAsGradio, gr.Column):
        """A gr.Column, A1111's form-friendly name."""

    class FormGroup(_DrawnAsGradio, gr.Group):
        """A gr.Group, A1111's form-friendly name."""

    class FormHTML(_DrawnAsGradio, gr.HTML):
        """A gr.HTML, A1111's form-friendly name."""

    class FormColorPicker(_DrawnAsGradio, gr.ColorPicker):
        """A gr.ColorPicker, A1111's form-friendly name."""

    class ResizeHandleRow(_DrawnAsGradio, gr.Row):
        """A gr.Row with A1111's "resize-handle-row" class."""

        @_signature_of(gr.Row)
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            classes = self.elem_classes or []
            self.elem_classes = [classes] if isinstance(classes, str) else list(classes)
            self.elem_classes.append("resize-handle-row")

    class DropdownMulti(_DrawnAsGradio, gr.Dropdown):
        """A dropdown where several values can be chosen."""

        @_signature_of(gr.Dropdown)
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{**kwargs, "multiselect": True})

    class DropdownEditable(_DrawnAsGradio, gr.Dropdown):
        """A dropdown that also takes values typed in."""

        @_signature_of(gr.Dropdown)
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**{**kwargs, "allow_custom_value": True})

    class InputAccordion(_DrawnAsGradio, gr.Checkbox):
        """A gr.Accordion usable as an input: its value is True while it is open (A1111's).

        The value lives in a hidden checkbox (this component); the accordion follows it and sets it when the
        user opens or closes it, so pasting infotext into the checkbox opens the accordion.

            with InputAccordion(False, label="Hires. fix") as enable:
                ...  # components inside the accordion
        """

        global_index = 0

        @_signature_of(gr.Checkbox)
        def __init__(self, value: bool = False, **kwargs: Any) -> None:
            self.accordion_id = kwargs.get("elem_id")
            if self.accordion_id is None:
                self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
                InputAccordion.global_index += 1
            super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
            if get_blocks_context() is None:
                # gradio rebuilds a component from an update (a paste setting the value) outside any page: the
                # accordion and its events belong to the page's instance only
                self.accordion = None
                return
            self.accordion = gr.Accordion(
                label=kwargs.get("label", "Accordion"),
                open=bool(value),
                elem_id=self.accordion_id,
                elem_classes=["input-accordion"],
                visible=kwargs.get("visible", True),
            )
            self.accordion.expand(fn=None, js="() => true", outputs=[self], show_progress="hidden")
            self.accordion.collapse(fn=None, js="() => false", outputs=[self], show_progress="hidden")
            self.change(fn=lambda is_open: gr.update(open=bool(is_open)), inputs=[self], outputs=[self.accordion],
                        queue=False, show_progress="hidden")

        def extra(self) -> gr.Column:
            """A column for things A1111 put next to the accordion's label (here: at the top of its body)."""
            return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes=["input-accordion-extra"],
                             min_width=0)

        def __enter__(self) -> InputAccordion:
            self.accordion.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.accordion.__exit__(*exc)


__all__ = [
    "DropdownEditable",
    "DropdownMulti",
    "FormColorPicker",
    "FormColumn",
    "FormGroup",
    "FormHTML",
    "FormRow",
    "InputAccordion",
    "ResizeHandleRow",
    "ToolButton",
]
