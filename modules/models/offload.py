"""Low-VRAM placement of a loaded model: A1111's --medvram, --medvram-sdxl and --lowvram.

- "none": every component sits on the device.
- "medvram": text encoders, UNet and VAE wait in RAM; the one about to run moves to the device whole (an
  accelerate hook: on forward, and on VAE encode/decode through diffusers' `apply_forward_hook`). The others of
  the model leave it only when the device has no room for the newcomer plus `WORKING_ROOM` for its activations
  (on CUDA, within a per-process cap); what fits stays, across jobs too, so a card that holds the UNet and the
  VAE (an 8-bit SDXL UNet under 4 GiB) stops moving 2-5 GB per job. The UNet moves only between its calls
  (`unet_in_place`), so its CUDA graphs replay while it stays and are captured again after it came back; the
  weights keep their pinned RAM copy while on the device. Like diffusers' `enable_model_cpu_offload`, but any
  component may come first (img2img encodes before the text encoders run), so an eviction sends all its siblings
  back, not just the previous one.
- "lowvram": the text encoders and VAE as in medvram; the UNet never sits whole on the device: diffusers' group
  offloading moves each layer ("leaf_level") or block just before it runs, prefetched on a side stream on CUDA.

`place` installs a mode (removing the previous one first), `remove` restores plain modules, `settle` sends
every resident piece back to RAM (when the memory owner asks, after a failed job, and before weights of a grouped
UNet are patched: see `settle`); after a job that succeeded only the grouped UNet's pieces go back. The memory owner
records an offloaded model by what it keeps resident at most, and its unload function settles the model.
`run_job` is the out-of-memory guard of a generation job: free memory, retry once at a lower mode, else fail
with a message a person can act on.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device

from modules import devices
from modules.models import memory

log = logging.getLogger(__name__)
T = TypeVar("T")

MODES = ("none", "medvram", "lowvram")
LOWER = {"none": "medvram", "medvram": "lowvram", "lowvram": "lowvram"}  # the retry after an out-of-memory error
UNET_OFFLOAD_TYPE = "leaf_level"  # "block_level" moves fewer, larger pieces (SDXL's biggest block is ~2.4 GB)
_GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")
CPU = torch.device("cpu")
# medvram keeps a resident sibling only while the device has this much room beyond the weights coming in
WORKING_ROOM = 1024**3


@dataclass
class OffloadState:
    """What `place` installed on a model (kept as `model.offload`; None means plain placement)."""

    mode: str
    device: torch.device
    whole: list[torch.nn.Module]  # components moved whole, one at a time
    grouped: list[torch.nn.Module] = field(default_factory=list)  # components under diffusers group offloading
    unet_offload_type: str = UNET_OFFLOAD_TYPE
    torch_hooks: list[Any] = field(default_factory=list)  # RemovableHandles
    holding: torch.nn.Module | None = None  # stays put, its hook moves nothing (a UNet call is under way)

    @property
    def handle(self) -> str:
        return f"offload:{id(self.whole[0]) if self.whole else id(self)}"


class JobOutOfMemoryError(torch.OutOfMemoryError):
    """A job ran out of GPU memory even after the retry; `user_message` is what the UI and API show."""

    def __init__(self, user_message: str):
        super().__init__(user_message)
        self.user_message = user_message


# --- which mode ---------------------------------------------------------------------------------------------


def requested_mode(model, cmd_opts: Any = None) -> str:
    """The mode the command line asks for this model (--medvram-sdxl only for SDXL models)."""
    if cmd_opts is None:
        from modules import shared

        cmd_opts = shared.cmd_opts
    if getattr(cmd_opts, "lowvram", False):
        return "lowvram"
    if getattr(cmd_opts, "medvram", False):
        return "medvram"
    if getattr(cmd_opts, "medvram_sdxl", False) and model.is_sdxl:
        return "medvram"
    return "none"


def any_requested(cmd_opts: Any = None) -> bool:
    if cmd_opts is None:
        from modules import shared

        cmd_opts = shared.cmd_opts
    return any(getattr(cmd_opts, name, False) for name in ("lowvram", "medvram", "medvram_sdxl"))


def loading_precision(precision: devices.Precision) -> devices.Precision:
    """Where a checkpoint loads: into RAM when an offload flag is set (the whole model may not fit the card);
    `place` then puts it where its mode says."""
    return replace(precision, device=CPU) if any_requested() and precision.device.type != "cpu" else precision


def mode_of(model) -> str:
    state = getattr(model, "offload", None)
    return state.mode if state is not None else "none"


# --- installing and removing ----------------------------------------------------------------------------------


class _OneAtATime(ModelHook):
    """Before a component runs: its siblings leave the device, it comes in whole (unless group offloaded)."""

    def __init__(self, state: OffloadState):
        self.state = state

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        _bring(self.state, module)
        device = self.state.device
        return send_to_device(args, device), send_to_device(kwargs, device)


def has_offload_hook(module: torch.nn.Module) -> bool:
    """Whether `module` carries the offload hook (which replaces its `forward`; it moves weights, never changes
    what the module computes)."""
    return isinstance(getattr(module, "_hf_hook", None), _OneAtATime)


def _resident(module: torch.nn.Module, device: torch.device) -> bool:
    first = next(module.parameters(), None)
    return first is not None and first.device.type == device.type and device.type != "cpu"


def _has_room_for(state: OffloadState, module: torch.nn.Module) -> bool:
    """Whether `module` can come in next to what is resident, with `WORKING_ROOM` to spare (CUDA only: other
    devices cannot tell, so they keep one component at a time)."""
    room = memory.available_bytes(state.device)
    if room is None:
        return False
    coming = 0 if _resident(module, state.device) else memory.module_size_bytes(module)
    return room >= coming + WORKING_ROOM


def _moves_whole(state: OffloadState, module: torch.nn.Module) -> bool:
    """Whether `module` is one of the components this state moves whole (not group-offloaded, not unmanaged)."""
    return any(module is m for m in state.whole)


def _bring(state: OffloadState, module: torch.nn.Module) -> None:
    if module is state.holding:
        return
    keep_siblings = _has_room_for(state, module)
    for other in state.whole:
        if other is not module and other is not state.holding and _resident(other, state.device) \
                and not keep_siblings:
            devices.move_modules([other], CPU)
    for grouped in state.grouped:
        if grouped is not module:
            _offload_groups(grouped)
    if _moves_whole(state, module) and not _resident(module, state.device):
        devices.move_modules([module], state.device, keep_ram_copy=True)


def _group_hooks(module: torch.nn.Module) -> list[Any]:
    found = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        if hook is not None:
            found.append(hook)
    return found


def _offload_groups(module: torch.nn.Module) -> None:
    """Send every group that is on the device back (after an interrupted or failed forward some stay there)."""
    seen: set[int] = set()
    for hook in _group_hooks(module):
        group = hook.group
        if id(group) in seen:
            continue
        seen.add(id(group))
        tensors = [p for m in group.modules for p in m.parameters()] + list(group.parameters)
        if tensors and tensors[0].device.type != "cpu":
            group.offload_()


def _components(model) -> list[torch.nn.Module]:
    return [*model.text_encoders, model.unet, model.vae]


def _install(model, device: torch.device, mode: str, unet_offload_type: str) -> OffloadState:
    from diffusers.hooks import apply_group_offloading

    components = _components(model)
    grouped = [model.unet] if mode == "lowvram" else []
    state = OffloadState(mode, device, [m for m in components if m not in grouped], grouped,
                         unet_offload_type=unet_offload_type)
    devices.move_modules(components, CPU)
    for module in state.whole:
        add_hook_to_module(module, _OneAtATime(state))
    for module in grouped:
        on_cuda = device.type == "cuda"
        apply_group_offloading(module, onload_device=device, offload_device=CPU, offload_type=unet_offload_type,
                               num_blocks_per_group=1 if unet_offload_type == "block_level" else None,
                               use_stream=on_cuda, record_stream=on_cuda)
        # siblings leave before the UNet runs (a torch hook: diffusers refuses accelerate offload hooks here)
        state.torch_hooks.append(module.register_forward_pre_hook(lambda m, args, s=state: _bring(s, m)))
    return state


def remove(model) -> None:
    """Take the offloading off `model`: plain modules again, every weight in RAM (the caller places them)."""
    state = getattr(model, "offload", None)
    if state is None:
        return
    from diffusers.hooks import HookRegistry

    settle(model)
    for handle in state.torch_hooks:
        handle.remove()
    for module in state.whole:
        remove_hook_from_module(module)
        _unbind_forward(module)
    for module in state.grouped:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        for name in _GROUP_HOOKS:
            registry.remove_hook(name, recurse=True)
        for sub in module.modules():
            _unbind_forward(sub)
    model.offload = None
    memory.owner.unregister(state.handle)


def _unbind_forward(module: torch.nn.Module) -> None:
    # Removing a hook leaves the class's own forward bound as an instance attribute: drop it, plain again.
    forward = module.__dict__.get("forward")
    if getattr(forward, "__func__", None) is type(module).forward:
        del module.__dict__["forward"]


def place(model, device: torch.device | str, mode: str | None = None,
          unet_offload_type: str = UNET_OFFLOAD_TYPE) -> str:
    """Put `model` on `device` in `mode` (None: what the command line asks); returns the mode installed.

    Idempotent: a model already placed so is left alone. Weights only move between RAM and the device, so the
    values (and LoRA patches, which are written into the weights) are unchanged."""
    device = torch.device(device)
    mode = requested_mode(model) if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown offload mode {mode!r}; expected one of {MODES}")
    state = getattr(model, "offload", None)
    if state is not None and state.mode == mode and state.device == device \
            and state.unet_offload_type == unet_offload_type:
        return mode
    if state is not None or mode != "none":
        remove(model)
        forget_graphs(model)
    if mode == "none":
        devices.move_modules(model.modules(), device)
        return mode
    model.offload = _install(model, device, mode, unet_offload_type)
    _register(model)
    devices.torch_gc()
    return mode


def settle_after_job(model) -> None:
    """After a job that succeeded: the grouped UNet's pieces back to RAM (patching needs them there), whole
    components stay where they are; the next component's hook makes room when it must."""
    state = getattr(model, "offload", None)
    if state is None:
        return
    for module in state.grouped:
        _offload_groups(module)


def settle(model) -> None:
    """Every resident piece of an offloaded model back to RAM: when the memory owner unloads it, after a failed
    job, and before the mode changes. Like `settle_after_job` it keeps the grouped UNet in one known state: with
    streams, diffusers restores a group from its pinned RAM copy, so weights must only be patched while their
    groups are offloaded."""
    state = getattr(model, "offload", None)
    if state is None:
        return
    for module in state.whole:
        if _resident(module, state.device):
            devices.move_modules([module], CPU)
    for module in state.grouped:
        _offload_groups(module)


def graphs_allowed(model) -> bool:
    """Whether the UNet's calls may replay CUDA graphs: placed plainly, or moved whole (medvram), which happens
    only between its calls (see `unet_in_place`); its graphs go when it moves and are captured again when it is
    back. Not under lowvram, whose groups move within each call."""
    state = getattr(model, "offload", None)
    return state is None or _moves_whole(state, model.unet)


@contextlib.contextmanager
def unet_in_place(model) -> Iterator[None]:
    """Within: the UNet is on the device and nothing moves it (a graph captured or replayed in between reads its
    weights where they are). Its siblings leave first if it needs their room, as its hook would make them."""
    state = getattr(model, "offload", None)
    if state is None or not _moves_whole(state, model.unet):
        yield
        return
    _bring(state, model.unet)
    state.holding = model.unet
    try:
        yield
    finally:
        state.holding = None


def resident_bytes(model) -> int:
    """The most an offloaded model keeps on the device at once (weights): its largest whole component, or for a
    grouped UNet the weights outside its groups. Plain placement: everything."""
    state = getattr(model, "offload", None)
    if state is None:
        return model.parameter_bytes()
    sizes = [memory.module_size_bytes(m) for m in state.whole]
    return max(sizes, default=0)


def _register(model) -> None:
    state = model.offload
    ref = weakref.ref(model)  # the owner's record must not keep a dropped model alive

    def unload() -> None:
        alive = ref()
        if alive is not None:
            settle(alive)

    memory.owner.register(state.handle, resident_bytes(model), unload, state.device, group="offload")
    weakref.finalize(model, memory.owner.unregister, state.handle)


def forget_graphs(model) -> None:
    """The UNet's CUDA graphs (every variant) and their memory pools go: its weights are about to move, or will
    move under an offload mode (weights that `devices.move_modules` moves drop theirs by themselves)."""
    devices.mark_moved(model.unet)


# --- out of memory during a job -------------------------------------------------------------------------------

FAILED_MESSAGE = ("Out of GPU memory, even after freeing memory and retrying with {mode} offloading: try a smaller "
                  "size or batch{hint}")


PARTIAL_MESSAGE = ("Out of GPU memory after some pictures of this job were saved (they are in the outputs folder); "
                   "it was not run again, so they are not saved twice: try a smaller size or batch, or --medvram")


def run_job(fn: Callable[[], T], current_model: Callable[[], Any], may_retry: Callable[[], bool] = lambda: True) -> T:
    """`fn()`, the whole job. On a CUDA out-of-memory error: free memory (other networks the memory owner
    knows, the CUDA cache), retry once with the model at the next lower mode (none -> medvram -> lowvram), put
    its mode back, and if the retry runs out too, raise `JobOutOfMemoryError` with a clear message. A job that
    `may_retry()` says must not run twice (it already saved pictures) fails with that message at once."""
    try:
        result = fn()
    except BaseException as e:
        _settle_current(current_model, settle)
        if not isinstance(e, (torch.OutOfMemoryError, RuntimeError)) or not memory.is_oom(e) \
                or isinstance(e, JobOutOfMemoryError):  # a nested job already retried
            raise
        log.warning("out of GPU memory: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        if not may_retry():
            raise JobOutOfMemoryError(PARTIAL_MESSAGE) from None
    else:
        _settle_current(current_model, settle_after_job)
        return result
    # outside the except block, so the failed attempt's frames (and their tensors) can be collected
    model = current_model()
    before = mode_of(model) if model is not None else "none"
    lower = LOWER[before]
    device = _device_of(model)
    keep = [model.offload.handle] if model is not None and getattr(model, "offload", None) is not None else []
    memory.owner.free_device(device, keep=keep)
    gc.collect()
    devices.torch_gc()
    if model is not None:
        log.warning("retrying the job once with %s offloading", lower)
        place(model, device, lower)
    try:
        return fn()
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not memory.is_oom(e):
            raise
    finally:
        if model is not None:
            _restore_mode(model, device, before, lower)
    hint = "" if lower == "lowvram" else ", or start with --lowvram"
    raise JobOutOfMemoryError(FAILED_MESSAGE.format(mode=lower, hint=hint))


def _device_of(model) -> torch.device:
    state = getattr(model, "offload", None)
    if state is not None:
        return state.device
    return model.device if model is not None else devices.device


def _settle_current(current_model: Callable[[], Any], how: Callable[[Any], None]) -> None:
    try:
        model = current_model()
        if model is not None:
            how(model)
    except Exception:  # tidying up must not hide the job's own outcome
        log.exception("could not move offloaded weights back to RAM")


def _restore_mode(model, device: torch.device, mode: str, lower: str) -> None:
    """After the retry the configured mode comes back; if the device cannot take it now, the lower one stays."""
    settle(model)
    gc.collect()
    devices.torch_gc()
    try:
        place(model, device, mode)
        return
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not memory.is_oom(e):
            raise
    log.warning("kept %s offloading: the model does not fit back at %s", lower, mode)
    gc.collect()
    devices.torch_gc()
    place(model, device, lower)
