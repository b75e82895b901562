"""A1111's `modules.script_callbacks`: extensions register functions for moments of the app's life.

Every `on_*` takes `(callback, *, name=None)`. Each callback is called at its real moment by the code that owns
that moment (the UI build, the model loader, image saving, the CFG denoiser...). A callback that raises is
reported with its extension and the moment, and the others still run: an extension cannot take the server down.

The CFG callbacks are registrations on the engine's denoise hooks (`modules.engine.hooks`), so the denoiser has
one mechanism, not two.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modules.engine import hooks
from modules.engine.hooks import AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams  # noqa: F401 (A1111 names)

log = logging.getLogger(__name__)


@dataclass
class ImageSaveParams:
    image: Any
    p: Any
    filename: str
    pnginfo: dict[str, Any]


@dataclass
class ImageGridLoopParams:
    imgs: list[Any]
    cols: int
    rows: int


@dataclass
class ExtraNoiseParams:
    noise: Any
    x: Any
    xi: Any


@dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list[str]
    is_positive: bool = True


@dataclass
class UiTrainTabParams:
    txt2img_preview_params: list[Any] = field(default_factory=list)


@dataclass
class ScriptCallback:
    script: str  # the file that registered it (an extension's script), for reports and unloading
    callback: Callable[..., Any]
    name: str | None = None


CALLBACK_KINDS = (
    "callbacks_app_started", "callbacks_model_loaded", "callbacks_ui_tabs", "callbacks_ui_train_tabs",
    "callbacks_ui_settings", "callbacks_before_image_saved", "callbacks_image_saved", "callbacks_extra_noise",
    "callbacks_image_grid", "callbacks_infotext_pasted", "callbacks_script_unloaded", "callbacks_before_ui",
    "callbacks_on_reload", "callbacks_list_optimizers", "callbacks_list_unets", "callbacks_before_token_counter",
    "callbacks_before_component", "callbacks_after_component",
)
callback_map: dict[str, list[ScriptCallback]] = {kind: [] for kind in CALLBACK_KINDS}
# The CFG callbacks live on the denoise hooks; this maps A1111's kind to the hook point.
_HOOK_KINDS = {"callbacks_cfg_denoiser": "cfg_denoiser", "callbacks_cfg_denoised": "cfg_denoised",
               "callbacks_cfg_after_cfg": "cfg_after_cfg"}

# Set by the script loader while it runs a script file, so registrations made at import know their owner.
current_script: str | None = None


def _owner() -> str:
    if current_script:
        return current_script
    for frame in inspect.stack()[2:]:  # the first caller outside this module
        if os.path.abspath(frame.filename) != os.path.abspath(__file__):
            return frame.filename
    return "unknown"


def _add(kind: str, callback: Callable[..., Any], name: str | None) -> None:
    if not callable(callback):
        raise TypeError(f"{kind}: the callback must be callable, got {callback!r}")
    owner = _owner()
    if kind in _HOOK_KINDS:
        hooks.register(_HOOK_KINDS[kind], callback, name=name, owner=owner)
        return
    callback_map[kind].append(ScriptCallback(owner, callback, name))


def display_path(path: str) -> str:
    """A script's path as people name it: relative to the data dir or the project (never a full server path)."""
    from modules import paths

    for root in (paths.data_path, paths.script_path):
        rel = os.path.relpath(path, root) if path else ""
        if rel and not rel.startswith(".."):
            return rel
    return os.path.basename(path)


def _label(c: ScriptCallback) -> str:
    return f"{c.name or getattr(c.callback, '__qualname__', 'callback')} from {display_path(c.script)}"


# Errors the page shows (extension file and callback), newest last; bounded.
errors: list[str] = []
_MAX_ERRORS = 50


def report(where: str, what: str) -> None:
    """Log the current exception as an extension's error and keep a line for the page."""
    log.exception("Error in %s: %s", where, what)
    errors.append(f"Error in {where}: {what}")
    del errors[:-_MAX_ERRORS]


def _call(kind: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Call every callback of a kind; a failing one is reported by name and skipped. Returns their results."""
    results = []
    for c in list(callback_map[kind]):
        try:
            results.append(c.callback(*args, **kwargs))
        except Exception:  # extension code: report, never crash the caller
            report(f"{kind.removeprefix('callbacks_')} callback", _label(c))
    return results


def clear_callbacks() -> None:
    for kind in CALLBACK_KINDS:
        callback_map[kind].clear()
    hooks.remove(lambda h: True)


def remove_current_script_callbacks() -> None:
    """Undo every registration made by the calling script file (A1111's name)."""
    owner = _owner()
    for kind in CALLBACK_KINDS:
        callback_map[kind] = [c for c in callback_map[kind] if c.script != owner]
    hooks.remove(lambda h: h.owner == owner)


def remove_callbacks_for_function(callback_func: Callable[..., Any]) -> None:
    for kind in CALLBACK_KINDS:
        callback_map[kind] = [c for c in callback_map[kind] if c.callback is not callback_func]
    hooks.remove(lambda h: h.fn is callback_func)


# --- the moments (called by the code that owns them) -----------------------------------------------------------

def app_started_callback(demo: Any, app: Any) -> None:
    _call("callbacks_app_started", demo, app)


def model_loaded_callback(sd_model: Any) -> None:
    _call("callbacks_model_loaded", sd_model)


def ui_tabs_callback() -> list[Any]:
    tabs: list[Any] = []
    for result in _call("callbacks_ui_tabs"):
        tabs.extend(result or [])
    return tabs


def ui_train_tabs_callback(params: UiTrainTabParams) -> None:
    _call("callbacks_ui_train_tabs", params)


def ui_settings_callback() -> None:
    _call("callbacks_ui_settings")


def before_image_saved_callback(params: ImageSaveParams) -> None:
    _call("callbacks_before_image_saved", params)


def image_saved_callback(params: ImageSaveParams) -> None:
    _call("callbacks_image_saved", params)


def extra_noise_callback(params: ExtraNoiseParams) -> None:
    _call("callbacks_extra_noise", params)


def image_grid_callback(params: ImageGridLoopParams) -> None:
    _call("callbacks_image_grid", params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    _call("callbacks_infotext_pasted", infotext, params)


def script_unloaded_callback() -> None:
    _call("callbacks_script_unloaded")


def before_ui_callback() -> None:
    _call("callbacks_before_ui")


def before_reload_callback() -> None:
    _call("callbacks_on_reload")


def list_optimizers_callback() -> list[Any]:
    found: list[Any] = []
    _call("callbacks_list_optimizers", found)
    return found


def list_unets_callback() -> list[Any]:
    found: list[Any] = []
    _call("callbacks_list_unets", found)
    return found


def before_token_counter_callback(params: BeforeTokenCounterParams) -> None:
    _call("callbacks_before_token_counter", params)


def before_component_callback(component: Any, **kwargs: Any) -> None:
    _call("callbacks_before_component", component, **kwargs)


def after_component_callback(component: Any, **kwargs: Any) -> None:
    _call("callbacks_after_component", component, **kwargs)


# --- the registrars extensions call -----------------------------------------------------------------------------

def on_app_started(callback: Callable[[Any, Any], None], *, name: str | None = None) -> None:
    """After the server started: `callback(demo, app)`; extensions add FastAPI routes to `app` here."""
    _add("callbacks_app_started", callback, name)


def on_model_loaded(callback: Callable[[Any], None], *, name: str | None = None) -> None:
    _add("callbacks_model_loaded", callback, name)


def on_ui_tabs(callback: Callable[[], list[Any]], *, name: str | None = None) -> None:
    """`callback()` returns `[(gr.Blocks, title, elem_id)]`: tabs placed before Settings."""
    _add("callbacks_ui_tabs", callback, name)


def on_ui_train_tabs(callback: Callable[[UiTrainTabParams], None], *, name: str | None = None) -> None:
    _add("callbacks_ui_train_tabs", callback, name)


def on_ui_settings(callback: Callable[[], None], *, name: str | None = None) -> None:
    """Add settings here with `shared.opts.add_option(key, shared.OptionInfo(...))`."""
    _add("callbacks_ui_settings", callback, name)


def on_before_image_saved(callback: Callable[[ImageSaveParams], None], *, name: str | None = None) -> None:
    _add("callbacks_before_image_saved", callback, name)


def on_image_saved(callback: Callable[[ImageSaveParams], None], *, name: str | None = None) -> None:
    _add("callbacks_image_saved", callback, name)


def on_extra_noise(callback: Callable[[ExtraNoiseParams], None], *, name: str | None = None) -> None:
    _add("callbacks_extra_noise", callback, name)


def on_cfg_denoiser(callback: Callable[[CFGDenoiserParams], None], *, name: str | None = None) -> None:
    _add("callbacks_cfg_denoiser", callback, name)


def on_cfg_denoised(callback: Callable[[CFGDenoisedParams], None], *, name: str | None = None) -> None:
    _add("callbacks_cfg_denoised", callback, name)


def on_cfg_after_cfg(callback: Callable[[AfterCFGCallbackParams], None], *, name: str | None = None) -> None:
    _add("callbacks_cfg_after_cfg", callback, name)


def on_image_grid(callback: Callable[[ImageGridLoopParams], None], *, name: str | None = None) -> None:
    _add("callbacks_image_grid", callback, name)


def on_infotext_pasted(callback: Callable[[str, dict[str, Any]], None], *, name: str | None = None) -> None:
    _add("callbacks_infotext_pasted", callback, name)


def on_script_unloaded(callback: Callable[[], None], *, name: str | None = None) -> None:
    _add("callbacks_script_unloaded", callback, name)


def on_before_ui(callback: Callable[[], None], *, name: str | None = None) -> None:
    _add("callbacks_before_ui", callback, name)


def on_before_reload(callback: Callable[[], None], *, name: str | None = None) -> None:
    _add("callbacks_on_reload", callback, name)


def on_list_optimizers(callback: Callable[[list[Any]], None], *, name: str | None = None) -> None:
    _add("callbacks_list_optimizers", callback, name)


def on_list_unets(callback: Callable[[list[Any]], None], *, name: str | None = None) -> None:
    _add("callbacks_list_unets", callback, name)


def on_before_token_counter(callback: Callable[[BeforeTokenCounterParams], None], *, name: str | None = None) -> None:
    _add("callbacks_before_token_counter", callback, name)


def on_before_component(callback: Callable[..., None], *, name: str | None = None) -> None:
    """`callback(component, **kwargs)` before each gradio component of the page is made."""
    _add("callbacks_before_component", callback, name)


def on_after_component(callback: Callable[..., None], *, name: str | None = None) -> None:
    """`callback(component, **kwargs)` after each gradio component of the page is made."""
    _add("callbacks_after_component", callback, name)
