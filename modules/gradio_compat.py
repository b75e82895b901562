"""Gradio 3.41 calls in extension code (A1111 ran Gradio 3.41), mapped onto Gradio 6 while that code builds UI.

    with gradio3_compat(owner="sd-webui-foo"):
        controls = script.ui(is_img2img)

Inside the block, every Gradio block class's constructor and event listeners accept Gradio 3 arguments: those
with a Gradio 6 equivalent are translated, the rest are dropped (Gradio 3 itself ignored unknown keyword
arguments with a warning; Gradio 6 raises TypeError). Each kind of adaptation is logged once per owner.
When the block ends, one warning names the owner and what was adapted (each adaptation once per owner).
Outside the block nothing is changed, so our own UI code gets plain Gradio 6 and its errors.

Mapping (also in README, "Extension compatibility"):
    gr.Image/Audio/Video(source="upload")     -> sources=["upload"] ("canvas" dropped)
    gr.Image(tool="sketch"|"editor"|...)      -> dropped: a plain image (sketching is gr.ImageEditor in Gradio 6)
    show_download_button / show_share_button / show_copy_button / show_fullscreen_button -> buttons=[...]
    gr.File(type="file" | "bytes")            -> type="filepath" | "binary"
    any other argument Gradio 6 lacks         -> dropped (shape=, brush_radius=, mask_opacity=, ...)
    component.style(**kw)                     -> sets the Gradio 6 attribute of the same name (container, height,
                                                 equal_height, preview, object_fit, size ...); grid= -> columns,
                                                 full_width=True -> scale=1; the rest ignored; returns the component
    event listeners (.click/.change/.then ...): _js= -> js=, show_progress=True/False -> "full"/"hidden",
                                                 show_api=False -> api_visibility="undocumented", every= dropped
    gr.Box -> gr.Group, gr.Variable -> gr.State
    gr.Dropdown.update(**kw) (any component)  -> gr.update(**kw); installed for good on first use, because event
                                                 handlers call it after the UI is built
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
from gradio.blocks import Block

log = logging.getLogger(__name__)

_lock = threading.RLock()
_owners: list[str] = []  # the extensions whose UI is being built, innermost last
_undo: list[Callable[[], None]] = []  # restores what entering the outermost block patched
_warned: set[tuple[str, str]] = set()  # (owner, what): each adaptation is reported once per owner
_pending: dict[str, list[str]] = {}  # owner -> adaptations to report when its block ends
_updates_installed = False

_SOURCES = {"upload": "upload", "webcam": "webcam", "microphone": "microphone", "clipboard": "clipboard"}
_BUTTON_FLAGS = {"show_download_button": "download", "show_share_button": "share", "show_copy_button": "copy",
                 "show_fullscreen_button": "fullscreen"}
_FILE_TYPES = {"file": "filepath", "bytes": "binary"}


def _warn(what: str, how: str) -> None:
    """Note an adaptation; the owner's block ends with one warning listing those not reported before."""
    owner = _owners[-1] if _owners else ""
    if (owner, what) in _warned:
        return
    _warned.add((owner, what))
    if owner:
        _pending.setdefault(owner, []).append(f"{what} -> {how}")
    else:  # an event handler, after the UI was built: no block to report at the end of
        log.warning("Gradio 3 call adapted for Gradio 6: %s -> %s", what, how)


def _report(owner: str) -> None:
    notes = _pending.pop(owner, [])
    if notes:
        log.warning("%s uses Gradio 3 arguments, adapted for Gradio 6: %s", owner, "; ".join(notes))


@functools.lru_cache(maxsize=1024)  # bounded: each .then() listener is a new partial
def _parameters(function: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters of `function` (through functools.wraps layers) and whether it takes **kwargs."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}, True
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return dict(params), takes_any


def _gradio_classes() -> list[type[Block]]:
    found: list[type[Block]] = []
    stack = [Block]
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("gradio.") or cls is Block:
            found.append(cls)
        stack.extend(cls.__subclasses__())
    return list(dict.fromkeys(found))


# --- constructors ---


def _adapt_constructor_kwargs(cls: type, init: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    params, takes_any = _parameters(init)
    name = f"gr.{cls.__name__}"
    if "source" in kwargs and "source" not in params:
        source = kwargs.pop("source")
        if "sources" in params and "sources" not in kwargs and source in _SOURCES:
            kwargs["sources"] = [_SOURCES[source]]
            _warn(f"{name}(source=...)", "sources=[...]")
        else:
            _warn(f"{name}(source={source!r})", "dropped (no equivalent)")
    if "tool" in kwargs and "tool" not in params:
        kwargs.pop("tool")
        _warn(f"{name}(tool=...)", "dropped (a plain image: sketching is gr.ImageEditor)")
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in _BUTTON_FLAGS and k not in params}
    if flags and "buttons" in params and "buttons" not in kwargs:
        allowed = str(params["buttons"].annotation)
        kwargs["buttons"] = [_BUTTON_FLAGS[k] for k, on in flags.items() if on and f"'{_BUTTON_FLAGS[k]}'" in allowed]
        _warn(f"{name}({', '.join(f'{k}=...' for k in flags)})", "buttons=[...]")
    elif flags:
        _warn(f"{name}({', '.join(f'{k}=...' for k in flags)})", "dropped (no equivalent)")
    if issubclass(cls, gr.File) and kwargs.get("type") in _FILE_TYPES:
        old = kwargs["type"]
        kwargs["type"] = _FILE_TYPES[old]
        _warn(f"{name}(type={old!r})", f"type={kwargs['type']!r}")
    if not takes_any:
        for key in [k for k in kwargs if k not in params]:
            kwargs.pop(key)
            _warn(f"{name}({key}=...)", "dropped (no such argument)")
    return kwargs


def _wrap_constructor(cls: type, init: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(init)  # keeps the signature: Gradio reads it to build the component's config
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_adapt_constructor_kwargs(cls, init, kwargs))

    return __init__


# --- event listeners ---


def _adapt_event_kwargs(event: str, listener: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    params, takes_any = _parameters(listener)
    if "_js" in kwargs:
        kwargs.setdefault("js", kwargs.pop("_js"))
        _warn(f".{event}(_js=...)", "js=...")
    if isinstance(kwargs.get("show_progress"), bool):
        kwargs["show_progress"] = "full" if kwargs["show_progress"] else "hidden"
        _warn(f".{event}(show_progress=True/False)", 'show_progress="full"/"hidden"')
    if "show_api" in kwargs and "show_api" not in params:
        if not kwargs.pop("show_api"):
            kwargs.setdefault("api_visibility", "undocumented")
        _warn(f".{event}(show_api=...)", 'api_visibility="undocumented"')
    if "every" in kwargs and "every" not in params:
        kwargs.pop("every")
        _warn(f".{event}(every=...)", "dropped (repeating events are gr.Timer)")
    if not takes_any:
        for key in [k for k in kwargs if k not in params]:
            kwargs.pop(key)
            _warn(f".{event}({key}=...)", "dropped (no such argument)")
    return kwargs


def _wrap_listener(event: str, listener: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(listener)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        dependency = listener(*args, **_adapt_event_kwargs(event, listener, kwargs))
        for follow_up in ("then", "success", "failure"):  # per-dependency partials, made by Gradio at each call
            method = getattr(dependency, follow_up, None)
            if callable(method):
                setattr(dependency, follow_up, _wrap_listener(follow_up, method))
        return dependency

    return wrapped


# --- .style() ---


def _gradio_init(cls: type) -> Callable[..., Any]:
    """The constructor of the Gradio class under `cls` (extension subclasses often take just **kwargs)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("gradio.") and "__init__" in klass.__dict__:
            return klass.__dict__["__init__"]
    return cls.__init__


def _style(self: Block, **kwargs: Any) -> Block:
    """Gradio 3's `component.style(...)`: each setting becomes the Gradio 6 attribute it was folded into."""
    params, _ = _parameters(_gradio_init(type(self)))
    for key, value in kwargs.items():
        target, new = key, value
        if key == "grid":
            target, new = "columns", value[-1] if isinstance(value, list | tuple) else value
        elif key == "full_width":
            target, new = "scale", 1 if value else None
        if target in params:
            setattr(self, target, new)
            _warn(f".style({key}=...)", f"{target}=...")
        else:
            _warn(f".style({key}=...)", "ignored (no equivalent)")
    return self


# --- gr.X.update(...) ---


def _legacy_update(**kwargs: Any) -> dict[str, Any]:
    _warn("gr.<Component>.update(...)", "gr.update(...)")
    return gr.update(**kwargs)


def _install_updates() -> None:
    """`gr.Textbox.update(...)` and friends, on every class without its own. Permanent: event handlers call
    them long after the UI was built, outside any gradio3_compat block; Gradio 6 has no such attribute."""
    global _updates_installed
    if _updates_installed:
        return
    for cls in _gradio_classes():
        if not hasattr(cls, "update"):
            cls.update = staticmethod(_legacy_update)
    _updates_installed = True


# --- patching ---


def _set(target: Any, name: str, value: Any) -> None:
    missing = object()
    original = target.__dict__.get(name, missing) if isinstance(target, type) else getattr(target, name, missing)
    setattr(target, name, value)

    def undo() -> None:
        if original is missing:
            delattr(target, name)
        else:
            setattr(target, name, original)

    _undo.append(undo)


def _patch() -> None:
    for cls in _gradio_classes():
        if "__init__" in cls.__dict__:
            _set(cls, "__init__", _wrap_constructor(cls, cls.__dict__["__init__"]))
        for event in getattr(cls, "EVENTS", None) or []:
            name = getattr(event, "event_name", str(event))
            if callable(cls.__dict__.get(name)):
                _set(cls, name, _wrap_listener(name, cls.__dict__[name]))
    _set(Block, "style", _style)
    if not hasattr(gr, "Box"):
        _set(gr, "Box", _alias("gr.Box", gr.Group))
    if not hasattr(gr, "Variable"):
        _set(gr, "Variable", _alias("gr.Variable", gr.State))


def _alias(old: str, new: type[Block]) -> Callable[..., Block]:
    def make(*args: Any, **kwargs: Any) -> Block:
        _warn(old, f"gr.{new.__name__}")
        return new(*args, **kwargs)

    return make


def _unpatch() -> None:
    while _undo:
        _undo.pop()()


@contextlib.contextmanager
def gradio3_compat(owner: str | None = None) -> Iterator[None]:
    """Accept Gradio 3.41 arguments while the block runs (see the module docstring); `owner` (an extension or
    script name) is named in the warnings. Blocks nest; the patches go when the outermost one ends."""
    with _lock:
        _install_updates()
        if not _owners:
            _patch()
        _owners.append(owner or "Extension code")
    try:
        yield
    finally:
        with _lock:
            _report(_owners.pop())
            if not _owners:
                _unpatch()


__all__ = ["gradio3_compat"]
