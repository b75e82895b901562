"""Have the GPU ready by the time the first model is: CUDA's context, cuBLAS and cuDNN (the libraries, their
handles, the first kernels a Stable Diffusion step launches) are set up in a background thread while the server
imports its libraries and reads the checkpoint, instead of during the first job.

The imports take several seconds on the CPU and torch's operators release the interpreter lock, so both proceed
side by side; on an H200 this took 0.3-1.1 s off the time from start to the first picture (bench/README.md). The
kernels of each exact shape still load on their first call. Nothing here changes a result: the tensors are random
and thrown away. A failure is logged and the first job initialises what is missing, as without a warm-up.
"""

from __future__ import annotations

import logging
import threading

import torch

log = logging.getLogger(__name__)
_thread: threading.Thread | None = None


def start(device: torch.device) -> threading.Thread | None:
    """Begin warming `device` up in the background (CUDA only); returns the thread, or None when there is none."""
    global _thread
    if device.type != "cuda" or not torch.cuda.is_available() or _thread is not None:
        return None
    _thread = threading.Thread(target=_warm, args=(device,), name="cuda-warm-up", daemon=True)
    _thread.start()
    return _thread


def wait() -> None:
    """Block until the warm-up is over: a CUDA graph capture must not overlap other CUDA work this process
    started on another thread."""
    if _thread is not None:
        _thread.join()


def _warm(device: torch.device) -> None:
    try:
        with torch.inference_mode(), torch.cuda.device(device):
            for dtype in (torch.float16, torch.float32):  # the UNet's and the samplers'/VAE fallback's
                x = torch.randn(2, 64, 32, 32, device=device, dtype=dtype).to(memory_format=torch.channels_last)
                x = torch.nn.functional.conv2d(x, torch.randn(64, 64, 3, 3, device=device, dtype=dtype), padding=1)
                x = torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32))
                tokens = x.flatten(2).transpose(1, 2)  # (2, 1024, 64)
                tokens = torch.nn.functional.layer_norm(tokens, (64,))
                tokens = torch.nn.functional.linear(tokens, torch.randn(64, 64, device=device, dtype=dtype))
                heads = tokens.reshape(2, 1024, 2, 32).transpose(1, 2)
                torch.nn.functional.gelu(torch.nn.functional.scaled_dot_product_attention(heads, heads, heads))
            torch.cuda.synchronize(device)
    except Exception:  # the first job initialises what is missing, as without a warm-up
        log.warning("warming the GPU up failed", exc_info=True)
