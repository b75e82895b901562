"""--ray's policies that need no cluster: how many replicas and what each asks Ray for, the affinity ranking, the
front door's queue order (one job per replica at once; model and server jobs alone, in their place), and a
replica's progress report as the front door shows it. The same queue and engine run on Ray in
tests/test_ray_serve.py and tests/test_ray_serve_cluster.py."""

from __future__ import annotations

import threading
import time

import pytest

from modules import call_queue, progress, shared
from modules.serve import affinity
from modules.serve.cluster import plan
from modules.serve.queue import RayJobQueue
from modules.serve.state import FrontDoorState, RemoteJobState
from modules.serve.work import Holding, Progress


def test_one_replica_per_gpu_and_one_without_gpus():
    gpus = plan(None, {"GPU": 4.0, "CPU": 64.0})
    assert gpus.replicas == 4 and gpus.actor_options["num_gpus"] == 1
    cpu = plan(None, {"CPU": 8.0})
    assert cpu.replicas == 1 and cpu.actor_options["num_cpus"] == 8 and "num_gpus" not in cpu.actor_options
    assert plan(2, {"CPU": 8.0}).actor_options["num_cpus"] == 4  # the CPUs shared between the replicas
    with pytest.raises(ValueError, match="has 2 GPUs, and each replica takes one"):
        plan(3, {"GPU": 2.0})
    with pytest.raises(ValueError, match="at least 1"):
        plan(0, {"GPU": 2.0})


def test_a_replica_holding_the_checkpoint_and_its_loras_ranks_first():
    holdings = [Holding("a", "other.safetensors"), Holding("b", "sd15.safetensors", ("style",)),
                Holding("c", "sd15.safetensors"), None]

    def ranks(checkpoint, networks):  # the last rank is shuffled (equal replicas share the work)
        return [sorted(r) for r in affinity.rank(holdings, checkpoint, networks)]

    assert ranks("sd15.safetensors", ["style"]) == [[1], [2], [0, 3]]
    assert ranks("sd15.safetensors", []) == [[1, 2], [0, 3]]
    assert ranks("new.safetensors", []) == [[0, 1, 2, 3]]  # nobody has it: anyone


def test_a_job_waits_for_a_busy_holder_at_most_as_long_as_a_switch_takes():
    holdings = [Holding("a", "sd15.safetensors", load_s=3.0), Holding("b", "sdxl.safetensors", load_s=9.0)]
    ranks, waiting = affinity.choose(holdings, "sd15.safetensors", [], waited_s=1.0)
    assert ranks == [[0]] and waiting  # only the holder, while switching elsewhere would cost more than waiting
    ranks, waiting = affinity.choose(holdings, "sd15.safetensors", [], waited_s=3.5)
    assert ranks == [[0], [1]] and not waiting  # waited as long as a switch takes: any free replica now
    ranks, waiting = affinity.choose(holdings, "new.safetensors", [], waited_s=0.0)
    assert sorted(ranks[0]) == [0, 1] and not waiting  # nobody holds it: nothing to wait for
    assert affinity.wait_s([Holding("c", "x")]) == affinity.DEFAULT_WAIT_S  # no load measured yet
    assert affinity.wait_s([Holding("c", "x", load_s=500.0)]) == affinity.MAX_WAIT_S


def test_the_newer_report_of_what_a_replica_holds_wins():
    affinity.forget()
    try:
        affinity.note(Holding("a", "one", version=5))
        assert affinity.holding_of("a", Holding("a", "two", version=4).as_stats()).checkpoint == "one"
        assert affinity.holding_of("a", Holding("a", "two", version=6).as_stats()).checkpoint == "two"
        affinity.note(Holding("a", "old", version=3))  # a late report of an older job changes nothing
        assert affinity.holding_of("a", None).checkpoint == "one"
        # A job just sent there: the replica counts as holding its checkpoint at once, over its own older reports
        affinity.expect("a", "three", ("style",))
        assert affinity.holding_of("a", Holding("a", "one", version=5).as_stats()).checkpoint == "three"
        assert affinity.holding_of("a", Holding("a", "three", version=6).as_stats()).version == 6
    finally:
        affinity.forget()


def _queue(slots: int = 2) -> RayJobQueue:
    # These jobs never reach the engine, so no replica is needed: the queue's order is what is tested.
    return RayJobQueue(handle=None, send_flag=lambda dispatch_id, flag: None, slots=slots, replica_lost=())


def test_jobs_run_one_per_slot_and_a_model_job_runs_alone_in_its_place():
    queue = _queue(slots=2)
    order: list[str] = []
    release = threading.Event()
    lock = threading.Lock()

    def work(name: str):
        def fn():
            with lock:
                order.append(f"{name} start ({len(queue.running())} running)")
            if name.startswith("slow"):
                release.wait(10)
            with lock:
                order.append(f"{name} end")
        return fn

    try:
        slow = [queue.submit("txt2img", work(f"slow{i}")) for i in range(2)]
        third = queue.submit("txt2img", work("third"))
        switch = queue.submit("settings", work("switch"))
        after = queue.submit("txt2img", work("after"))
        time.sleep(0.3)
        assert third.status == "queued" and third.position() == 2  # two slots, both busy
        assert switch.position() == 3 and after.position() == 4
        release.set()
        for job in (*slow, third, switch, after):
            job.wait(10)
    finally:
        queue.shutdown()
    assert order.index("switch start (1 running)") > max(order.index("slow0 end"), order.index("slow1 end"),
                                                        order.index("third end"))
    assert order.index("after start (1 running)") > order.index("switch end")


def test_cancelling_a_queued_job_frees_its_place():
    queue = _queue(slots=1)
    release = threading.Event()
    try:
        first = queue.submit("txt2img", lambda: release.wait(10))
        second = queue.submit("txt2img", lambda: "second")
        third = queue.submit("txt2img", lambda: "third")
        assert second.cancel() and second.status == "cancelled"
        assert third.position() == 1
        release.set()
        assert third.wait(10) == "third" and first.wait(10) is True
    finally:
        queue.shutdown()


def test_a_replica_report_is_what_progress_shows_for_that_task(monkeypatch):
    monkeypatch.setitem(shared.opts.data, "live_previews_enable", True)  # whatever earlier tests left
    sent: list[str] = []
    state = RemoteJobState("task(x)", sent.append)
    job = call_queue.Job(_queue(), "txt2img", lambda: None, "task(x)")
    job.status, job.progress_state = "running", state
    from PIL import Image

    preview = Image.new("RGB", (8, 8), "red")
    state.apply(Progress({"job": "task(x)", "job_count": 2, "job_no": 1, "sampling_step": 5, "sampling_steps": 10},
                         elapsed=3.0, textinfo="sampling", id_live_preview=4, preview=preview))
    queue = call_queue.queue
    saved = queue._by_id.get("task(x)")
    queue._by_id["task(x)"] = job
    try:
        shown = progress.progress_for("task(x)", id_live_preview=-1)
    finally:
        if saved is None:
            queue._by_id.pop("task(x)", None)
        else:
            queue._by_id["task(x)"] = saved
    assert shown["active"] and shown["textinfo"] == "sampling" and shown["id_live_preview"] == 4
    assert shown["progress"] == pytest.approx(0.01 + 1 / 2 + 0.5 * 5 / 10, abs=1e-6)
    assert shown["live_preview"].startswith("data:image/png;base64,")
    state.interrupt()
    assert sent == ["interrupt"]
    # The replica has not seen the interrupt yet: its next report must not clear the flag here.
    state.apply(Progress({"interrupted": False, "job": "task(x)"}, elapsed=3.5, textinfo=None, id_live_preview=4))
    assert state.interrupted


def test_the_global_interrupt_reaches_every_running_job():
    sent: list[tuple[str, str]] = []
    jobs = []
    for name in ("a", "b"):
        job = call_queue.Job(_queue(), "txt2img", lambda: None, name)
        job.progress_state = RemoteJobState(name, lambda flag, name=name: sent.append((name, flag)))
        jobs.append(job)
    front = FrontDoorState(lambda: jobs)
    front.skip()
    front.interrupt()
    assert sorted(sent) == [("a", "interrupt"), ("a", "skip"), ("b", "interrupt"), ("b", "skip")]
    front.show(jobs[1].progress_state)
    assert front.job == "b"
    front.show(None)
    assert front.job == "" and front.job_count == 0


def test_front_door_parts_of_jobs_run_one_at_a_time():
    """Code written for the single-process queue (one job at a time) stays safe: only replicas run in parallel."""
    queue = _queue(slots=3)
    inside, overlaps = [0], []
    lock = threading.Lock()

    def fn():
        with lock:
            inside[0] += 1
            overlaps.append(inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1

    try:
        jobs = [queue.submit("txt2img", fn) for _ in range(6)]
        for job in jobs:
            job.wait(10)
    finally:
        queue.shutdown()
    assert max(overlaps) == 1


def test_ray_flag_without_ray_installed_says_how_to_install_it(monkeypatch):
    import importlib.util

    import webui
    from modules import cmd_args

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SystemExit) as stopped:
        webui.start_ray(cmd_args.parse_args(["--ray"], {}))
    assert "pip install -r requirements-ray.txt" in str(stopped.value)


def test_ray_flags_parse():
    from modules import cmd_args

    ns = cmd_args.parse_args(["--ray", "--ray-replicas", "3", "--ray-address", "10.0.0.5:6379"], {})
    assert (ns.ray, ns.ray_replicas, ns.ray_address) == (True, 3, "10.0.0.5:6379")
    assert cmd_args.not_yet_effective(ns) == []
    plain = cmd_args.parse_args([], {})
    assert (plain.ray, plain.ray_replicas, plain.ray_address) == (False, None, None)


def test_launch_installs_the_ray_requirements_only_with_ray(monkeypatch):
    import launch
    from modules import cmd_args

    installed: list[str] = []
    monkeypatch.setattr(launch, "is_installed", lambda name: True)
    monkeypatch.setattr(launch, "missing_requirements",
                        lambda path: ["ray[serve]==2.60.0 (not installed)"] if path == launch.ray_requirements_file else [])
    monkeypatch.setattr(launch, "_install_requirements", installed.append)
    launch.prepare_environment(cmd_args.parse_args([], {}))
    assert installed == []
    launch.prepare_environment(cmd_args.parse_args(["--ray"], {}))
    assert installed == [launch.ray_requirements_file]


class _ReplicaDied(Exception):
    """Stands for Ray's ActorDiedError (the Ray tests kill real replicas; here only the retry rule is tested)."""


class _DyingReplicas:
    """A deployment handle whose replicas die mid-job `deaths` times, then answer."""

    def __init__(self, deaths: int):
        self.deaths = deaths
        self.calls: list[int] = []

    def options(self, **kwargs):
        return self

    @property
    def run(self):
        return self

    def remote(self, work):
        from modules.serve.work import Finished, Holding, Started

        self.calls.append(work.attempt)

        def stream():
            yield Started(f"replica-{len(self.calls)}", "node", 1)
            if len(self.calls) <= self.deaths:
                raise _ReplicaDied("The actor died unexpectedly before finishing this task.")
            yield Finished(processing_result(work), [None], Holding(f"replica-{len(self.calls)}"))

        return stream()


def processing_result(work):
    from types import SimpleNamespace

    return SimpleNamespace(images=[], seed=work.p.seed)


def _dispatching(handle, monkeypatch) -> RayJobQueue:
    queue = RayJobQueue(handle, send_flag=lambda dispatch_id, flag: None, slots=1, replica_lost=(_ReplicaDied,))
    monkeypatch.setattr(call_queue, "queue", queue)  # the engine's entry points ask the process's queue
    return queue


def _engine_job(queue: RayJobQueue, seed: int):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", seed=seed)
    return queue.submit("txt2img", lambda: processing.process_images(p))


def test_a_job_whose_replica_dies_runs_once_more_then_fails_saying_so(monkeypatch):
    monkeypatch.setattr("modules.serve.work.checkpoint_name", lambda p, settings: None)
    once = _DyingReplicas(deaths=1)
    queue = _dispatching(once, monkeypatch)
    try:
        assert _engine_job(queue, 5).wait(10).seed == 5
    finally:
        queue.shutdown()
    assert once.calls == [1, 2] and queue.retried == 1

    twice = _DyingReplicas(deaths=2)
    queue = _dispatching(twice, monkeypatch)
    try:
        with pytest.raises(call_queue.JobFailed) as failed:
            _engine_job(queue, 6).wait(10)
    finally:
        queue.shutdown()
    assert twice.calls == [1, 2]  # never a third time
    assert "The replica running this job stopped" in failed.value.message and "Try again" in failed.value.message

    # through the API: the service failed, not the request, so 503 (a client may send it again), not 500
    import asyncio

    from modules import processing
    from modules.api import jobs
    from modules.api.errors import ApiError

    again = _DyingReplicas(deaths=2)
    queue = _dispatching(again, monkeypatch)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", seed=7)
    try:
        with pytest.raises(ApiError) as refused:
            asyncio.run(jobs.run(queue, "txt2img", lambda: processing.process_images(p)))
    finally:
        queue.shutdown()
    assert refused.value.status_code == 503 and "Try again" in str(refused.value.detail)


def test_a_job_cancelled_before_it_reached_a_replica_is_sent_there_interrupted(monkeypatch):
    monkeypatch.setattr("modules.serve.work.checkpoint_name", lambda p, settings: None)
    sent: list[tuple[str, str]] = []
    handle = _DyingReplicas(deaths=0)
    queue = RayJobQueue(handle, send_flag=lambda dispatch_id, flag: sent.append((dispatch_id, flag)), slots=1,
                        replica_lost=(_ReplicaDied,))
    monkeypatch.setattr(call_queue, "queue", queue)
    from modules import shared
    from modules.shared_state import State

    monkeypatch.setattr(shared, "state", State())  # the cancel also sets this process's flag
    in_front_part, go_on = threading.Event(), threading.Event()

    def fn():
        from modules import processing

        in_front_part.set()
        go_on.wait(10)  # e.g. decoding uploads
        return processing.process_images(processing.StableDiffusionProcessingTxt2Img(prompt="x", seed=3))

    try:
        job = queue.submit("txt2img", fn)
        assert in_front_part.wait(10)
        assert job.cancel()  # the client went away
        go_on.set()
        job.wait(10)
    finally:
        queue.shutdown()
    assert [flag for _, flag in sent] == ["interrupt"] and sent[0][0] == job.dispatch_id
