"""The queue runs compatible waiting txt2img jobs as one batch (setting `queue_batch_jobs`), and every job still
gets what it would get alone: over real HTTP with the tiny test model.

Tolerance: a batched UNet may round differently from an unbatched one (other kernels), so pictures may differ
by at most 1 in any channel of any pixel; seeds, infotexts and info JSON (but its job_timestamp, the moment the
request was made) must be exactly equal.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from test_api_support import CHECKPOINTS, FAST, SETTINGS, client, decode, pixels, serving

from modules import call_queue, job_batching, processing, progress, shared
from modules.api.server import create_app

PIXEL_TOLERANCE = 1
BASE = {**FAST, "steps": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-batching"), CHECKPOINTS, SETTINGS) as root:
        with serving(create_app(auth=None)) as running:
            running.root = root
            yield running


@pytest.fixture
def runs(monkeypatch) -> list[int]:
    """The batch size of every run of the engine (process_images_inner), in order."""
    seen: list[int] = []
    inner = processing.process_images_inner

    def counting(p):
        seen.append(p.batch_size)
        return inner(p)

    monkeypatch.setattr(processing, "process_images_inner", counting)
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", 64)  # every test client has one address
    return seen


@pytest.fixture
def batching(monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_batch_jobs", True)


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def worker_busy() -> Iterator[None]:
    """Hold the queue's worker with a job of another kind, so the requests sent meanwhile all wait."""
    release = threading.Event()
    job = call_queue.queue.submit("hold", lambda: release.wait(120))
    _wait_for(lambda: job.status == "running", what="the holding job")
    try:
        yield
    finally:
        release.set()
        job.wait(120)


def _post_all(server, bodies: list[dict], before_release=None) -> list:
    """Send every body while the worker is busy (each queued in order), then let them run; the responses."""
    out: list = [None] * len(bodies)

    def post(i: int) -> None:
        with client(server) as c:
            out[i] = c.post("/sdapi/v1/txt2img", json=bodies[i])

    threads = []
    with worker_busy():
        for i in range(len(bodies)):
            threads.append(threading.Thread(target=post, args=(i,), daemon=True))
            threads[-1].start()
            _wait_for(lambda n=i + 1: len(call_queue.queue.pending()) == n, what="the request to queue")
        if before_release is not None:
            before_release()
    for thread in threads:
        thread.join(300)
    return out


def _alone(server, body: dict):
    with client(server) as c:
        return c.post("/sdapi/v1/txt2img", json=body)


def _as_run(body: dict, response) -> dict:
    """The request with the seed and variation seed it ran with (random ones are fixed as a job starts)."""
    info = json.loads(response.json()["info"])
    return {**body, "seed": info["seed"], "subseed": info["subseed"]}


def _info(response) -> dict:
    info = json.loads(response.json()["info"])
    info.pop("job_timestamp")  # when the request was made: differs between any two runs
    return info


def _assert_as_alone(batched, alone) -> None:
    assert batched.status_code == 200, batched.text
    assert alone.status_code == 200, alone.text
    assert _info(batched) == _info(alone)
    got, want = batched.json()["images"], alone.json()["images"]
    assert len(got) == len(want) == 1
    a, b = decode(got[0]), decode(want[0])
    assert a.info["parameters"] == b.info["parameters"] == _info(alone)["infotexts"][0]
    assert int(np.abs(pixels(a) - pixels(b)).max()) <= PIXEL_TOLERANCE


def test_compatible_waiting_requests_run_as_one_batch_as_if_alone(server, runs, batching):
    bodies = [
        {**BASE, "prompt": "a red circle", "seed": 11},
        {**BASE, "prompt": "a blue square", "negative_prompt": "blurry", "seed": 12},
        {**BASE, "prompt": "a green (triangle:1.3)", "seed": -1},  # a random seed, fixed as it starts
        {**BASE, "prompt": "a red circle", "seed": 11, "subseed": 5},  # a variation seed without strength
    ]
    batched = _post_all(server, bodies)
    assert runs == [4]  # the engine ran once, with every job's picture
    for body, response in zip(bodies, batched, strict=True):
        assert response.status_code == 200, response.text
        seed = json.loads(response.json()["info"])["seed"]
        assert seed != -1 and (body["seed"] == -1 or seed == body["seed"])
    runs.clear()
    for body, response in zip(bodies, batched, strict=True):
        _assert_as_alone(response, _alone(server, _as_run(body, response)))
    assert runs == [1, 1, 1, 1]
    images = [r.json()["images"][0] for r in batched]
    assert len(set(images[:3])) == 3 and images[3] == images[0]  # a variation seed without strength changes nothing


def test_each_job_names_only_its_own_embeddings(server, runs, batching):
    import torch
    from safetensors.torch import save_file

    folder = server.root / "embeddings"
    folder.mkdir(exist_ok=True)
    save_file({"emb_params": torch.randn(2, 64)}, str(folder / "shiny.safetensors"))
    with client(server) as c:
        assert c.post("/sdapi/v1/refresh-embeddings").status_code == 200
    bodies = [{**BASE, "prompt": "a shiny circle", "seed": 7}, {**BASE, "prompt": "a circle", "seed": 8}]
    batched = _post_all(server, bodies)
    assert runs == [2]
    extra = [json.loads(r.json()["info"])["extra_generation_params"] for r in batched]
    assert extra[0]["TI hashes"].startswith("shiny: ") and "TI hashes" not in extra[1]
    for body, response in zip(bodies, batched, strict=True):
        _assert_as_alone(response, _alone(server, _as_run(body, response)))


def test_incompatible_requests_are_not_merged(server, runs, batching):
    bodies = [
        {**BASE, "seed": 1},
        {**BASE, "seed": 2, "prompt": "another prompt"},  # joins the first
        {**BASE, "seed": 3, "steps": 4},  # other steps: ends the batch, runs alone after it
        {**BASE, "seed": 4},
        {**BASE, "seed": 5, "override_settings": {"CLIP_stop_at_last_layers": 2}},  # another setting
        {**BASE, "seed": 6, "batch_size": 2},  # more than one picture
    ]
    responses = _post_all(server, bodies)
    assert [r.status_code for r in responses] == [200] * 6
    # [1, 2] together; 3 alone; 4 waits for nobody compatible (5 differs); 5 alone; 6 alone
    assert runs == [2, 1, 1, 1, 2]
    for body, response in zip(bodies, responses, strict=True):
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [body["seed"] + i for i in range(body.get("batch_size", 1))]
        assert info["steps"] == body["steps"]
    assert "Clip skip: 2" in json.loads(responses[4].json()["info"])["infotexts"][0]
    assert "Clip skip" not in json.loads(responses[3].json()["info"])["infotexts"][0]


def test_setting_off_runs_each_job_alone(server, runs):
    responses = _post_all(server, [{**BASE, "seed": s} for s in (1, 2, 3)])
    assert [r.status_code for r in responses] == [200] * 3
    assert runs == [1, 1, 1]


def test_batches_are_at_most_queue_batch_max(server, runs, batching, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_batch_max", 2)
    responses = _post_all(server, [{**BASE, "seed": s} for s in range(5)])
    assert [r.status_code for r in responses] == [200] * 5
    assert runs == [2, 2, 1]
    assert [json.loads(r.json()["info"])["seed"] for r in responses] == list(range(5))


def test_an_error_in_a_merged_batch_reaches_every_member(server, runs, batching, monkeypatch):
    inner = processing.process_images_inner

    def failing(p):
        if p.batch_size > 1:
            runs.append(p.batch_size)
            raise RuntimeError("the batch broke")
        return inner(p)

    monkeypatch.setattr(processing, "process_images_inner", failing)
    responses = _post_all(server, [{**BASE, "seed": s} for s in (1, 2, 3)])
    assert runs == [3]
    for r in responses:
        assert r.status_code == 500, r.text
        assert "RuntimeError: the batch broke" in r.text


def test_a_batch_that_runs_out_of_memory_runs_its_jobs_one_by_one(server, runs, batching, monkeypatch):
    inner = processing.process_images_inner  # the counting one: reached only by single jobs here
    tried: list[int] = []

    def small_memory(p):
        tried.append(p.batch_size)
        if p.batch_size > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return inner(p)

    monkeypatch.setattr(processing, "process_images_inner", small_memory)
    responses = _post_all(server, [{**BASE, "seed": s} for s in (1, 2)])
    assert set(tried[:-2]) == {2}  # the batch (the model loader may retry it once with offloading)
    assert runs == [1, 1]
    assert [json.loads(r.json()["info"])["seed"] for r in responses] == [1, 2]


def test_interrupting_one_member_runs_the_others_again_alone(server, runs, batching, monkeypatch):
    ids = [f"task(batch-{i})" for i in range(3)]
    slow = {**BASE, "steps": 200}
    bodies = [{**slow, "seed": 21 + i, "force_task_id": ids[i]} for i in range(3)]
    seen: dict = {}

    def watch() -> None:  # after the release: while the batch samples, stop its second job by id
        _wait_for(lambda: shared.state.sampling_step >= 2 and runs == [3], what="the batch to sample")
        seen["progress"] = [progress.progress_for(task) for task in ids]
        seen["running"] = [call_queue.queue.get(task).status for task in ids]
        with client(server) as c:
            assert c.post("/sdapi/v1/interrupt", json={"id_task": ids[1]}).json() == {}

    watcher = threading.Thread(target=watch, daemon=True)
    responses = _post_all(server, bodies, before_release=watcher.start)
    watcher.join(60)
    assert seen["running"] == ["running"] * 3
    assert all(p["active"] for p in seen["progress"])  # every job of the batch shows the batch's progress
    assert runs == [3, 1, 1]  # the batch, then the two that did not ask, alone and in full
    assert [r.status_code for r in responses] == [200] * 3
    stopped = json.loads(responses[1].json()["info"])
    assert stopped["all_seeds"] == [22]  # the one that asked: what the stopped batch made of its picture
    for i in (0, 2):
        info = json.loads(responses[i].json()["info"])
        assert info["all_seeds"] == [21 + i] and "Steps: 200" in info["infotexts"][0]
    # the answer leaves as the result is set; the job reads "done" a moment later (CI saw "running" once)
    _wait_for(lambda: [call_queue.queue.get(t).status for t in ids] == ["done"] * 3, what="the jobs to read done")


def test_a_global_interrupt_stops_the_whole_batch(server, runs, batching):
    bodies = [{**BASE, "steps": 200, "seed": s} for s in (1, 2)]

    def interrupt() -> None:
        _wait_for(lambda: shared.state.sampling_step >= 2 and runs == [2], what="the batch to sample")
        shared.state.interrupt()

    watcher = threading.Thread(target=interrupt, daemon=True)
    responses = _post_all(server, bodies, before_release=watcher.start)
    watcher.join(60)
    assert runs == [2]  # nobody runs again: the stop was for the running job, which was all of them
    assert [r.status_code for r in responses] == [200] * 2


# --- the rule, on request objects (no engine) ---------------------------------------------------------------


def _p(**kwargs):
    fields = {"prompt": "cat", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1,
              "do_not_save_samples": True, "do_not_save_grid": True, **kwargs}
    return processing.StableDiffusionProcessingTxt2Img(**fields)


def test_which_requests_may_share_a_batch():
    assert job_batching.why_alone(_p()) is None
    assert job_batching.compatible(_p(prompt="a", seed=1), _p(prompt="b", negative_prompt="x", seed=-1))
    for kwargs in ({"batch_size": 2}, {"n_iter": 2}, {"enable_hr": True}, {"do_not_save_samples": False},
                   {"refiner_checkpoint": "other", "refiner_switch_at": 0.5}, {"prompt": ["a", "b"]}):
        assert job_batching.why_alone(_p(**kwargs)) is not None, kwargs
    img2img = processing.StableDiffusionProcessingImg2Img(prompt="cat", do_not_save_samples=True,
                                                          do_not_save_grid=True)
    assert job_batching.why_alone(img2img) is not None  # txt2img only, for now
    for kwargs in ({"steps": 4}, {"width": 72}, {"cfg_scale": 5.0}, {"sampler_name": "DDIM"},
                   {"scheduler": "Karras"}, {"override_settings": {"CLIP_stop_at_last_layers": 2}},
                   {"subseed_strength": 0.5}, {"styles": ["x"]}, {"tiling": True}):
        assert not job_batching.compatible(_p(), _p(**kwargs)), kwargs
    # LoRA tags apply to a whole batch (A1111): only identical tags share one
    assert job_batching.compatible(_p(prompt="<lora:a:1> cat"), _p(prompt="dog <lora:a:1>"))
    assert not job_batching.compatible(_p(prompt="<lora:a:1> cat"), _p(prompt="<lora:a:0.5> cat"))
    assert not job_batching.compatible(_p(prompt="<lora:a:1> cat"), _p(prompt="cat"))


def test_requests_with_script_arguments_run_alone():
    from modules import scripts

    p = _p()
    p.scripts = scripts.scripts_txt2img
    p.script_args = scripts.scripts_txt2img.default_args()
    assert job_batching.why_alone(p) is None
    p.script_args = [1, *p.script_args[1:]]  # a selected script
    assert job_batching.why_alone(p) is not None
