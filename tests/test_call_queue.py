"""The job queue (modules.call_queue): one job at a time, FIFO, readable errors, cancel and interrupt."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time

import pytest

from modules import call_queue, shared
from modules.call_queue import Job, JobCancelled, JobFailed, JobQueue

TIMEOUT = 5.0


@pytest.fixture
def jq(monkeypatch):
    """A fresh queue installed as the process-wide one, shut down after the test."""
    q = JobQueue()
    monkeypatch.setattr(call_queue, "queue", q)
    yield q
    q.shutdown(timeout=TIMEOUT)
    shared.state.interrupted = False


def blocker(q: JobQueue, kind: str = "gate") -> tuple[Job, threading.Event, threading.Event]:
    """Submit a job that signals it started and then holds the queue until released."""
    started, release = threading.Event(), threading.Event()

    def fn() -> str:
        started.set()
        assert release.wait(TIMEOUT)
        return kind

    job = q.submit(kind, fn)
    assert started.wait(TIMEOUT)
    return job, started, release


def test_task_ids_have_the_a1111_form_and_a_given_id_is_kept(jq):
    assert re.fullmatch(r"task\(txt2img-[a-z0-9]{15}\)", call_queue.new_task_id("txt2img"))
    job = jq.submit("txt2img", lambda: 1)
    assert re.fullmatch(r"task\(txt2img-[a-z0-9]{15}\)", job.id)
    given = jq.submit("api", lambda: 2, task_id="task(my-id)")
    assert given.id == "task(my-id)" and given.wait(TIMEOUT) == 2
    assert jq.get("task(my-id)") is given and jq.get("task(nope)") is None
    assert job.wait(TIMEOUT) == 1 and job.status == "done" and job.error is None
    assert job.created <= job.started <= job.finished


def test_jobs_run_one_at_a_time_in_fifo_order(jq):
    spans: list[tuple[int, float, float]] = []
    gate, _, release = blocker(jq)

    def make(i: int):
        def fn() -> int:
            start = time.perf_counter()
            time.sleep(0.005)  # long enough that an overlapping job would show
            spans.append((i, start, time.perf_counter()))
            return i

        return fn

    jobs = [jq.submit("t", make(i)) for i in range(6)]
    assert [j.status for j in jobs] == ["queued"] * 6
    release.set()
    assert [j.wait(TIMEOUT) for j in jobs] == list(range(6))
    assert [i for i, _, _ in spans] == list(range(6))
    for (_, _, end), (_, start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    assert gate.finished <= jobs[0].started


def test_state_begins_and_ends_around_each_job_and_queue_lock_is_held(jq):
    seen = {}

    def fn() -> None:
        seen["job"] = shared.state.job
        seen["locked"] = call_queue.queue_lock.locked()
        seen["in_worker"] = jq.in_worker()

    job = jq.submit("t", fn)
    job.wait(TIMEOUT)
    assert seen == {"job": job.id, "locked": True, "in_worker": True}
    assert shared.state.job == "" and not jq.in_worker()


def test_positions_count_down(jq):
    gate, _, release_gate = blocker(jq)
    started = {k: threading.Event() for k in "abc"}
    release = {k: threading.Event() for k in "abc"}

    def make(k: str):
        def fn() -> str:
            started[k].set()
            assert release[k].wait(TIMEOUT)
            return k

        return fn

    a, b, c = (jq.submit("t", make(k)) for k in "abc")
    assert jq.current() is gate and gate.position() == 0
    assert [a.position(), b.position(), c.position()] == [1, 2, 3]
    assert jq.pending() == [a, b, c]

    release_gate.set()
    assert started["a"].wait(TIMEOUT)
    assert jq.current() is a and [a.position(), b.position(), c.position()] == [0, 1, 2]

    release["a"].set()
    assert started["b"].wait(TIMEOUT)
    assert [b.position(), c.position()] == [0, 1]

    release["b"].set()
    release["c"].set()
    assert c.wait(TIMEOUT) == "c" and c.position() == 0
    assert jq.current() is None and jq.pending() == []
    assert [j.id for j in jq.recent()] == [gate.id, a.id, b.id, c.id]


def test_a_failing_job_reports_its_message_and_the_next_job_still_runs(jq, caplog):
    def bad() -> None:
        raise ValueError("Width must be a multiple of 8")

    failing = jq.submit("t", bad)
    after = jq.submit("t", lambda: "still running")
    with pytest.raises(JobFailed) as info:
        failing.wait(TIMEOUT)
    assert info.value.message == "Width must be a multiple of 8"
    assert failing.status == "failed" and failing.error == "Width must be a multiple of 8"
    assert after.wait(TIMEOUT) == "still running"
    assert "Traceback" not in caplog.text  # an input error is not a bug


def test_error_messages_are_one_readable_line(jq, caplog):
    from modules.models.checkpoint_files import ModelFileError

    def boom(e: BaseException):
        def fn() -> None:
            raise e

        return fn

    cases = [
        (KeyError("Unknown sampler: Foo"), "Unknown sampler: Foo"),
        (ModelFileError("/x/model.ckpt", "not a checkpoint"), "model.ckpt: not a checkpoint"),
        (TypeError("bad\noperand"), "TypeError: bad operand"),
        (RuntimeError(), "RuntimeError"),
    ]
    with caplog.at_level(logging.ERROR, logger="modules.call_queue"):
        jobs = [jq.submit("t", boom(e)) for e, _ in cases]
        for job, (_, message) in zip(jobs, cases, strict=True):
            with pytest.raises(JobFailed):
                job.wait(TIMEOUT)
            assert job.error == message
    assert "Traceback" in caplog.text and "TypeError: bad" in caplog.text  # bugs keep their traceback in the log


def test_out_of_memory_gives_advice_and_frees_the_cache(jq, monkeypatch):
    import torch

    freed = []
    monkeypatch.setattr(call_queue, "free_gpu_memory", lambda: freed.append(True))

    def oom_runtime() -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def oom_torch() -> None:
        raise torch.OutOfMemoryError("CUDA error: out of memory")

    jobs = [jq.submit("t", oom_runtime), jq.submit("t", oom_torch)]
    for job in jobs:
        with pytest.raises(JobFailed, match="Out of GPU memory: try a smaller size or batch"):
            job.wait(TIMEOUT)
    assert freed == [True, True]


def test_free_gpu_memory_never_raises():
    call_queue.free_gpu_memory()  # no CUDA here: a no-op


def test_cancel_a_queued_job(jq):
    _, _, release = blocker(jq)
    ran = []
    victim = jq.submit("t", lambda: ran.append("victim"))
    after = jq.submit("t", lambda: "after")
    assert after.position() == 2
    assert victim.cancel() is True
    assert victim.status == "cancelled" and victim.finished is not None and victim.position() == 0
    assert after.position() == 1 and jq.pending() == [after]
    with pytest.raises(JobCancelled):
        victim.wait(TIMEOUT)
    release.set()
    assert after.wait(TIMEOUT) == "after"
    assert ran == [] and victim.cancel() is False and after.cancel() is False


def test_cancel_interrupts_a_running_job(jq):
    started = threading.Event()

    def long_job() -> str:
        started.set()
        deadline = time.monotonic() + TIMEOUT
        while not shared.state.interrupted:
            if time.monotonic() > deadline:
                return "never interrupted"
            time.sleep(0.001)
        return "stopped"

    job = jq.submit("t", long_job)
    assert started.wait(TIMEOUT)
    assert job.cancel() is True
    assert job.wait(TIMEOUT) == "stopped" and job.status == "done"  # partial results, as A1111's Interrupt
    follow = jq.submit("t", lambda: shared.state.interrupted)
    assert follow.wait(TIMEOUT) is False  # begin() clears the flag for the next job


def test_many_threads_submitting_at_once_each_get_their_own_result(jq):
    n = 20
    barrier = threading.Barrier(n)
    results: dict[int, object] = {}
    ids: dict[int, str] = {}

    def client(i: int) -> None:
        barrier.wait(TIMEOUT)
        job = jq.submit("api", lambda: ("result", i))
        ids[i] = job.id
        results[i] = job.wait(TIMEOUT)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results == {i: ("result", i) for i in range(n)}
    assert len(set(ids.values())) == n


def test_wait_times_out_and_refuses_to_deadlock_inside_a_job(jq):
    gate, _, release = blocker(jq)
    queued = jq.submit("t", lambda: "later")
    with pytest.raises(TimeoutError):
        queued.wait(timeout=0.01)
    release.set()
    assert queued.wait(TIMEOUT) == "later"

    def nested() -> str:
        inner = jq.submit("t", lambda: "inner")
        try:
            inner.wait()
        except RuntimeError as e:
            return str(e)
        return "waited"

    assert "deadlock" in jq.submit("t", nested).wait(TIMEOUT)


def test_recent_is_bounded_and_old_ids_are_forgotten():
    q = JobQueue(keep_recent=3)
    try:
        jobs = [q.submit("t", lambda i=i: i) for i in range(5)]
        assert [j.wait(TIMEOUT) for j in jobs] == list(range(5))
        assert q.recent() == jobs[2:]
        assert q.get(jobs[0].id) is None and q.get(jobs[4].id) is jobs[4]
    finally:
        q.shutdown(timeout=TIMEOUT)


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones():
    q = JobQueue()
    gate, _, release = blocker(q)
    waiting = q.submit("t", lambda: 1)
    stopper = threading.Thread(target=q.shutdown, kwargs={"timeout": TIMEOUT})
    stopper.start()
    with pytest.raises(JobCancelled):
        waiting.wait(TIMEOUT)
    release.set()  # the running job is let finish
    stopper.join(TIMEOUT)
    assert gate.status == "done" and not stopper.is_alive()
    with pytest.raises(RuntimeError):
        q.submit("t", lambda: 2)


# --- A1111 wrappers ---


def test_wrap_gradio_gpu_call_returns_result_or_error_html(jq):
    def generate(id_task: str, prompt: str) -> tuple[list[str], str, str]:
        if prompt == "<bad>":
            raise ValueError("bad <prompt>")
        return [prompt], "{}", f"<p>{shared.state.job}</p>"

    wrapped = call_queue.wrap_gradio_gpu_call(generate)
    assert wrapped.__name__ == "generate"
    assert wrapped("task(txt2img-abc)", "cat") == (["cat"], "{}", "<p>task(txt2img-abc)</p>")
    assert jq.get("task(txt2img-abc)").status == "done"  # the UI's task id is the job's id
    assert wrapped("task(txt2img-def)", "<bad>") == [None, "", "<div class='error'>bad &lt;prompt&gt;</div>"]

    shaped = call_queue.wrap_gradio_gpu_call(generate, extra_outputs=[[], "{}"])
    assert shaped("not a task id", "<bad>") == [[], "{}", "<div class='error'>bad &lt;prompt&gt;</div>"]


def test_wrap_gradio_gpu_call_inside_a_job_runs_inline(jq):
    inner = call_queue.wrap_gradio_gpu_call(lambda x: x * 2)
    assert jq.submit("t", lambda: inner(21)).wait(TIMEOUT) == 42


def test_wrap_gradio_gpu_call_reports_a_cancelled_job(jq):
    _, _, release = blocker(jq)
    wrapped = call_queue.wrap_gradio_gpu_call(lambda id_task: "ran")
    out: list = []
    t = threading.Thread(target=lambda: out.append(wrapped("task(ui-cancelme)")))
    t.start()
    deadline = time.monotonic() + TIMEOUT
    while jq.get("task(ui-cancelme)") is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert jq.get("task(ui-cancelme)").cancel()
    t.join(TIMEOUT)
    release.set()
    assert out == [[None, "", "<div class='error'>Cancelled</div>"]]


def test_wrap_gradio_call_handles_errors_without_the_queue(jq):
    def ok() -> tuple[str, str]:
        return "image", "<p>info</p>"

    def broken() -> None:
        raise KeyError("Unknown upscaler: X")

    assert call_queue.wrap_gradio_call(ok)() == ("image", "<p>info</p>")
    assert call_queue.wrap_gradio_call(broken)() == [None, "", "<div class='error'>Unknown upscaler: X</div>"]
    stats = call_queue.wrap_gradio_call(ok, add_stats=True)()
    assert stats[0] == "image" and stats[1].startswith("<p>info</p><div class='performance'>")
    assert jq.recent() == []  # nothing was queued


def test_wrap_queued_call_never_overlaps_a_job(jq):
    gate, _, release = blocker(jq)
    done = threading.Event()
    wrapped = call_queue.wrap_queued_call(lambda: done.set() or gate.status)
    out: list = []
    t = threading.Thread(target=lambda: out.append(wrapped()))
    t.start()
    assert not done.wait(0.05)  # blocked while the job holds queue_lock
    release.set()
    t.join(TIMEOUT)
    assert out == ["done"]


def test_importing_the_queue_pulls_in_no_torch():
    code = "import sys, modules.call_queue, modules.progress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- limits and running out of RAM ---


def test_out_of_cpu_memory_is_reported_like_out_of_gpu_memory(jq, monkeypatch):
    freed = []
    monkeypatch.setattr(call_queue, "free_gpu_memory", lambda: freed.append(True))

    def torch_cpu() -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")

    def python_ram() -> None:
        raise MemoryError()

    jobs = [jq.submit("t", torch_cpu), jq.submit("t", python_ram)]
    for job in jobs:
        with pytest.raises(JobFailed) as info:
            job.wait(TIMEOUT)
        assert info.value.message == call_queue.CPU_OOM_MESSAGE == "Out of memory (RAM): try a smaller size or batch"
    assert freed == [True, True]
    assert jq.submit("t", lambda: "next").wait(TIMEOUT) == "next"  # the queue keeps serving
    assert not call_queue.is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))


def test_the_queue_refuses_jobs_past_its_total_limit(jq, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs", 3)
    _, _, release = blocker(jq)  # running: not counted as waiting
    waiting = [jq.submit("t", lambda i=i: i) for i in range(3)]
    with pytest.raises(call_queue.QueueFull) as info:
        jq.submit("t", lambda: "refused")
    assert info.value.setting == "queue_max_jobs" and info.value.status == 429
    assert "3 jobs are waiting" in info.value.message and "(setting queue_max_jobs)" in info.value.message
    assert jq.pending() == waiting  # nothing was queued
    waiting[0].cancel()
    fourth = jq.submit("t", lambda: 3)  # a place became free
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs", 2)  # read on each submit: applies at once
    with pytest.raises(call_queue.QueueFull):
        jq.submit("t", lambda: "refused")
    release.set()
    assert [j.wait(TIMEOUT) for j in (*waiting[1:], fourth)] == [1, 2, 3]


def test_the_queue_refuses_a_client_past_its_own_limit(jq, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", 2)
    started, release = threading.Event(), threading.Event()
    running = jq.submit("t", lambda: started.set() or release.wait(TIMEOUT), client="alice")
    assert started.wait(TIMEOUT)
    queued = jq.submit("t", lambda: "a2", client="alice")  # the running one counts too: 2 of 2
    with pytest.raises(call_queue.QueueFull) as info:
        jq.submit("t", lambda: "a3", client="alice")
    assert info.value.setting == "queue_max_jobs_per_client" and info.value.status == 429
    assert "2 are waiting or running" in info.value.message
    assert "(setting queue_max_jobs_per_client)" in info.value.message
    others = [jq.submit("t", lambda: "b", client="bob"), jq.submit("t", lambda: "b", client="bob")]
    anonymous = [jq.submit("t", lambda: "x") for _ in range(3)]  # no client: only the total limit applies
    release.set()
    assert running.wait(TIMEOUT) is True and queued.wait(TIMEOUT) == "a2"
    assert jq.submit("t", lambda: "a again", client="alice").wait(TIMEOUT) == "a again"  # its jobs finished
    assert [j.wait(TIMEOUT) for j in (*others, *anonymous)] == ["b", "b", "x", "x", "x"]


def test_a_job_may_queue_work_past_the_limits_from_inside(jq, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs", 1)
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", 1)
    outer = jq.submit("t", lambda: jq.submit("t", lambda: "inner", client="c").id, client="c")
    inner = jq.get(outer.wait(TIMEOUT))
    assert inner.wait(TIMEOUT) == "inner"


def test_wrap_gradio_gpu_call_shows_a_full_queue_as_an_error(jq, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs", 1)
    _, _, release = blocker(jq)
    jq.submit("t", lambda: None)
    out = call_queue.wrap_gradio_gpu_call(lambda id_task: "ran")("task(ui-full)")
    release.set()
    assert out[:2] == [None, ""] and "queue_max_jobs" in out[2] and out[2].startswith("<div class='error'>")
