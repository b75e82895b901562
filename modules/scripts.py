"""A1111's `modules.scripts`: the Script API that built-in scripts and extensions implement, and the runners
that call them at the stages of `processing.process_images`.

A selectable script (shown in the "Script" dropdown) replaces the generation with its own `run(p, *args)`;
an always-visible one (`show()` returns `AlwaysVisible`) takes part in every generation through the stage
methods (`before_process`, `process`, `before_process_batch`, `process_batch`, `postprocess_batch`,
`postprocess_batch_list`, `postprocess_image`, `postprocess`). A stage method that raises is reported with its
script and skipped, as in A1111; a selectable script's `run` that raises fails that job only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from modules import paths, script_callbacks
from modules.script_args import PostprocessBatchListArgs, PostprocessImageArgs, ScriptFile  # A1111's names

log = logging.getLogger(__name__)


class AlwaysVisibleType:
    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = AlwaysVisibleType()


@dataclass
class OnComponent:
    component: Any


class Script:
    """Base class of every script (A1111's attributes and no-op methods; a script overrides what it needs)."""

    name: str | None = None
    section: str | None = None
    filename: str | None = None
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname: str | None = None
    group: Any = None
    create_group = True
    infotext_fields: list[Any] | None = None
    paste_field_names: list[str] | None = None
    api_info: Any = None
    setup_for_ui_only = False
    controls: list[Any] | None = None
    on_before_component_elem_id: list[tuple[str, Callable[[OnComponent], None]]] | None = None
    on_after_component_elem_id: list[tuple[str, Callable[[OnComponent], None]]] | None = None

    def title(self) -> str:
        raise TypeError(f"{type(self).__name__} must define title()")

    def show(self, is_img2img: bool) -> Any:
        return True

    def ui(self, is_img2img: bool) -> list[Any] | None:
        return None

    def run(self, p: Any, *args: Any) -> Any:
        return None

    def setup(self, p: Any, *args: Any) -> None: ...
    def before_process(self, p: Any, *args: Any) -> None: ...
    def before_hr(self, p: Any, *args: Any) -> None: ...
    def process(self, p: Any, *args: Any) -> None: ...
    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None: ...
    def after_extra_networks_activate(self, p: Any, *args: Any, **kwargs: Any) -> None: ...
    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None: ...
    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None: ...
    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None: ...
    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, *args: Any, **kwargs: Any) -> None: ...
    def postprocess_image(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None: ...
    def postprocess(self, p: Any, processed: Any, *args: Any) -> None: ...
    def before_component(self, component: Any, **kwargs: Any) -> None: ...
    def after_component(self, component: Any, **kwargs: Any) -> None: ...

    def on_before_component(self, callback: Callable[[OnComponent], None], *, elem_id: str) -> None:
        self.on_before_component_elem_id = (self.on_before_component_elem_id or []) + [(elem_id, callback)]

    def on_after_component(self, callback: Callable[[OnComponent], None], *, elem_id: str) -> None:
        self.on_after_component_elem_id = (self.on_after_component_elem_id or []) + [(elem_id, callback)]

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """`script_[<tab>_]<title>_<item>`, lower-case with spaces as underscores (A1111's ids)."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        # A1111's rule: whitespace becomes "_", anything else outside [a-z_0-9] is dropped ("X/Y/Z plot" -> xyz_plot).
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def basedir(self) -> str:
        return _basedir_of(self.filename)


@dataclass
class ScriptClassData:
    script_class: type
    path: str
    basedir: str
    module: ModuleType


scripts_data: list[ScriptClassData] = []
load_errors: list[str] = []  # "file: reason" for each script file that could not be loaded, for the page


def _basedir_of(filename: str | None) -> str:
    if not filename:
        return paths.script_path
    folder = os.path.dirname(os.path.dirname(os.path.abspath(filename)))  # <extension>/scripts/x.py
    return folder if os.path.basename(os.path.dirname(os.path.abspath(filename))) == "scripts" else paths.script_path


def reload_scripts() -> None:
    """A1111's name: load every script again (on_script_unloaded callbacks run first)."""
    load_scripts()


def basedir() -> str:
    """The folder of the extension whose script is being loaded (A1111: call it at import time)."""
    return _basedir_of(script_callbacks.current_script)


def list_scripts(folder: str = "scripts", extension: str = ".py") -> list[ScriptFile]:
    """The project's own scripts, then each enabled extension's `scripts/` folder, in extension order."""
    from modules import extensions

    found: list[ScriptFile] = []
    roots = [paths.script_path] + [ext.path for ext in extensions.active()]
    for root in roots:
        directory = os.path.join(root, folder)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name.endswith(extension) and os.path.isfile(path):
                found.append(ScriptFile(root, name, path))
    return found


def load_module(path: str) -> ModuleType:
    """Run a script file as a module (A1111's script_loading.load_module); its registrations know their owner."""
    # A1111 names the module after its file ("xyz_grid.py"): extensions find other scripts by that name.
    name = os.path.basename(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    script_callbacks.current_script = path
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        script_callbacks.current_script = None
    return module


def load_scripts() -> None:
    """(Re)load every script file; a file that fails is reported by name and the rest still load."""
    global scripts_postproc
    scripts_postproc = None  # the Extras runner is made again, from the files as they are now
    script_callbacks.script_unloaded_callback()  # scripts loaded before undo what they set up (A1111's moment)
    scripts_data.clear()
    load_errors.clear()
    script_callbacks.clear_callbacks()
    for script_file in list_scripts():
        try:
            module = load_module(script_file.path)
        except Exception as e:  # SyntaxError, ImportError, anything an extension's import raises
            log.exception("Error loading script %s", script_file.path)
            load_errors.append(f"{_display(script_file.path)}: {type(e).__name__}: {e}")
            continue
        for obj in module.__dict__.values():
            if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script \
                    and obj.__module__ == module.__name__:
                scripts_data.append(ScriptClassData(obj, script_file.path, script_file.basedir, module))
    scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts_img2img.initialize_scripts(is_img2img=True)


_display = script_callbacks.display_path


class RequestRefused(ValueError):
    """Raised by a script to refuse the request it was given (a bad argument, a missing model file): the job fails
    with this message, shown where the person is (the page, the API's 422). Any other exception from a script is a
    bug in it: reported, and the job goes on without that script's step, as in A1111."""


def _report(script: Script, method: str) -> None:
    script_callbacks.report(f"{method} of script {script.title() if _titled(script) else type(script).__name__}",
                            _display(script.filename or ""))


def _titled(script: Script) -> bool:
    try:
        script.title()
        return True
    except Exception:
        return False


@dataclass
class ScriptRunner:
    """The scripts of one tab: A1111's `scripts_txt2img` / `scripts_img2img`."""

    is_img2img: bool = False
    scripts: list[Script] = field(default_factory=list)
    selectable_scripts: list[Script] = field(default_factory=list)
    alwayson_scripts: list[Script] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=lambda: [None])  # [0]: the Script dropdown (0 = none)

    def initialize_scripts(self, is_img2img: bool) -> None:
        self.is_img2img = is_img2img
        self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
        self.inputs = [None]  # the controls of the scripts loaded before belong to them, not to these
        for data in scripts_data:
            try:
                script = data.script_class()
                script.filename = data.path
                script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
                script.tabname = "img2img" if is_img2img else "txt2img"
                visibility = script.show(is_img2img)
                title = script.title()
            except Exception:
                script_callbacks.report("creating script", _display(data.path))
                continue
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)
            elif visibility:
                self.selectable_scripts.append(script)
            else:
                continue
            script.name = title.lower()
            self.scripts.append(script)
        self.titles = [s.title() for s in self.selectable_scripts]

    # --- UI ---------------------------------------------------------------------------------------------------
    def create_script_ui(self, script: Script) -> None:
        """Run `script.ui()` and note which slice of the runner's inputs holds its values."""
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        try:
            controls = script.ui(self.is_img2img) or []
        except Exception:
            _report(script, "ui()")
            controls = []
        script.controls = list(controls)
        self.inputs.extend(script.controls)
        script.args_to = len(self.inputs)

    def ensure_inputs(self) -> None:
        """Make the scripts' controls off-page when no page made them (the API-only server), for their defaults."""
        if len(self.inputs) > 1 or not self.scripts:
            return
        import gradio as gr

        self.inputs = [None]
        with gr.Blocks():
            for script in self.alwayson_scripts + self.selectable_scripts:
                self.create_script_ui(script)

    def default_args(self) -> list[Any]:
        """The value of every input as the page would start with it (what an API request builds on)."""
        self.ensure_inputs()
        return [0] + [getattr(c, "value", None) for c in self.inputs[1:]]

    def args_for_api(self, script_name: str | None, script_args: list[Any] | None,
                     alwayson: dict[str, Any] | None) -> list[Any]:
        """A1111's `init_script_args`: the defaults, the selected script's args in its slice, and each always-on
        script's `{"args": [...]}` over the start of its slice."""
        args = self.default_args()
        if script_name:
            script = self.script(script_name)
            if script is not None and script in self.selectable_scripts:
                args[script.args_from:script.args_to] = list(script_args or [])
                args[0] = self.selectable_scripts.index(script) + 1
        for name, entry in (alwayson or {}).items():
            script = self.script(name)
            given = entry.get("args", []) if isinstance(entry, dict) else []
            if script is None or script.args_from is None:
                continue
            for i, value in enumerate(given[: script.args_to - script.args_from]):
                args[script.args_from + i] = value
        return args

    def script(self, title: str) -> Script | None:
        """A script of this tab by title (case-insensitive), selectable or always-on."""
        wanted = title.lower()
        return next((s for s in self.scripts if s.title().lower() == wanted), None)

    # --- the generation's stages ---------------------------------------------------------------------------------
    def run(self, p: Any, *args: Any) -> Any:
        """The selected script's `run(p, *its args)`, or None when no script is selected (then process normally)."""
        index = int(args[0] or 0) if args else 0
        if index <= 0 or index > len(self.selectable_scripts):
            return None
        script = self.selectable_scripts[index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def _each(self, method: str, p: Any, *extra: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            try:
                args = p.script_args[script.args_from:script.args_to] if p.script_args else ()
                getattr(script, method)(p, *extra, *args, **kwargs)
            except RequestRefused:
                raise
            except Exception:
                _report(script, method)

    def setup_scripts(self, p: Any) -> None:
        self._each("setup", p)

    def before_process(self, p: Any) -> None:
        self._each("before_process", p)

    def before_hr(self, p: Any) -> None:
        """Before the hires pass of each batch (A1111's `Script.before_hr`)."""
        self._each("before_hr", p)

    def process(self, p: Any) -> None:
        self._each("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        self._each("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p: Any, **kwargs: Any) -> None:
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_before_every_sampling(self, p: Any, **kwargs: Any) -> None:
        self._each("process_before_every_sampling", p, **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        self._each("process_batch", p, **kwargs)

    def postprocess_batch(self, p: Any, images: Any, **kwargs: Any) -> None:
        self._each("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, **kwargs: Any) -> None:
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image", p, pp)

    def postprocess(self, p: Any, processed: Any) -> None:
        self._each("postprocess", p, processed)


scripts_txt2img = ScriptRunner(is_img2img=False)
scripts_img2img = ScriptRunner(is_img2img=True)
scripts_postproc = None  # the Extras tab's postprocessing scripts come with the Extras tab


def runner_for(p: Any) -> ScriptRunner:
    return scripts_img2img if getattr(p, "kind", "txt2img") == "img2img" else scripts_txt2img


def process_request(p: Any) -> Any:
    """What Generate does (UI, API, scripts alike): the selected script's run, or `process_images(p)`."""
    from modules import call_queue, processing

    offloaded = call_queue.queue.offload("process_request", p)  # --ray: a replica ran it (modules/serve)
    if offloaded is not None:
        return offloaded

    if p.scripts is not None and p.script_args:
        processed = p.scripts.run(p, *p.script_args)
        if processed is not None:
            return processed
    return processing.process_images(p)
