"""A1111's `modules.scripts_postprocessing`: the postprocessing scripts the Extras tab runs on each image.

A script subclasses `ScriptPostprocessing`, names itself (`name`), says where it runs (`order`), returns its
controls from `ui()` as a dict {argument name: component}, and changes `pp.image` / `pp.info` in
`process(pp, **args)`. Built-in ones live in `scripts/postprocessing_*.py`; an extension's `scripts/` folder
adds more the same way. The runner finds them among the loaded script files (modules.scripts loads them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from PIL import Image

from modules import script_callbacks, shared

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PostprocessedImageSharedInfo:
    target_width: int | None = None
    target_height: int | None = None


class PostprocessedImage:
    """One image going through the scripts: `image`, the infotext pairs `info`, and what the scripts share."""

    def __init__(self, image: Image.Image):
        self.image = image
        self.info: dict[str, Any] = {}
        self.shared = PostprocessedImageSharedInfo()
        self.extra_images: list[PostprocessedImage] = []
        self.nametags: list[str] = []
        self.disable_processing = False
        self.caption: str | None = None

    def get_suffix(self, used_suffixes: dict[str, int] | None = None) -> str:
        used_suffixes = {} if used_suffixes is None else used_suffixes
        suffix = "-".join(self.nametags)
        if suffix:
            suffix = "-" + suffix
        if suffix not in used_suffixes:
            used_suffixes[suffix] = 1
            return suffix
        for i in range(1, 100):
            proposed = suffix + "-" + str(i)
            if proposed not in used_suffixes:
                used_suffixes[proposed] = 1
                return proposed
        return suffix

    def create_copy(self, new_image: Image.Image, *, nametags: list[str] | None = None,
                    disable_processing: bool = False) -> PostprocessedImage:
        pp = PostprocessedImage(new_image)
        pp.shared = self.shared
        pp.nametags = self.nametags.copy()
        pp.info = self.info.copy()
        pp.disable_processing = disable_processing
        if nametags is not None:
            pp.nametags += nametags
        return pp


class ScriptPostprocessing:
    """Base class (A1111's attributes). `controls` is what `ui()` returned; `args_from`/`args_to` index the
    runner's flat argument list."""

    filename: str | None = None
    controls: dict[str, Any] | None = None
    args_from: int | None = None
    args_to: int | None = None
    order = 1000  # lower runs first; the option postprocessing_operation_order comes before this
    name: str | None = None
    group: Any = None

    def ui(self) -> dict[str, Any]:
        return {}

    def process(self, pp: PostprocessedImage, **args: Any) -> None:
        pass

    def process_firstpass(self, pp: PostprocessedImage, **args: Any) -> None:
        """Runs for every script before any `process`, to set `pp.shared` (the target size) for later ones."""

    def image_changed(self) -> None:
        pass


def _module_of(path: str) -> Any:
    # modules.scripts registers each loaded script file under its file name (A1111's rule).
    module = sys.modules.get(os.path.basename(path))
    if module is not None and os.path.abspath(getattr(module, "__file__", "") or "") == os.path.abspath(path):
        return module
    from modules import scripts

    return scripts.load_module(path)


def script_classes() -> list[tuple[type[ScriptPostprocessing], str]]:
    """(class, file) of every postprocessing script in the project's and the enabled extensions' scripts."""
    from modules import scripts

    found = []
    for script_file in scripts.list_scripts():
        if not script_file.filename.endswith(".py"):
            continue
        try:
            with open(script_file.path, encoding="utf8", errors="replace") as f:
                if "ScriptPostprocessing" not in f.read():
                    continue  # not a postprocessing script: leave it to the Script loader
            module = _module_of(script_file.path)
        except Exception:  # a broken extension file: reported, the rest still load
            script_callbacks.report("loading postprocessing script", script_callbacks.display_path(script_file.path))
            continue
        for obj in module.__dict__.values():
            if isinstance(obj, type) and issubclass(obj, ScriptPostprocessing) and obj is not ScriptPostprocessing \
                    and obj.__module__ == module.__name__:
                found.append((obj, script_file.path))
    return found


class ScriptPostprocessingRunner:
    """The Extras tab's scripts (A1111's `scripts.scripts_postproc`)."""

    def __init__(self) -> None:
        self.scripts: list[ScriptPostprocessing] | None = None
        self.ui_created = False
        self.first: str | None = None  # a script name run before all others (the API's upscale_first)

    def initialize_scripts(self, scripts_data: Iterable[tuple[type[ScriptPostprocessing], str]]) -> None:
        self.scripts = []
        for script_class, path in scripts_data:
            script = script_class()
            script.filename = path
            if script.name == "Simple Upscale":
                continue  # A1111's main-UI-only variant
            self.scripts.append(script)

    def _ensure(self) -> list[ScriptPostprocessing]:
        if self.scripts is None:
            self.initialize_scripts(script_classes())
        assert self.scripts is not None
        return self.scripts

    def scripts_in_preferred_order(self) -> list[ScriptPostprocessing]:
        scripts = self._ensure()
        preferred = list(getattr(shared.opts, "postprocessing_operation_order", None) or [])
        rank = {name: i for i, name in enumerate(preferred)}
        # named ones first in the option's order, then the rest by `order`, then name (A1111's rule)
        ordered = sorted(scripts, key=lambda s: (rank.get(s.name or "", len(rank)), s.order, s.name or ""))
        return sorted(ordered, key=lambda s: s.name != self.first) if self.first else ordered

    def setup_ui_for_section(self, section: Any = None) -> list[Any]:
        inputs: list[Any] = []
        self.first = None
        for script in self.scripts_in_preferred_order():
            controls = script.ui() or {}
            script.controls = controls
            script.args_from = len(inputs)
            inputs += list(controls.values())
            script.args_to = len(inputs)
        return inputs

    def setup_ui(self) -> list[Any]:
        inputs = self.setup_ui_for_section()
        self.ui_created = True
        return inputs

    def _ui_defaults(self) -> None:
        if self.ui_created:
            return
        import gradio as gr

        with gr.Blocks():  # A1111 builds the controls to learn their defaults; the blocks are thrown away
            self.setup_ui()

    def create_args_for_run(self, scripts_args: dict[str, dict[str, Any]]) -> list[Any]:
        """A flat argument list from {script name: {argument: value}}; the rest take the controls' defaults.
        An unknown script name or argument raises ValueError naming it."""
        self._ui_defaults()
        scripts = self.scripts_in_preferred_order()
        known = {s.name: s for s in scripts}
        for name, given in scripts_args.items():
            if name not in known:
                raise ValueError(f"no postprocessing script named {name!r}")
            unknown = set(given) - set(known[name].controls or {})
            if unknown:
                raise ValueError(f"postprocessing script {name!r} has no argument {sorted(unknown)[0]!r}")
        args: list[Any] = [None] * max([s.args_to or 0 for s in scripts] + [0])
        for script in scripts:
            given = scripts_args.get(script.name or "", {})
            for i, (key, component) in enumerate((script.controls or {}).items()):
                args[(script.args_from or 0) + i] = given[key] if key in given else getattr(component, "value", None)
        return args

    def named_args(self, args: list[Any]) -> dict[str, dict[str, Any]]:
        """The inverse of `create_args_for_run`: {script name: {argument: value}} from a flat list, so the values
        can travel to another process whose scripts sit at other positions (a Ray replica)."""
        self._ui_defaults()
        return {script.name: dict(zip(script.controls or {}, args[script.args_from:script.args_to], strict=False))
                for script in self.scripts_in_preferred_order() if script.name}

    def run(self, pp: PostprocessedImage, args: list[Any]) -> None:
        """Every script's `process_firstpass`, then every `process`, in the preferred order (A1111's)."""
        scripts = []
        for script in self.scripts_in_preferred_order():
            script_args = args[script.args_from:script.args_to]
            process_args = dict(zip(script.controls or {}, script_args, strict=False))
            script.process_firstpass(pp, **process_args)
            scripts.append((script, process_args))
        for script, process_args in scripts:
            if shared.state.skipped:
                break
            for single in [pp, *pp.extra_images]:
                if not single.disable_processing:
                    script.process(single, **process_args)

    def check(self, args: list[Any]) -> None:
        """Each script's optional `check(**args)` (ours, not A1111's): raises ValueError for arguments it cannot
        take, so a request is refused before it waits in the queue."""
        for script in self.scripts_in_preferred_order():
            check = getattr(script, "check", None)
            if callable(check):
                check(**dict(zip(script.controls or {}, args[script.args_from:script.args_to], strict=False)))

    def image_changed(self) -> None:
        for script in self._ensure():
            script.image_changed()


def runner() -> ScriptPostprocessingRunner:
    """The process-wide runner, made on first use and kept in `modules.scripts.scripts_postproc` (A1111's)."""
    from modules import scripts

    if scripts.scripts_postproc is None:
        scripts.scripts_postproc = ScriptPostprocessingRunner()
    return scripts.scripts_postproc
