"""The queue is bounded and fair (issue 11): limits on waiting jobs in total and per client and on the work of one
request, refused with 429/413 naming the setting; a job whose client went away is cancelled (HTTP disconnect,
closed browser tab); waiting img2img requests hold only what they were sent, and at most `queue_max_waiting_mb`
of it; running out of RAM reads like running out of GPU memory."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi import APIRouter, FastAPI, Request
from PIL import Image
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, b64_png, client, serving

from modules import call_queue, processing, shared
from modules.api import errors, generation, images, jobs
from modules.api.auth import BasicAuth
from modules.api.routing import make_route_class
from modules.api.server import create_app
from modules.call_queue import JobQueue
from modules.ui import tasks

TIMEOUT = 30.0
DISCONNECT_SECONDS = 3.0  # a job whose client left is cancelled within this (the route checks twice a second)


def _wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def holding(q: JobQueue) -> Iterator[call_queue.Job]:
    """A job that holds `q` (so what is submitted next waits) until the block ends."""
    started, release = threading.Event(), threading.Event()
    job = q.submit("gate", lambda: started.set() or release.wait(TIMEOUT))
    assert started.wait(TIMEOUT)
    try:
        yield job
    finally:
        release.set()
        job.wait(TIMEOUT)


def _in_background(c: httpx.Client, path: str, body: dict) -> tuple[threading.Thread, dict]:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(response=c.post(path, json=body)), daemon=True)
    thread.start()
    return thread, out


def _raw_post(port: int, path: str, body: dict) -> socket.socket:
    """A client that sends a request and never reads the answer: close the socket to 'go away'."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


def _until_interrupted(limit: float = TIMEOUT) -> str:
    """A job that runs until interrupted, as a sampling loop does; how it ended also goes to ENDED."""
    deadline = time.monotonic() + limit
    while not shared.state.interrupted and time.monotonic() < deadline:
        time.sleep(0.01)
    ENDED.append("interrupted" if shared.state.interrupted else "ran to the end")
    return ENDED[-1]


ENDED: list[str] = []


@pytest.fixture
def fresh_queue(monkeypatch) -> Iterator[JobQueue]:
    q = JobQueue()
    monkeypatch.setattr(call_queue, "queue", q)
    ENDED.clear()
    yield q
    q.shutdown(timeout=TIMEOUT)
    shared.state.interrupted = False


# --- the UI: refusals and closed tabs ---


def test_the_ui_gets_a_queue_refusal_as_a_readable_error(fresh_queue, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs", 1)
    with holding(fresh_queue):
        fresh_queue.submit("t", lambda: None)
        updates = list(tasks.run("txt2img", lambda: "never", "tab-full"))
    assert len(updates) == 1 and updates[0].finished and updates[0].result is None
    assert "The queue is full" in updates[0].error and "(setting queue_max_jobs)" in updates[0].error


def test_one_browser_tab_or_user_is_one_client(fresh_queue, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", 1)
    with holding(fresh_queue):
        first = tasks.run("txt2img", lambda: "a", "tab-a")
        assert not next(first).finished  # queued, showing its place
        refused = list(tasks.run("txt2img", lambda: "a again", "tab-a"))
        assert "(setting queue_max_jobs_per_client)" in refused[0].error
        other_tab = tasks.run("txt2img", lambda: "b", "tab-b")
        assert not next(other_tab).finished
        by_user = tasks.run("txt2img", lambda: "u", "tab-c", user="ann")
        assert not next(by_user).finished
        assert "queue_max_jobs_per_client" in list(tasks.run("txt2img", lambda: "u2", "tab-d", user="ann"))[0].error
    assert [list(g)[-1].result for g in (first, other_tab, by_user)] == ["a", "b", "u"]


def test_closing_the_stream_of_a_waiting_job_takes_it_out_of_the_queue(fresh_queue):
    ran = []
    with holding(fresh_queue):
        stream = tasks.run("txt2img", lambda: ran.append("ran"), "tab-closed")
        assert not next(stream).finished
        job = tasks.job_of("tab-closed")
        assert job.status == "queued" and fresh_queue.pending() == [job]
        stream.close()  # what gradio does when the tab goes away
        assert job.status == "cancelled" and fresh_queue.pending() == []
    assert ran == []


def test_dropping_the_stream_of_a_waiting_job_cancels_it_too(fresh_queue):
    with holding(fresh_queue):
        stream = tasks.run("txt2img", lambda: "never", "tab-dropped")
        next(stream)
        job = tasks.job_of("tab-dropped")
        del stream  # gradio may simply drop the iterator: closing it runs the same clean-up
        gc.collect()
        assert job.status == "cancelled"


def test_closing_the_stream_of_a_running_job_interrupts_only_that_job(fresh_queue):
    stream = tasks.run("txt2img", _until_interrupted, "tab-running")
    next(stream)
    job = tasks.job_of("tab-running")
    _wait_for(lambda: job.status == "running", what="the job to start")
    after = fresh_queue.submit("t", lambda: shared.state.interrupted)
    started = time.monotonic()
    stream.close()
    assert job.wait(TIMEOUT) == "interrupted" and time.monotonic() - started < DISCONNECT_SECONDS
    assert after.wait(TIMEOUT) is False  # the next job was not interrupted


# --- the HTTP machinery: jobs.run watching its request, on a real server ---


def _route_app(q: JobQueue, auth: BasicAuth | None = None) -> FastAPI:
    """The API's own route class (auth, error JSON) with a route that runs a job through `jobs.run`."""
    app = FastAPI()
    errors.install_handlers(app)
    router = APIRouter(route_class=make_route_class(auth, False))

    async def work(request: Request, long: bool = False) -> dict:
        fn = _until_interrupted if long else (lambda: "quick")
        return {"result": await jobs.run(q, "test", fn, request=request)}

    router.add_api_route("/work", work, methods=["POST"])
    app.include_router(router)
    return app


@pytest.fixture
def route_server(fresh_queue) -> Iterator:
    with serving(_route_app(fresh_queue)) as running:
        yield running


def test_a_waiting_request_whose_client_left_leaves_the_queue(fresh_queue, route_server):
    with holding(fresh_queue):
        sock = _raw_post(route_server.port, "/work", {})
        job = _wait_for(lambda: (fresh_queue.pending() or [None])[0], what="the request's job to queue")
        sock.close()
        _wait_for(lambda: job.status == "cancelled", DISCONNECT_SECONDS, "the job to be cancelled")
        assert fresh_queue.pending() == []


def test_a_running_request_whose_client_left_is_interrupted(fresh_queue, route_server):
    sock = _raw_post(route_server.port, "/work?long=true", {})
    job = _wait_for(fresh_queue.current, what="the job to run")
    after = fresh_queue.submit("t", lambda: shared.state.interrupted)
    sock.close()
    job.wait(DISCONNECT_SECONDS)
    assert ENDED == ["interrupted"]
    assert after.wait(TIMEOUT) is False  # only that job was interrupted


def test_a_request_cancelled_by_its_own_client_still_answers(fresh_queue, route_server):
    with client(route_server) as c:
        with holding(fresh_queue):
            thread, out = _in_background(c, "/work", {})
            job = _wait_for(lambda: (fresh_queue.pending() or [None])[0], what="the request's job to queue")
            job.cancel()
            thread.join(TIMEOUT)
        assert_error_json(out["response"], 409)


def test_the_per_client_limit_tells_api_users_apart(fresh_queue, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", 1)
    auth = BasicAuth([("alice", "a-pass"), ("bob", "b-pass")])
    with serving(_route_app(fresh_queue, auth)) as srv, \
            client(srv, auth=("alice", "a-pass")) as alice, client(srv, auth=("bob", "b-pass")) as bob:
        with holding(fresh_queue):
            thread_a, out_a = _in_background(alice, "/work", {})
            _wait_for(lambda: len(fresh_queue.pending()) == 1, what="alice's job")
            body = assert_error_json(alice.post("/work"), 429)
            assert "(setting queue_max_jobs_per_client)" in body["detail"]
            thread_b, out_b = _in_background(bob, "/work", {})  # another user: accepted
            _wait_for(lambda: len(fresh_queue.pending()) == 2, what="bob's job")
        for thread, out in ((thread_a, out_a), (thread_b, out_b)):
            thread.join(TIMEOUT)
            assert out["response"].json() == {"result": "quick"}


def test_without_auth_the_per_client_limit_goes_by_address(fresh_queue, route_server, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs_per_client", 1)
    other = httpx.HTTPTransport(local_address="127.0.0.2")  # all of 127/8 is this machine
    with client(route_server) as one, client(route_server, transport=other) as two:
        with holding(fresh_queue):
            thread_1, out_1 = _in_background(one, "/work", {})
            _wait_for(lambda: len(fresh_queue.pending()) == 1, what="the first address's job")
            forged = one.post("/work", headers={"Authorization": "Basic bWFsbG9yeTp4"})  # no auth: proves nothing
            assert_error_json(forged, 429)
            thread_2, out_2 = _in_background(two, "/work", {})
            _wait_for(lambda: len(fresh_queue.pending()) == 2, what="the second address's job")
        for thread, out in ((thread_1, out_1), (thread_2, out_2)):
            thread.join(TIMEOUT)
            assert out["response"].status_code == 200


# --- the API with a tiny model ---


@pytest.fixture(scope="module")
def server(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-limits"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running:
            yield running


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with client(server) as c:
        yield c


def test_a_full_queue_refuses_with_429_naming_the_limit(server, http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_jobs", 2)
    waiting = []
    with holding(call_queue.queue):
        for seed in (1, 2):
            waiting.append(_in_background(http, "/sdapi/v1/txt2img", {**FAST, "seed": seed}))
            _wait_for(lambda n=seed: len(call_queue.queue.pending()) == n, what="a request to queue")
        body = assert_error_json(http.post("/sdapi/v1/txt2img", json=FAST), 429)
        assert body["error"] == "HTTPException"
        assert "2 jobs are waiting" in body["detail"] and "(setting queue_max_jobs)" in body["detail"]
    for thread, out in waiting:
        thread.join(TIMEOUT)
        assert out["response"].status_code == 200, out["response"].text


def test_too_much_work_in_one_request_is_413_naming_api_max_work(server, http, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_work", 1)  # megapixel-steps
    over = {**FAST, "steps": 250}  # 64 × 64 × 250 / 1e6 = 1.02
    body = assert_error_json(http.post("/sdapi/v1/txt2img", json=over), 413)
    assert "1.02 megapixel-steps" in body["detail"] and "(setting api_max_work)" in body["detail"]
    batch = {**FAST, "steps": 20, "batch_size": 4, "n_iter": 4}  # each field within its own limit: 1.31
    assert_error_json(http.post("/sdapi/v1/txt2img", json=batch), 413, "api_max_work")
    img2img = {**over, "init_images": [b64_png(Image.new("RGB", (64, 64)))]}
    assert_error_json(http.post("/sdapi/v1/img2img", json=img2img), 413, "api_max_work")

    task = "task(just-under-the-work-limit)"  # 64 × 64 × 244 / 1e6 = 0.9994: accepted, and runs
    thread, out = _in_background(http, "/sdapi/v1/txt2img", {**FAST, "steps": 244, "force_task_id": task})
    _wait_for(lambda: http.get("/sdapi/v1/progress").json()["current_task"] == task, what="the job to run")
    http.post("/sdapi/v1/interrupt", json={"id_task": task})
    thread.join(TIMEOUT)
    assert out["response"].status_code == 200, out["response"].text


def test_running_out_of_ram_is_a_readable_503_and_the_server_goes_on(server, http, monkeypatch):
    def out_of_ram(p):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)")

    with monkeypatch.context() as patch:
        patch.setattr(processing, "process_images", out_of_ram)
        body = assert_error_json(http.post("/sdapi/v1/txt2img", json=FAST), 503)
    assert body["detail"] == "Out of memory (RAM): try a smaller size or batch"
    r = http.post("/sdapi/v1/txt2img", json=FAST)
    assert r.status_code == 200, r.text


def _noise_png(size: int, seed: int) -> str:
    """Base64 of a PNG of noise: it does not compress, so its file is about as large as its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return b64_png(Image.open(buffer))


def _live(cls: type) -> list:
    gc.collect()
    return [o for o in gc.get_objects() if issubclass(type(o), cls)]  # type(): no proxy attribute look-ups


def test_waiting_img2img_requests_hold_only_what_they_sent_and_at_most_the_limit(server, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_waiting_mb", 24)
    uploads = [_noise_png(768, seed) for seed in range(3)]  # 3 × ~2.3 MB of base64 per request
    sent = sum(len(u) for u in uploads)
    body = {**FAST, "init_images": uploads, "denoising_strength": 0.5}
    fits = 24 * 2**20 // sent  # requests let in before the limit
    assert 2 <= fits < 20
    clients = [client(server) for _ in range(20)]
    try:
        with holding(call_queue.queue):
            running = [_in_background(c, "/sdapi/v1/img2img", body) for c in clients]
            _wait_for(lambda: len(call_queue.queue.pending()) == fits, what="the requests that fit to queue")
            refused = _wait_for(lambda: [o["response"] for _, o in running if "response" in o]
                                if sum("response" in o for _, o in running) == 20 - fits else None,
                                what="the other requests to be refused")
            for r in refused:
                detail = assert_error_json(r, 429)["detail"]
                assert "(setting queue_max_waiting_mb)" in detail and "MB of uploaded images" in detail
            assert generation.waiting_uploads.held == fits * sent
            waiting = _live(generation.Prepared)
            assert len(waiting) == fits
            for prepared in waiting:  # the base64 text as sent: no decoded bytes, no pixels
                held = prepared.args["init_images"]
                assert all(isinstance(i, images.CheckedImage) and isinstance(i.text, str) for i in held)
                assert [i.text for i in held] == uploads and [i.size for i in held] == [(768, 768)] * 3
            assert not [im for im in _live(Image.Image) if im.size == (768, 768)]
        for thread, _ in running:
            thread.join(TIMEOUT)
        assert sorted(o["response"].status_code for _, o in running) == [200] * fits + [429] * (20 - fits)
        assert generation.waiting_uploads.held == 0  # running gave the share back
    finally:
        for c in clients:
            c.close()


def test_the_waiting_uploads_bound_lets_one_request_in_and_counts_cancelled_ones_out(monkeypatch):
    monkeypatch.setitem(shared.opts.data, "queue_max_waiting_mb", 1)
    ledger = generation.WaitingUploads()
    release = ledger.reserve(5 * 2**20)  # alone in the queue: larger than the limit, still let in
    with pytest.raises(errors.ApiError) as info:
        ledger.reserve(1)
    assert info.value.status_code == 429 and "queue_max_waiting_mb" in info.value.detail
    release()
    release()  # twice is harmless
    assert ledger.held == 0

    monkeypatch.setattr(generation, "waiting_uploads", ledger)
    prepared = generation.Prepared(None, {}, None, ledger.reserve(100))  # a request that never runs
    assert ledger.held == 100
    del prepared
    gc.collect()
    assert ledger.held == 0
