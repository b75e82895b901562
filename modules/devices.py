"""Device and precision choices in one place (A1111's `modules.devices`, minus the hijacks).

CUDA runs the UNet and text encoders in float16 (bfloat16 by option) and the VAE in float16 too, except the SDXL
VAE, whose activations overflow float16: it runs in bfloat16 where the GPU has it, float32 otherwise. The CPU
always computes in float32. `--no-half`, `--no-half-vae`, `--precision full` and `--use-cpu` adjust this.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

cpu = torch.device("cpu")
# called with each module whose weights `move_modules` moved (what recorded their addresses forgets them)
_move_listeners: list[Callable[[torch.nn.Module], None]] = []


@dataclass
class Precision:
    device: torch.device
    unet: torch.dtype
    text_encoder: torch.dtype
    vae: torch.dtype
    sdxl_vae: torch.dtype


def parse_device_id(device_id: int | str | None, device_count: int) -> int:
    """`--device-id` as a CUDA index (A1111 takes it as a string); a bad one is refused by value, not by a torch
    traceback later."""
    if device_id is None or str(device_id).strip() == "":
        return 0
    text = str(device_id).strip()
    if not text.isdigit():
        raise ValueError(f"--device-id {text!r}: expected a GPU number such as 0 or 1")
    index = int(text)
    if index >= device_count:
        plural = "s" if device_count != 1 else ""
        raise ValueError(f"--device-id {index}: this machine has {device_count} CUDA device{plural} "
                         f"(numbered from 0)")
    return index


class NansException(Exception):
    """A1111's: a network produced nothing but NaNs (float16 overflow, or broken weights such as a bad merge).
    The job fails with advice instead of finishing as a black picture."""


def test_for_nans(x: torch.Tensor | None, where: str) -> None:
    """Raise NansException when every value of `x` is NaN, unless `--disable-nan-check` (A1111's check; it makes
    the GPU wait, so it runs once per batch, not once per step). `where`: "unet" or "vae"."""
    from modules import shared  # the flags are parsed after this module is imported

    if x is None or x.numel() == 0 or getattr(shared.cmd_opts, "disable_nan_check", False):
        return
    if not bool(torch.isnan(x).all()):
        return
    if where == "unet":
        message = "A tensor with all NaNs was produced in Unet."
        if not getattr(shared.cmd_opts, "no_half", False):
            message += (" This could be either because there's not enough precision to represent the picture, or"
                        " because your video card does not support half type. Try setting the \"Upcast cross"
                        " attention layer to float32\" option in Settings > Stable Diffusion or using the"
                        " --no-half commandline argument to fix this.")
    else:
        message = f"A tensor with all NaNs was produced in {where}."
    raise NansException(message + " Use --disable-nan-check commandline argument to disable this check.")


def choose_device(use_cpu: list[str] | None = None, device_id: int | str | None = None) -> torch.device:
    use_cpu = [u.lower() for u in (use_cpu or [])]
    if "all" in use_cpu or "sd" in use_cpu or not torch.cuda.is_available():
        return cpu
    return torch.device("cuda", parse_device_id(device_id, torch.cuda.device_count()))


def choose_precision(
    device: torch.device,
    no_half: bool = False,
    no_half_vae: bool = False,
    precision: str = "autocast",
    prefer_bf16: bool = False,
) -> Precision:
    if device.type != "cuda" or no_half or precision == "full":
        model = torch.float32
    elif prefer_bf16 and torch.cuda.is_bf16_supported():
        model = torch.bfloat16
    else:
        model = torch.float16
    if model == torch.float32 or no_half_vae:
        vae = sdxl_vae = torch.float32
    else:
        vae = model
        # bfloat16 has float32's range, so the SDXL VAE cannot overflow in it; float16 it would (black/NaN images).
        sdxl_vae = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return Precision(device=device, unet=model, text_encoder=model, vae=vae, sdxl_vae=sdxl_vae)


def precision_from_cmd_opts(cmd_opts, prefer_bf16: bool = False) -> Precision:
    device = choose_device(getattr(cmd_opts, "use_cpu", None), getattr(cmd_opts, "device_id", None))
    return choose_precision(
        device,
        no_half=bool(getattr(cmd_opts, "no_half", False)),
        no_half_vae=bool(getattr(cmd_opts, "no_half_vae", False)),
        precision=getattr(cmd_opts, "precision", "autocast") or "autocast",
        prefer_bf16=prefer_bf16,
    )


# A1111 module-level names that extensions read. `configure()` keeps them in step with the chosen precision.
device: torch.device = cpu
dtype: torch.dtype = torch.float32
dtype_vae: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32


def configure(precision: Precision) -> None:
    global device, dtype, dtype_vae, dtype_unet
    device, dtype, dtype_vae, dtype_unet = precision.device, precision.unet, precision.vae, precision.unet


def get_optimal_device() -> torch.device:
    return device


def _malloc_trim() -> None:
    """glibc keeps freed heap pages; after dropping a model, ask it to return them to the OS."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def torch_gc() -> None:
    """Give freed memory back: Python objects first, then the CUDA cache, then the C heap."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    _malloc_trim()


def on_move(listener: Callable[[torch.nn.Module], None]) -> None:
    """Have `listener(module)` called after `move_modules` moved that module's weights."""
    if listener not in _move_listeners:
        _move_listeners.append(listener)


def mark_moved(module: torch.nn.Module) -> None:
    """Count a move of `module`'s weights and tell the listeners: whatever recorded their addresses (CUDA graphs)
    is stale. `move_modules` calls it; so does code that is about to let weights move in other ways."""
    module._sd_placement_version = placement_version(module) + 1
    for listener in _move_listeners:
        listener(module)


def placement_version(module: torch.nn.Module) -> int:
    """How many times `move_modules` moved this module's weights."""
    return int(getattr(module, "_sd_placement_version", 0))


def move_modules(modules: list[torch.nn.Module], target: torch.device, keep_ram_copy: bool = False) -> None:
    """Move whole models between GPU and RAM. Into RAM they go in pinned memory, which the copy back to the GPU
    reads several times faster than ordinary pages; both directions run asynchronously and sync once.

    `keep_ram_copy` (components that go back and forth, --medvram): a weight keeps its pinned RAM copy while it is
    on the GPU and returns into it, so no move allocates pinned memory again (torch's pinned cache is emptied by
    every CUDA graph capture, and pinning a model's worth of pages costs more than copying them). Any other move
    lets that copy go."""
    to_cpu_from_cuda = target.type == "cpu" and torch.cuda.is_available()

    def move(t: torch.Tensor) -> torch.Tensor:
        nonlocal moved
        if t.device == target:
            return t
        moved = True
        home = t.__dict__.pop("_sd_ram_home", None) if isinstance(t, torch.nn.Parameter) else None
        if to_cpu_from_cuda and t.is_cuda:
            if home is None or home.shape != t.shape or home.dtype != t.dtype:
                home = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            return home.copy_(t, non_blocking=True)
        if keep_ram_copy and isinstance(t, torch.nn.Parameter) and t.device.type == "cpu" and t.is_pinned():
            t._sd_ram_home = t.data  # the way back
        return t.to(target, non_blocking=True)

    for module in modules:
        moved = False
        module._apply(move)
        if moved:
            # what recorded the weights' addresses (CUDA graphs) compares this count: a module that went to RAM and
            # came back may find its first weight at the old address and the others elsewhere
            mark_moved(module)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(disable: bool = False):
    """Weights are already in the compute dtype, so no autocast is needed; kept for extensions that call it."""
    return contextlib.nullcontext()
