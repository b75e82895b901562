"""A CUDA graph capture that fails leaves the process as it found it: the call runs eagerly with the right result,
later work runs on the stream it ran on before, and the capture's memory goes back to the allocator.

torch's `torch.cuda.graph` skips restoring the stream when ending a broken capture raises, and its allocator can
still count the capture as under way (it then never gives cached blocks back). The first test stands in for CUDA
on the CPU, to check that each of those is put right; the second breaks a real capture on a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from modules.engine import unet_graph


class _FakeStream:
    def __init__(self, name: str):
        self.name = name

    def wait_stream(self, other: _FakeStream) -> None:
        pass


class _FakeGenerator:
    def __init__(self, state: str):
        self.state = state

    def clone_state(self) -> _FakeGenerator:
        return _FakeGenerator(self.state.replace("capturing", "not capturing"))

    def graphsafe_set_state(self, other: _FakeGenerator) -> None:
        self.state = other.state


class _FakeCuda:
    """The parts of torch.cuda a capture touches; `graph` runs the body, then fails as an invalidated capture does
    (without restoring the stream)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, torch_ends_routing: bool):
        self.stream = _FakeStream("default")
        self.pool_calls: list[tuple[str, int, tuple[int, int]]] = []
        self.captures = 0
        self.torch_ends_routing = torch_ends_routing
        self.generator = _FakeGenerator("seed 5, offset 8, capturing")
        cuda = torch.cuda
        for name, value in (("current_stream", lambda: self.stream), ("set_stream", self._set_stream),
                            ("Stream", lambda: _FakeStream("side")), ("stream", lambda s: contextlib.nullcontext()),
                            ("graph_pool_handle", lambda: (0, 7)), ("CUDAGraph", object),
                            ("graph", self._graph), ("synchronize", lambda: None), ("empty_cache", lambda: None),
                            ("current_device", lambda: 0), ("default_generators", (self.generator,))):
            monkeypatch.setattr(cuda, name, value)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", self._end_allocate, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", self._release, raising=False)
        monkeypatch.setattr(unet_graph.device_warm_up, "wait", lambda: None)
        monkeypatch.setattr(unet_graph, "_WARM_UP_STREAMS", {})  # no fake stream is left for a real GPU test

    def _set_stream(self, stream: _FakeStream) -> None:
        self.stream = stream

    @contextlib.contextmanager
    def _graph(self, graph, pool=None, capture_error_mode="global"):
        self.captures += 1
        self.stream = _FakeStream("capture")
        yield
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def _end_allocate(self, device: int, pool: tuple[int, int]) -> None:
        if self.torch_ends_routing:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.pool_calls.append(("end", device, pool))

    def _release(self, device: int, pool: tuple[int, int]) -> None:
        self.pool_calls.append(("release", device, pool))


def _call(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


@pytest.mark.parametrize("torch_ends_routing", [False, True])
def test_a_failed_capture_restores_the_stream_ends_its_pool_and_runs_eagerly(monkeypatch, torch_ends_routing):
    fake = _FakeCuda(monkeypatch, torch_ends_routing)
    module = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = module(x)
        out = unet_graph.graphed_call(module, _call, (x,), {})
    torch.testing.assert_close(out, expected)
    assert fake.stream.name == "default"  # not left on the capture's stream
    assert fake.generator.state == "seed 5, offset 8, not capturing"  # random ops work again, same sequence
    if torch_ends_routing:  # the graph object releases its own pool: releasing it again would underflow its count
        assert fake.pool_calls == []
    else:
        assert fake.pool_calls == [("end", 0, (0, 7)), ("release", 0, (0, 7))]
    assert module._sd_graph_cache.broken
    with torch.no_grad():  # from then on the module runs eagerly, without another capture
        torch.testing.assert_close(unet_graph.graphed_call(module, _call, (x * 2,), {}), module(x * 2))
    assert fake.captures == 1


class _SynchronisingNet(torch.nn.Module):
    """A forward that reads a value back to the CPU: fine eagerly, illegal while a capture records."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y * (1.0 if y.abs().max().item() >= 0 else 0.0)


def _reserved_without_workspaces() -> int:
    """Reserved memory less cuBLAS's per-stream workspaces (32 MiB each on Hopper), which stay allocated for any
    stream that ran a matrix product (the warm-up's side stream) and are not what this test is about."""
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_capture_broken_by_a_synchronising_forward_leaves_the_gpu_usable():
    module = _SynchronisingNet().cuda().eval()
    x = torch.randn(64, 256, device="cuda")
    reserved_before = _reserved_without_workspaces()
    with torch.no_grad():
        expected = module(x)
        out = unet_graph.graphed_call(module, lambda m, t: m(t), (x,), {})
    torch.testing.assert_close(out, expected)
    assert module._sd_graph_cache.broken
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    del out, expected
    # empty_cache only gives blocks back when no capture is counted as under way
    reserved_after = _reserved_without_workspaces()
    assert reserved_after <= reserved_before + (4 << 20), (reserved_before, reserved_after)
    big = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")  # 256 MiB: the allocator still serves
    assert big.numel() == 1 << 28
    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    expected_noise = torch.randn(8, device="cuda", generator=torch.Generator("cuda").set_state(generator.get_state()))
    torch.testing.assert_close(torch.randn(8, device="cuda"), expected_noise)  # the generator left capture mode
