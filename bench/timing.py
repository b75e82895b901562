"""Timing for the GPU benchmarks: a call's wall time with the device synchronised before and after it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    """Seconds `fn()` takes, queued GPU work included."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start
