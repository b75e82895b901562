"""--ray on one machine: the front door's API in front of a local Ray cluster with two CPU replicas of the bundled
model. Twenty clients at once with a replica killed (kill -9) mid-run; progress, live preview, interrupt and
skip of one task on its replica; model affinity; settings reaching the replicas; failures answered as the
single-process server answers them. Skipped, with the reason, when Ray is not installed."""

from __future__ import annotations

import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_api_support import b64_png, client, decode
from test_ray_serve_support import FAST, OTHER, front_door, params_of, running_replicas, wait_for

from modules import call_queue, processing, scripts, shared
from modules.serve import affinity

CLIENTS = 20

# a 2-core CI machine running a Ray cluster of several processes can be slow: wait long, never hang
RAY_TIMEOUT = 600


@pytest.fixture(scope="module")
def door(tmp_path_factory, isolated_data_dir):
    with front_door(tmp_path_factory.mktemp("ray-local"), isolated_data_dir) as running:
        yield running


@pytest.fixture
def http(door):
    with client(door.server, timeout=RAY_TIMEOUT) as c:
        yield c


def _in_background(door, body: dict) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        with client(door.server, timeout=RAY_TIMEOUT) as c:
            out["response"] = c.post("/sdapi/v1/txt2img", json=body)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_twenty_clients_and_a_replica_killed_mid_run(door, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", CLIENTS)  # one address: count them apart
    queue = door.queue
    retried_before = queue.retried
    barrier = threading.Barrier(CLIENTS)

    def one(i: int) -> tuple[int, dict]:
        body = {**FAST, "steps": 24, "prompt": f"client number {i}", "seed": 1000 + i,
                "force_task_id": f"task(ray-client-{i})"}
        with client(door.server, timeout=RAY_TIMEOUT) as c:
            barrier.wait()
            r = c.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return i, r.json()

    killed: dict = {}

    def kill_one_mid_job() -> None:
        def victim():  # a job that is sampling on its replica right now
            for job in queue.running():
                state = getattr(job, "progress_state", None)
                if getattr(job, "replica_pid", None) and state is not None and state.sampling_step >= 2:
                    return job
            return None

        job = wait_for(victim, what="a job sampling on a replica")
        killed.update(task=job.id, pid=job.replica_pid, replica=job.replica)
        os.kill(job.replica_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_one_mid_job, daemon=True)
    killer.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(CLIENTS)))
    killer.join(5)

    assert killed, "no replica was killed"
    assert queue.retried == retried_before + 1  # the killed job ran again elsewhere, and only that one
    pictures = set()
    for i, body in results:
        assert len(body["images"]) == 1
        params, info = params_of(body)
        assert params["Prompt"] == f"client number {i}" and params["Seed"] == str(1000 + i)
        assert info["seed"] == 1000 + i and info["all_seeds"] == [1000 + i] and info["prompt"] == f"client number {i}"
        assert params["Model"] == "default-shapes-v1"
        pictures.add(body["images"][0])
    assert len(pictures) == CLIENTS  # twenty seeds, twenty pictures: nothing lost, doubled or swapped
    ran_on = {r for i in range(CLIENTS) for r in queue.get(f"task(ray-client-{i})").replicas}
    assert len(ran_on) >= 2  # the work was shared (and a replacement replica may have joined in)
    assert queue.get(killed["task"]).replicas == [killed["replica"], queue.get(killed["task"]).replica]
    assert queue.get(killed["task"]).replica != killed["replica"]  # it finished on another replica
    assert all(len(queue.get(f"task(ray-client-{i})").replicas) == 1 for i in range(CLIENTS)
               if f"task(ray-client-{i})" != killed["task"])  # every other job ran once

    # Ray brings the killed replica back: two running again, a new process in place of the killed one.
    wait_for(lambda: running_replicas().get("RUNNING") == 2, timeout=120, what="Ray to restart the replica")
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)


def test_progress_preview_skip_and_interrupt_reach_the_replica_of_that_task(door, http):
    slow = {**FAST, "steps": 400, "n_iter": 2, "seed": 7}
    task, other_task = "task(ray-slow)", "task(ray-beside)"
    thread, out = _in_background(door, {**slow, "force_task_id": task})
    beside, beside_out = _in_background(door, {**FAST, "steps": 30, "seed": 8, "force_task_id": other_task})

    def running():
        p = http.post("/internal/progress", json={"id_task": task, "id_live_preview": -1}).json()
        return p if p["active"] and p["live_preview"] and p["progress"] > 0.01 else None

    p = wait_for(running, what="the slow task to sample with a preview")
    assert p["live_preview"].startswith("data:image/png;base64,") and p["id_live_preview"] > 0
    assert 0 < p["progress"] < 0.5 and "eta" in p
    job = door.queue.get(task)
    assert job.progress_state.job_count == 2 and job.progress_state.job_no == 0

    # Skip: this task leaves its first picture and goes on with the second (400 steps would take minutes).
    from modules.ui import tasks

    with tasks._lock:
        tasks._session_jobs["ray-session"] = job
    tasks.skip("ray-session")
    wait_for(lambda: job.progress_state.job_no == 1, timeout=30, what="the skip to reach the replica")

    assert http.post("/sdapi/v1/interrupt", json={"id_task": task}).json() == {}
    thread.join(30)
    r = out["response"]
    assert r.status_code == 200, r.text  # as in A1111: an interrupted job answers with what it made
    assert r.json()["parameters"]["seed"] == 7

    beside.join(60)  # the job on the other replica was neither skipped nor interrupted
    rb = beside_out["response"]
    assert rb.status_code == 200, rb.text
    assert not door.queue.get(other_task).progress_state.interrupted
    assert params_of(rb.json())[0]["Steps"] == "30"
    assert http.post("/internal/progress", json={"id_task": task}).json()["completed"] is True


def test_a_job_goes_to_the_replica_that_holds_its_checkpoint(door):
    """Pairs of jobs at once, one on each checkpoint: after the first pair each replica keeps its own model."""
    def pair(round_no: int) -> list[dict]:
        bodies = [{**FAST, "seed": 300 + round_no, "prompt": "a blue square"},
                  {**FAST, "seed": 400 + round_no, "prompt": "a green circle",
                   "override_settings": {"sd_model_checkpoint": OTHER}}]
        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda b: _post(door, b), bodies))
        return [r.json() for r in responses]

    loads_before = _loads()
    rounds = 6
    for n in range(rounds):
        bundled, other = pair(n)
        assert params_of(bundled)[0]["Model"] == "default-shapes-v1"
        assert params_of(other)[0]["Model"] == "other"
    switches = _loads() - loads_before
    # Affinity: one replica switches to the other checkpoint once, then every job finds its model in place.
    # (Without it, each pair would switch one replica or the other about half of the time: ~rounds switches.)
    assert switches <= 2, f"{switches} checkpoint switches for {rounds} rounds"


def _post(door, body: dict):
    with client(door.server, timeout=RAY_TIMEOUT) as c:
        r = c.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r


def _loads() -> int:
    return affinity.switches()


def test_the_front_door_holds_no_model_and_its_settings_reach_the_replicas(door, http):
    assert shared.sd_model is None
    r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": OTHER})
    assert r.status_code == 200, r.text
    wait_for(lambda: shared.sd_model is None, timeout=10, what="the front door to drop the checkpoint it checked")
    try:
        body = _post(door, {**FAST, "seed": 55}).json()
        assert params_of(body)[0]["Model"] == "other"
    finally:
        assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "default-shapes-v1"}).status_code == 200
    assert params_of(_post(door, {**FAST, "seed": 56}).json())[0]["Model"] == "default-shapes-v1"


def test_a_ui_job_runs_on_a_replica_with_its_progress_in_the_page(monkeypatch):
    from modules.ui import tasks

    monkeypatch.setitem(shared.opts.data, "live_preview_refresh_period", 100)  # a short job still shows a bar

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a yellow square", steps=40, width=64, height=64,
                                                    sampler_name="Euler", seed=77, do_not_save_samples=True,
                                                    do_not_save_grid=True)
    p.scripts, p.script_args = scripts.scripts_txt2img, scripts.scripts_txt2img.default_args()
    updates = list(tasks.run("txt2img", lambda: scripts.process_request(p), "ray-ui-session"))
    assert updates[-1].finished and updates[-1].error is None, updates[-1].error
    processed = updates[-1].result
    assert processed.seed == 77 and "Seed: 77" in processed.infotexts[0]
    assert decode_ok(processed.images[0])
    shown = [int(m.group(1)) for u in updates[:-1] if (m := re.search(r"(\d+)% ETA", u.progress_html))]
    assert shown and max(shown) > 0  # the page's bar moved while the replica sampled


def decode_ok(image) -> bool:
    return image.size == (64, 64) and image.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_a_failure_on_a_replica_reads_as_it_does_without_ray():
    from modules import request_validation

    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=4, width=64, height=60, sampler_name="Euler")
    with pytest.raises(ValueError) as local:  # what the single-process server says
        request_validation.validate(p, is_api=False)
    job = call_queue.queue.submit("txt2img", lambda: processing.process_images(p))
    with pytest.raises(call_queue.JobFailed) as remote:
        job.wait(60)
    assert remote.value.message == str(local.value)


def test_a_hires_fix_job_runs_both_passes_on_its_replica(http):
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
                                            "denoising_strength": 0.5, "hr_second_pass_steps": 2, "steps": 2})
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (128, 128)
    assert float(params_of(r.json())[0]["Hires upscale"]) == 2


def test_a_script_runs_on_the_replica_with_its_arguments_where_the_front_door_put_them(http):
    """Prompt matrix over the API: the script's run (and the grid) on the replica, from A1111's script_args."""
    r = http.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cat|red|blue", "seed": 21,
                                            "script_name": "prompt matrix",
                                            "script_args": [False, False, "positive", "comma", 0]})
    assert r.status_code == 200, r.text
    info = params_of(r.json())[1]
    assert info["all_prompts"] == ["a cat", "a cat, red", "a cat, blue", "a cat, red, blue"]
    assert info["all_seeds"] == [21] * 4 and len(r.json()["images"]) == 5  # the grid first, then four pictures


def test_an_extras_job_runs_on_a_replica(http, monkeypatch):
    from PIL import Image

    from modules import postprocessing

    def not_here(request):
        raise AssertionError("Extras ran in the front door")

    monkeypatch.setattr(postprocessing, "run_request", not_here)  # the replicas' processes keep the real one
    body = {"image": b64_png(Image.new("RGB", (24, 16), (200, 30, 60))), "upscaling_resize": 2, "upscaler_1": "Nearest"}
    r = http.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    result = decode(r.json()["image"])
    assert result.size == (48, 32) and result.getpixel((5, 5))[:3] == (200, 30, 60)
    assert "Postprocess upscaler: Nearest" in r.json()["html_info"]
