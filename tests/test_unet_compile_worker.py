"""Compiling in a child process (modules.engine.compile_worker, setting `compile_unet`): a new input structure starts a
compile process and the call runs the plain forward meanwhile; once the child has finished, the next call compiles
in its thread (from the child's disk caches) and runs compiled; a failed child leaves that structure uncompiled with
one log line; children run one at a time and do not outlive the web UI. On the CPU with dynamo's "eager" backend
(the worker takes any backend by name; the tests let it have one); that inductor's caches filled by a child are hits
for the job's compile afterwards is tested on a GPU (tests/test_unet_compile_cuda.py): inductor on the CPU needs a
C++ compiler and is slow to start even for a tiny network."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from compile_worker_helpers import TinyNet, tiny_forward, vanishing_class
from test_unet_compile import _txt2img
from test_unet_compile import data_dir as data_dir  # a module-scoped fixture: this file gets its own data dir

from modules import sd_models, shared
from modules.engine import compile_processes, unet_compile

WAIT_S = 60


@pytest.fixture
def worker(monkeypatch, tmp_path):
    """Compile processes with dynamo's "eager" backend, inductor's cache in a temporary folder."""
    monkeypatch.setattr(unet_compile, "BACKEND", "eager")
    monkeypatch.setattr(unet_compile, "WORKER_BACKENDS", frozenset({"inductor", "eager"}))
    monkeypatch.setattr(unet_compile, "IN_WORKER", True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch_compile"))
    torch._dynamo.reset()
    yield
    assert unet_compile.wait_for_workers(WAIT_S)
    torch._dynamo.reset()


def _x(size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))


def test_a_new_structure_runs_plain_while_a_process_compiles_it_then_runs_compiled(worker):
    net = TinyNet().eval()
    small, large = _x(8), _x(12)
    assert unet_compile.forward_for(net, tiny_forward, (small,), {"scale": 2.0}) is tiny_forward  # no waiting
    assert unet_compile.forward_for(net, tiny_forward, (large,), {"scale": 2.0}) is tiny_forward
    jobs = list(net._sd_compiler.jobs.values())
    assert len(jobs) == 2 and not net._sd_compiler.ready
    # one child at a time: the second structure waits in the queue while the first compiles
    assert jobs[0].status in ("queued", "running") and jobs[1].status == "queued"
    # asking again starts nothing new
    assert unet_compile.forward_for(net, tiny_forward, (small,), {"scale": 2.0}) is tiny_forward
    assert len(net._sd_compiler.jobs) == 2

    assert unet_compile.wait_for_workers(WAIT_S)
    assert [job.status for job in jobs] == ["done", "done"], [job.error for job in jobs]
    assert jobs[0].finished <= jobs[1].started, "the two compile processes overlapped"
    for x in (small, large):
        forward = unet_compile.forward_for(net, tiny_forward, (x,), {"scale": 2.0})
        assert forward is net._sd_compiler.compiled
        with torch.no_grad():
            torch.testing.assert_close(forward(net, x, scale=2.0), tiny_forward(net, x, scale=2.0))
    assert len(net._sd_compiler.ready) == 2


def test_a_failed_compile_process_leaves_its_structure_uncompiled_with_one_log_line(worker, caplog):
    net = vanishing_class()().eval()  # pickles by name here; the child cannot import it
    x = _x()
    with caplog.at_level(logging.WARNING, logger=unet_compile.__name__):
        assert unet_compile.forward_for(net, tiny_forward, (x,), {}) is tiny_forward
        assert unet_compile.wait_for_workers(WAIT_S)
        for _ in range(3):  # the job goes on, uncompiled, and nothing is retried
            assert unet_compile.forward_for(net, tiny_forward, (x,), {}) is tiny_forward
    (job,) = net._sd_compiler.jobs.values()
    assert job.status == "failed" and job.returncode not in (0, None)
    assert "Vanishing" in job.error  # the child's last line on stderr
    failures = [r for r in caplog.records if "keep running uncompiled" in r.getMessage()]
    assert len(failures) == 1 and "Vanishing" in failures[0].getMessage()
    assert not net._sd_compiler.failed  # another structure may still compile


def test_a_module_that_cannot_be_pickled_by_name_compiles_in_the_job(worker, caplog):
    class Local(TinyNet):  # defined in a function: a child could never import it
        pass

    net = Local().eval()
    x = _x()
    with caplog.at_level(logging.WARNING, logger=unet_compile.__name__):
        forward = unet_compile.forward_for(net, tiny_forward, (x,), {})
    assert forward is net._sd_compiler.compiled and not net._sd_compiler.jobs
    assert "compiling it in the job instead" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(forward(net, x), tiny_forward(net, x))


def test_a_gpu_without_room_for_a_second_copy_compiles_in_the_job(worker, monkeypatch, caplog):
    net = TinyNet().eval()
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    free = {"bytes": weights + compile_processes.WORKER_MARGIN_BYTES - 1}  # one byte short
    monkeypatch.setattr(compile_processes, "_free_device_bytes", lambda device: free["bytes"])
    x = _x()
    with caplog.at_level(logging.WARNING, logger=unet_compile.__name__):
        forward = unet_compile.forward_for(net, tiny_forward, (x,), {})
    assert forward is net._sd_compiler.compiled and not net._sd_compiler.jobs
    assert "not in a separate process" in caplog.text and "GiB free on the GPU" in caplog.text
    free["bytes"] += 1  # room enough: the next module goes to a compile process
    other = TinyNet().eval()
    assert unet_compile.forward_for(other, tiny_forward, (x,), {}) is tiny_forward and other._sd_compiler.jobs


def test_with_in_worker_off_the_first_call_compiles_in_the_job(worker, monkeypatch):
    monkeypatch.setattr(unet_compile, "IN_WORKER", False)
    net = TinyNet().eval()
    assert unet_compile.forward_for(net, tiny_forward, (_x(),), {}) is net._sd_compiler.compiled
    assert not net._sd_compiler.jobs


def test_a_backend_without_disk_caches_compiles_in_the_job(worker, monkeypatch):
    monkeypatch.setattr(unet_compile, "WORKER_BACKENDS", frozenset({"inductor"}))  # "eager": a child gains nothing
    net = TinyNet().eval()
    assert unet_compile.forward_for(net, tiny_forward, (_x(),), {}) is net._sd_compiler.compiled
    assert not net._sd_compiler.jobs


def test_a_child_past_its_time_is_stopped_and_its_structure_stays_uncompiled(worker, monkeypatch, caplog):
    monkeypatch.setattr(compile_processes, "WORKER_TIMEOUT_S", 0.2)
    net = TinyNet().eval()
    with caplog.at_level(logging.WARNING, logger=unet_compile.__name__):
        unet_compile.forward_for(net, tiny_forward, (_x(),), {})
        assert unet_compile.wait_for_workers(WAIT_S)
    (job,) = net._sd_compiler.jobs.values()
    assert job.status == "failed" and "no result after" in job.error and job.returncode != 0
    assert unet_compile.forward_for(net, tiny_forward, (_x(),), {}) is tiny_forward


def test_at_exit_the_running_child_is_stopped_and_no_other_starts(worker, monkeypatch, caplog):
    queue = compile_processes._WorkerQueue()
    monkeypatch.setattr(compile_processes, "_workers", queue)
    nets = [TinyNet().eval(), TinyNet().eval()]
    with caplog.at_level(logging.WARNING, logger=unet_compile.__name__):
        for net in nets:
            unet_compile.forward_for(net, tiny_forward, (_x(),), {})
        first, second = (next(iter(net._sd_compiler.jobs.values())) for net in nets)
        for _ in range(500):
            if first.status == "running":
                break
            first.finished_event.wait(0.01)
        queue.close()  # what atexit calls
        assert second.finished_event.wait(WAIT_S)
    assert first.status == second.status == "failed"
    assert first.returncode is not None and first.returncode < 0  # killed
    assert second.started is None  # never started
    assert "keep running uncompiled" not in caplog.text  # exiting is not a failure worth a warning




def test_a_job_runs_uncompiled_while_the_unet_and_decoder_compile_and_the_next_runs_compiled(data_dir, worker,
                                                                                            monkeypatch):
    model = sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
    monkeypatch.setitem(shared.opts.data, "compile_unet", True)
    first = _txt2img(5)  # does not wait for the compiler
    unet_state, vae_state = model.unet._sd_compiler, model.vae._sd_compiler
    assert unet_state.jobs and vae_state.jobs and not unet_state.ready and not vae_state.ready
    assert unet_compile.wait_for_workers(WAIT_S)
    jobs = [*unet_state.jobs.values(), *vae_state.jobs.values()]
    assert all(job.status == "done" for job in jobs), [job.error for job in jobs]
    second = _txt2img(5)
    assert model.unet._sd_compiler.ready and model.vae._sd_compiler.ready
    assert np.abs(second - first).max() <= 1
