"""What travels between the front door and a replica: one engine call (`Work`) and the events that come back.

A request object (`StableDiffusionProcessing*`) crosses as it is, minus the two things that belong to a process:
its model (the replica uses its own) and its script runner (the replica uses its own runner of the same tab,
which has the same scripts: every host runs the same checkout and extensions). The front door's settings go
with each call, so a replica generates exactly as the single-process server would with those settings.
No ray import here.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

ENTRIES = ("process_request", "process_images", "postprocess")
MODEL_FREE_ENTRIES = ("postprocess",)  # Extras: upscalers and face restorers only, whatever checkpoint is loaded
# Attributes of a request object that hold loaded networks of the process that made it.
_PROCESS_LOCAL = ("sd_model", "hr_model")


@dataclass(frozen=True)
class Holding:
    """What a replica holds after its last job: the affinity router's view of it. `version` counts the jobs it
    finished, so of two reports about one replica the newer wins."""

    replica: str
    checkpoint: str | None = None  # the checkpoint's name (relative to the models folder: the same on every host)
    networks: tuple[str, ...] = ()  # LoRA names of its last job (their tensors are cached there)
    version: int = 0
    loads: int = 0  # checkpoint switches it made for jobs so far: what affinity saves
    load_s: float | None = None  # how long its last checkpoint load took: what a switch costs there

    def as_stats(self) -> dict[str, Any]:
        return {"replica": self.replica, "checkpoint": self.checkpoint, "networks": list(self.networks),
                "version": self.version, "loads": self.loads, "load_s": self.load_s}

    @classmethod
    def from_stats(cls, stats: dict[str, Any] | None) -> Holding | None:
        if not stats or "replica" not in stats:
            return None
        load_s = stats.get("load_s")
        return cls(str(stats["replica"]), stats.get("checkpoint"), tuple(stats.get("networks") or ()),
                   int(stats.get("version") or 0), int(stats.get("loads") or 0),
                   float(load_s) if load_s is not None else None)


@dataclass
class Work:
    """One engine call of one job, as sent to a replica."""

    task_id: str
    entry: str  # one of ENTRIES
    p: Any  # the request object, without model and script runner
    scripts: bool  # it had a script runner: the replica attaches its own, of the same tab
    settings: dict[str, Any]  # the front door's settings (shared.opts.data) when the call was made
    checkpoint: str | None  # the checkpoint it runs on (affinity)
    networks: tuple[str, ...] = ()  # its LoRA names (affinity)
    attempt: int = 1
    dispatch_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this attempt's interrupt/skip address
    # Where each script's values sit in p.script_args, as the front door laid them out: (class, title, from, to).
    script_layout: tuple[tuple[str, str, int | None, int | None], ...] = ()
    selected_script: str | None = None  # the title of the script the request selected (script_args[0] > 0)


# --- events a replica streams back, in order: Started, Progress*, then Finished or Failed ---


@dataclass
class Started:
    replica: str
    node: str  # the Ray node's IP address
    pid: int
    node_id: str = ""


@dataclass
class Progress:
    """`shared.state` of the replica, as the front door's progress reports need it."""

    state: dict[str, Any]  # State.dict()
    elapsed: float  # seconds since the job began there (clocks of two hosts need not agree)
    textinfo: str | None
    id_live_preview: int
    preview: Any = None  # a PIL image, only when id_live_preview is new
    refined_job_count: bool = False


@dataclass
class Finished:
    processed: Any
    saved_as: list[str | None]  # each image's file on the replica's host (PIL drops the attribute in transit)
    holding: Holding


@dataclass
class Failed:
    message: str  # call_queue.error_message of the failure
    kind: str  # "input", "oom", "no-model" or "other": how the front door answers if `error` cannot travel
    error: BaseException | None
    holding: Holding | None = None


# --- the front door's side ---


def checkpoint_name(p: Any, settings: dict[str, Any]) -> str | None:
    """The checkpoint `p` runs on, by name: its override, else the setting; as the replica resolves it."""
    info = resolve_checkpoint((getattr(p, "override_settings", None) or {}).get("sd_model_checkpoint")
                              or settings.get("sd_model_checkpoint"))
    return info.name if info is not None else None


def resolve_checkpoint(wanted: str | None) -> Any:
    """The listed checkpoint a setting names (A1111's closest match), else the first listed; None if none."""
    from modules.models import registry

    info = registry.get_closet_checkpoint_match(str(wanted)) if wanted else None
    return info or registry.select_checkpoint(None)


def lora_names(p: Any) -> tuple[str, ...]:
    """The LoRA names in the first prompt (A1111 activates one set per job), sorted."""
    from modules import extra_networks

    prompt = p.prompt[0] if isinstance(p.prompt, list) and p.prompt else p.prompt
    _, found = extra_networks.parse_prompt(str(prompt or ""))
    names = {params.items[0] for key in ("lora", "lyco") for params in found.get(key, []) if params.items}
    return tuple(sorted(names))


def pack(entry: str, p: Any, task_id: str, settings: dict[str, Any], attempt: int = 1) -> Work:
    """The call `entry(p)` as it travels. Raises ValueError (naming what) for a request a replica could not run
    the same way: a script runner that is not one of the tabs' runners."""
    from modules import scripts

    if entry not in ENTRIES:
        raise ValueError(f"unknown engine entry {entry!r}")
    runner = getattr(p, "scripts", None)
    if runner is not None and runner is not scripts.runner_for(p):
        raise ValueError("this request carries a script runner of its own (made by an extension), which cannot be "
                         "sent to a Ray replica; run it without --ray")
    q = copy.copy(p)
    for name in _PROCESS_LOCAL:
        if name in vars(q):
            setattr(q, name, None)
    q.scripts = None
    layout = tuple((type(x).__name__, x.title(), x.args_from, x.args_to) for x in runner.scripts) if runner else ()
    selected = None
    if runner is not None and p.script_args and int(p.script_args[0] or 0) > 0:
        index = int(p.script_args[0])
        if index <= len(runner.selectable_scripts):
            selected = runner.selectable_scripts[index - 1].title()
    if entry in MODEL_FREE_ENTRIES:
        return Work(task_id, entry, q, False, dict(settings), None, (), attempt)
    return Work(task_id, entry, q, runner is not None, dict(settings), checkpoint_name(p, settings), lora_names(p),
                attempt, script_layout=layout, selected_script=selected)


def unpack(work: Work) -> Any:
    """On the replica: the request object with this process's script runner for its tab, its scripts reading
    their values where the front door put them. Raises ValueError naming a script the front door used that this
    host does not have."""
    from modules import scripts

    p = work.p
    p.sd_model = None
    p.scripts = None
    if work.scripts:
        runner = scripts.runner_for(p)
        here = {(type(x).__name__, x.title()): x for x in runner.scripts}
        for script in runner.scripts:  # one the front door does not have gets no values
            script.args_from = script.args_to = 0
        for cls, title, start, end in work.script_layout:
            script = here.get((cls, title))
            if script is None:
                raise ValueError(f"the script {title!r} is not installed on this replica's host; every host needs "
                                 "the same extensions")
            script.args_from, script.args_to = start, end
        if work.selected_script is not None:  # the selection is a position in the tab's list: find it by title
            titles = [x.title() for x in runner.selectable_scripts]
            if work.selected_script not in titles:
                raise ValueError(f"the script {work.selected_script!r} is not installed on this replica's host")
            p.script_args = (titles.index(work.selected_script) + 1, *tuple(p.script_args)[1:])
        p.scripts = runner
    return p


__all__ = ["ENTRIES", "MODEL_FREE_ENTRIES", "Failed", "Finished", "Holding", "Progress", "Started", "Work", "checkpoint_name", "lora_names",
           "pack", "resolve_checkpoint", "unpack"]
