"""The /internal/progress logic (modules.progress) over the job queue and shared.state."""

from __future__ import annotations

import base64
import io
import threading

import pytest
from PIL import Image

from modules import call_queue, progress, shared
from modules.call_queue import JobFailed, JobQueue

TIMEOUT = 5.0
KEYS = {"active", "queued", "completed", "progress", "eta", "live_preview", "id_live_preview", "textinfo",
        "queue_position"}


@pytest.fixture
def jq(monkeypatch):
    q = JobQueue()
    monkeypatch.setattr(call_queue, "queue", q)
    monkeypatch.setitem(shared.opts.data, "live_previews_enable", True)
    monkeypatch.setitem(shared.opts.data, "live_previews_image_format", "png")
    yield q
    q.shutdown(timeout=TIMEOUT)


def held_job(q: JobQueue, setup=None):
    """A running job that (optionally) sets up shared.state, then waits until released."""
    started, release = threading.Event(), threading.Event()

    def fn() -> str:
        if setup is not None:
            setup(shared.state)
        started.set()
        assert release.wait(TIMEOUT)
        return "ok"

    job = q.submit("txt2img", fn)
    assert started.wait(TIMEOUT)
    return job, release


def decode(uri: str) -> Image.Image:
    head, data = uri.split(",", 1)
    assert head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_an_unknown_id_is_waiting_not_an_error(jq):
    out = progress.progress_for("task(txt2img-notsubmittedyet)")
    assert set(out) == KEYS
    assert out == {
        "active": False, "queued": False, "completed": False, "progress": None, "eta": None,
        "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting...", "queue_position": 0,
    }


def test_queued_tasks_report_their_place(jq):
    running, release = held_job(jq)
    first = jq.submit("txt2img", lambda: 1)
    second = jq.submit("img2img", lambda: 2)
    out = progress.progress_for(second.id)
    assert out["queued"] is True and out["active"] is False and out["completed"] is False
    assert out["queue_position"] == 2 and out["textinfo"] == "In queue: 2/2"
    assert progress.progress_for(first.id)["queue_position"] == 1
    assert progress.pending_tasks() == [first.id, second.id]
    assert progress.current_task() == running.id
    release.set()
    second.wait(TIMEOUT)
    assert progress.pending_tasks() == [] and progress.current_task() is None


def test_a_running_task_reports_progress_eta_and_textinfo(jq):
    def setup(state) -> None:
        state.job_count, state.job_no = 2, 1
        state.sampling_steps, state.sampling_step = 10, 5
        state.textinfo = "Sampling"

    job, release = held_job(jq, setup)
    out = progress.progress_for(job.id, live_preview=False)
    assert out["active"] is True and out["queued"] is False and out["completed"] is False
    assert out["progress"] == pytest.approx(0.01 + 0.5 + 0.25)
    assert out["eta"] is not None and out["eta"] >= 0
    assert out["textinfo"] == "Sampling" and out["queue_position"] == 0 and out["live_preview"] is None
    release.set()
    job.wait(TIMEOUT)


def test_eta_is_unknown_until_the_job_count_is(jq):
    job, release = held_job(jq)  # begin() leaves job_count at -1
    out = progress.progress_for(job.id)
    assert out["active"] is True and out["eta"] is None and 0 < out["progress"] < 1
    release.set()
    job.wait(TIMEOUT)


def test_live_preview_is_sent_only_when_it_changed(jq, monkeypatch):
    job, release = held_job(jq, lambda state: state.assign_current_image(Image.new("RGB", (8, 8), "red")))
    first = progress.progress_for(job.id, id_live_preview=-1)
    assert first["live_preview"].startswith("data:image/png;base64,")
    assert decode(first["live_preview"]).getpixel((0, 0)) == (255, 0, 0)
    assert first["id_live_preview"] == shared.state.id_live_preview

    again = progress.progress_for(job.id, id_live_preview=first["id_live_preview"])
    assert again["live_preview"] is None and again["id_live_preview"] == first["id_live_preview"]

    monkeypatch.setitem(shared.opts.data, "live_previews_image_format", "jpeg")
    shared.state.assign_current_image(Image.new("RGBA", (8, 8), "blue"))
    jpeg = progress.progress_for(job.id, id_live_preview=first["id_live_preview"])
    assert jpeg["live_preview"].startswith("data:image/jpeg;base64,")
    assert decode(jpeg["live_preview"]).format == "JPEG"
    assert jpeg["id_live_preview"] == first["id_live_preview"] + 1

    assert progress.progress_for(job.id, live_preview=False)["live_preview"] is None
    monkeypatch.setitem(shared.opts.data, "live_previews_enable", False)
    assert progress.progress_for(job.id)["live_preview"] is None
    release.set()
    job.wait(TIMEOUT)


def test_completed_failed_and_cancelled_tasks(jq):
    done = jq.submit("txt2img", lambda: "image")
    done.wait(TIMEOUT)
    out = progress.progress_for(done.id)
    assert out["completed"] is True and out["active"] is False and out["queued"] is False
    assert out["progress"] == 1.0 and out["textinfo"] is None

    def bad() -> None:
        raise ValueError("Unknown sampler: Foo")

    failed = jq.submit("txt2img", bad)
    with pytest.raises(JobFailed):
        failed.wait(TIMEOUT)
    out = progress.progress_for(failed.id)
    assert out["completed"] is True and out["textinfo"] == "Unknown sampler: Foo"

    running, release = held_job(jq)
    cancelled = jq.submit("txt2img", lambda: None)
    cancelled.cancel()
    out = progress.progress_for(cancelled.id)
    assert out["completed"] is True and out["queued"] is False and out["textinfo"] == "Cancelled"
    release.set()
    running.wait(TIMEOUT)


def test_the_ui_task_id_is_the_one_progress_reports_on(jq):
    seen = {}

    def generate(id_task: str) -> tuple[str, str]:
        seen.update(progress.progress_for(id_task, live_preview=False))
        return "image", ""

    wrapped = call_queue.wrap_gradio_gpu_call(generate)
    assert wrapped("task(txt2img-fromthebrowser1)") == ("image", "")
    assert seen["active"] is True
    assert progress.progress_for("task(txt2img-fromthebrowser1)")["completed"] is True


def test_encode_preview_formats():
    image = Image.new("RGB", (300, 300), "green")
    assert progress.encode_preview(image, "webp").startswith("data:image/webp;base64,")
    assert decode(progress.encode_preview(image, "png")).size == (300, 300)
    assert progress.encode_preview(image, "unknown").startswith("data:image/png;base64,")
