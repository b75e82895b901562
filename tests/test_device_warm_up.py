"""The background GPU warm-up at start-up (modules/device_warm_up.py): only on CUDA, never fatal, waited for
before a CUDA graph capture."""

from __future__ import annotations

import logging

import pytest
import torch

from modules import device_warm_up


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(device_warm_up, "_thread", None)


def test_nothing_runs_on_the_cpu():
    assert device_warm_up.start(torch.device("cpu")) is None
    device_warm_up.wait()  # nothing to wait for


def test_a_failing_warm_up_is_logged_and_the_server_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver too old (test)")

    monkeypatch.setattr(torch.cuda, "device", broken)
    with caplog.at_level(logging.WARNING, logger="modules.device_warm_up"):
        thread = device_warm_up.start(torch.device("cuda", 0))
        assert thread is not None
        device_warm_up.wait()
    assert not thread.is_alive()
    assert "warming the GPU up failed" in caplog.text and "CUDA driver too old" in caplog.text
    assert device_warm_up.start(torch.device("cuda", 0)) is None  # once per process


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_warm_up_runs_on_a_gpu(caplog):
    with caplog.at_level(logging.WARNING, logger="modules.device_warm_up"):
        thread = device_warm_up.start(torch.device("cuda", torch.cuda.current_device()))
        device_warm_up.wait()
    assert thread is not None and not thread.is_alive()
    assert "failed" not in caplog.text
