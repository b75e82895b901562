"""A compile worker: `python -m modules.engine.compile_worker SPEC` compiles one forward for one input structure.

Run by modules.engine.unet_compile in a child process, so that torch.fx's tracing (which swaps
`nn.Module.__call__` process-wide) never happens beside running jobs. The child rebuilds the network from the spec
(same classes, dtypes, devices and strides; every tensor zero-filled, since parameters are inputs of the compiled
graph and their values never matter), compiles the forward with the parent's compiler settings and runs it once.
That fills inductor's disk caches (FX graphs, generated kernels) under TORCHINDUCTOR_CACHE_DIR, which the parent
shares, so its own compile of the same structure afterwards is mostly cache hits. Exit status 0 means done; on a
failure the last line on stderr says why.

The spec file holds two pickles: a header of plain values (read first, it sets sys.path and the process-wide
settings that decide what the compiler produces) and the payload (module, forward, example arguments). Tensors in
the payload are written as their metadata only (`dump_spec`), so a spec is small whatever the model's size.
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import os
import pickle
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

import torch

from modules import attention_optimization

# this project's bookkeeping on modules (compiled state, CUDA graphs, patcher, adapters): never read by a forward,
# and some of it (graphs, compiled code) cannot be pickled
_BOOKKEEPING_PREFIX = "_sd_"


class _SpecPickler(pickle.Pickler):
    """Pickles tensors as metadata and modules without the bookkeeping attributes; classes and functions go by
    reference, as pickle does (a class or function that cannot be imported by name fails here, in the parent)."""

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor):
            return None
        if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.layout != torch.strided:
            raise pickle.PicklingError(f"cannot describe a {type(obj).__name__} ({obj.layout}) by its metadata")
        return ("tensor", tuple(obj.shape), tuple(obj.stride()), obj.dtype, str(obj.device), obj.requires_grad,
                isinstance(obj, torch.nn.Parameter))

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.nn.Module) and not isinstance(obj, type):
            state = obj.__getstate__()
            if isinstance(state, dict) and any(k.startswith(_BOOKKEEPING_PREFIX) for k in state):
                state = {k: v for k, v in state.items() if not k.startswith(_BOOKKEEPING_PREFIX)}
                return copyreg.__newobj__, (type(obj),), state
        return NotImplemented


class _SpecUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> torch.Tensor:
        _, shape, stride, dtype, device, requires_grad, is_parameter = pid
        tensor = torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()
        if is_parameter:
            return torch.nn.Parameter(tensor, requires_grad=requires_grad)
        return tensor.requires_grad_(requires_grad) if requires_grad else tensor


def _configs() -> dict[str, Any]:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    return {"inductor": inductor_config, "dynamo": torch._dynamo.config, "functorch": torch._functorch.config}


def _matmul_settings() -> dict[str, Any]:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the newer API; the legacy flags map onto it
        return {"cuda_matmul_fp32": torch.backends.cuda.matmul.fp32_precision,
                "cudnn_fp32": torch.backends.cudnn.fp32_precision}
    return {"float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}


def _set_matmul(name: str, value: Any) -> None:
    if name == "cuda_matmul_fp32":
        torch.backends.cuda.matmul.fp32_precision = value
    elif name == "cudnn_fp32":
        torch.backends.cudnn.fp32_precision = value
    elif name == "float32_matmul_precision":
        torch.set_float32_matmul_precision(value)
    elif name == "cuda_matmul_tf32":
        torch.backends.cuda.matmul.allow_tf32 = value
    elif name == "cudnn_tf32":
        torch.backends.cudnn.allow_tf32 = value


def _process_settings() -> dict[str, Any]:
    """The parent's settings that change what the compiler produces (inductor's and AOTAutograd's cache keys
    include most of them), so that the child fills the cache entries the parent will look up."""
    configs = {}
    for name, config in _configs().items():
        try:
            configs[name] = config.save_config()
        except Exception:  # a setting that does not pickle (a custom pass): the child keeps its default
            pass
    matmul = torch.backends.cuda.matmul
    return {
        "configs": configs,
        "matmul": _matmul_settings(),
        "reduced_precision": (matmul.allow_fp16_reduced_precision_reduction,
                              matmul.allow_bf16_reduced_precision_reduction),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "cuda_device": torch.cuda.current_device() if torch.cuda.is_initialized() else None,
        # the setting "Cross attention optimization"; a plain tuple, as the header holds plain values
        "sdp_kernels": dataclasses.astuple(attention_optimization.current_kernels()),
        "upcast_attention": attention_optimization.upcast(),
    }


def _apply_settings(settings: dict[str, Any]) -> None:
    """Only what differs is set: the cache keys hash pickled configs, whose bytes change when an equal value
    replaces a default object that other entries share."""
    for name, config in _configs().items():
        if name not in settings["configs"]:
            continue
        wanted, current = pickle.loads(settings["configs"][name]), pickle.loads(config.save_config())
        with warnings.catch_warnings():  # a deprecated key the parent set
            warnings.simplefilter("ignore")
            for key, value in wanted.items():
                if key in current and key not in ("_save_config_ignore", "TYPE_CHECKING") and current[key] != value:
                    setattr(config, key, value)
    current = _matmul_settings()
    for name, value in settings["matmul"].items():
        if current.get(name) != value:
            _set_matmul(name, value)
    matmul = torch.backends.cuda.matmul
    if (matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_bf16_reduced_precision_reduction) != settings["reduced_precision"]:
        (matmul.allow_fp16_reduced_precision_reduction,
         matmul.allow_bf16_reduced_precision_reduction) = settings["reduced_precision"]
    if torch.get_default_dtype() != settings["default_dtype"]:
        torch.set_default_dtype(settings["default_dtype"])
    enabled, warn_only = settings["deterministic"]
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != \
            settings["deterministic"]:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    attention_optimization.set_kernels(attention_optimization.SdpKernels(*settings["sdp_kernels"]))
    attention_optimization.set_upcast(settings["upcast_attention"])
    if settings["cuda_device"] is not None:
        torch.cuda.set_device(settings["cuda_device"])


def dump_spec(out: BinaryIO, module: torch.nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict,
              backend: str, options: dict[str, Any] | None) -> None:
    """Write the spec of one compile; raises (pickle.PicklingError, TypeError, AttributeError, ...) when the
    module or the forward cannot be described by reference."""
    payload = io.BytesIO()
    _SpecPickler(payload, protocol=pickle.HIGHEST_PROTOCOL).dump(
        {"module": module, "forward": forward, "args": args, "kwargs": kwargs})
    header = {"sys_path": list(sys.path), "backend": backend, "options": options, "settings": _process_settings(),
              "parent": os.getpid()}
    pickle.dump(header, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(payload.getvalue())


def _exit_with_parent(parent: int) -> None:
    """A child whose parent died (killed, so its atexit never ran) stops instead of compiling for nobody."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="compile-worker-parent-watch", daemon=True).start()


def run(spec_path: str) -> None:
    from modules.engine.compile_cache import use_disk_cache

    with open(spec_path, "rb") as f:
        header = pickle.load(f)
        _exit_with_parent(header["parent"])
        # the parent's import path: classes and forwards are pickled by reference (tests' helpers live in tests/)
        sys.path[:0] = [p for p in header["sys_path"] if p not in sys.path]
        use_disk_cache()
        _apply_settings(header["settings"])
        payload = _SpecUnpickler(f).load()
    module, forward = payload["module"], payload["forward"]
    compiled = torch.compile(forward, backend=header["backend"], dynamic=False, fullgraph=False,
                             options=header["options"])
    settings = header["settings"]
    # dynamo guards on the autograd mode: compile under the one the parent's call will have
    with torch.inference_mode(settings["inference_mode"]), torch.set_grad_enabled(settings["grad_enabled"]):
        compiled(module, *payload["args"], **payload["kwargs"])
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def failure_cause(e: BaseException) -> str:
    """A compiler error's first line and its last one: dynamo wraps the cause ("backend='inductor' raised:" over
    the backend's own error), so the first line alone says nothing."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1][:300]}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m modules.engine.compile_worker SPEC", file=sys.stderr)
        return 2
    try:
        run(argv[0])
    except BaseException as e:  # noqa: B036 - the parent reads the last line, whatever went wrong
        traceback.print_exc()
        print(f"{type(e).__name__}: {failure_cause(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
