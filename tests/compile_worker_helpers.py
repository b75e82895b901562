"""A tiny network and its forward for tests/test_unet_compile_worker.py. They live in a module of their own because
a compile process (modules.engine.compile_worker) imports classes and forwards by name, and importing only torch
keeps the child quick."""

from __future__ import annotations

import torch


class TinyNet(torch.nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.register_buffer("offset", torch.linspace(-1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.conv(x)) + self.offset[:, None, None]


def tiny_forward(net: torch.nn.Module, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return net(x) * scale


def vanishing_class() -> type[TinyNet]:
    """A TinyNet subclass that this module names only once this function ran: it pickles by name here, but a
    compile process, importing this module afresh, cannot find it."""

    class Vanishing(TinyNet):
        pass

    Vanishing.__qualname__ = "Vanishing"
    globals()["Vanishing"] = Vanishing
    return Vanishing

