"""Job progress and control flags (modules.shared_state, reachable as modules.shared.state)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from modules import shared
from modules.shared_state import State


@pytest.fixture
def opts(monkeypatch):
    """Set settings for one test."""

    def set_opts(**values) -> None:
        for key, value in values.items():
            monkeypatch.setitem(shared.opts.data, key, value)

    set_opts(live_previews_enable=True, show_progress_every_n_steps=10, live_previews_image_format="png")
    return set_opts


def test_shared_state_is_a_state_and_importing_it_pulls_in_no_torch():
    assert isinstance(shared.state, State)
    code = "import sys, modules.shared as s; print(type(s.state).__name__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["State", "False"]


def test_dict_has_the_progress_api_shape():
    state = State()
    assert state.dict() == {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    assert state.server_start is not None


def test_begin_resets_flags_and_end_clears_the_job():
    state = State()
    state.interrupt()
    state.skip()
    state.stop_generating()
    state.textinfo = "old"
    state.begin(job="txt2img")
    assert (state.interrupted, state.skipped, state.stopping_generation) == (False, False, False)
    assert state.job == "txt2img" and state.job_count == -1 and state.job_no == 0
    assert state.textinfo is None and state.current_image is None and state.id_live_preview == 0
    assert len(state.job_timestamp) == 14 and state.job_timestamp.isdigit()
    assert state.time_start is not None
    state.end()
    assert state.job == "" and state.job_count == 0


def test_flags_are_set_by_interrupt_skip_and_stop():
    state = State()
    state.begin()
    state.skip()
    assert state.skipped and not state.interrupted
    state.interrupt()
    assert state.interrupted
    state.stop_generating()
    assert state.stopping_generation
    assert state.dict()["interrupted"] is True


def test_interrupt_from_another_thread_is_seen_by_a_polling_loop():
    state = State()
    state.begin()
    started, seen = threading.Event(), threading.Event()

    def loop() -> None:  # the engine's per-step check
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if state.interrupted:
                seen.set()
                return
            state.sampling_step += 1

    worker = threading.Thread(target=loop)
    worker.start()
    started.wait()
    state.interrupt()
    worker.join(timeout=10)
    assert seen.is_set()


def test_nextjob_moves_on_and_resets_the_step(opts):
    state = State()
    state.begin()
    state.job_count = 3
    state.sampling_step = 7
    state.current_image_sampling_step = 5
    state.nextjob()
    assert (state.job_no, state.sampling_step, state.current_image_sampling_step) == (1, 0, 0)


def test_progress_idle_is_zero():
    assert State().progress() == (0.0, 0.0)


def test_progress_counts_jobs_and_steps_like_the_api():
    state = State()
    state.begin()
    state.job_count, state.job_no = 2, 1
    state.sampling_steps, state.sampling_step = 20, 10
    state.time_start = 100.0
    progress, eta = state.progress(now=110.0)
    expected = 0.01 + 1 / 2 + 1 / 2 * 10 / 20
    assert progress == pytest.approx(expected)
    assert eta == pytest.approx(10.0 / expected - 10.0)
    state.job_no = 2
    state.sampling_step = 20
    assert state.progress(now=110.0)[0] == 1.0  # capped


def test_progress_before_job_count_is_known():
    state = State()
    state.begin()
    state.sampling_steps, state.sampling_step = 20, 10
    state.time_start = 100.0
    progress, eta = state.progress(now=101.0)
    assert progress == pytest.approx(0.01)
    assert eta == pytest.approx(1.0 / 0.01 - 1.0)


class PreviewSpy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, latent):
        self.calls += 1
        return Image.new("RGB", (8, 8))


def test_set_current_image_every_n_steps(opts):
    opts(show_progress_every_n_steps=5)
    spy = PreviewSpy()
    state = State(preview_function=spy)
    state.begin()
    state.current_latent = object()
    for step in range(1, 13):
        state.sampling_step = step
        state.set_current_image()
    assert spy.calls == 2  # at steps 5 and 10
    assert state.current_image_sampling_step == 10
    assert state.id_live_preview == 2
    assert isinstance(state.current_image, Image.Image)


def test_no_preview_when_disabled_or_without_latent(opts):
    spy = PreviewSpy()
    state = State(preview_function=spy)
    state.begin()
    state.sampling_step = 50
    state.set_current_image()  # no latent yet
    opts(live_previews_enable=False)
    state.current_latent = object()
    state.set_current_image()
    assert spy.calls == 0 and state.current_image is None


def test_minus_one_previews_only_at_the_end_of_each_batch(opts):
    opts(show_progress_every_n_steps=-1)
    spy = PreviewSpy()
    state = State(preview_function=spy)
    state.begin()
    state.current_latent = object()
    state.sampling_step = 100
    state.set_current_image()
    assert spy.calls == 0
    state.nextjob()
    assert spy.calls == 1


def test_a_failing_preview_does_not_stop_the_job(opts):
    def broken(latent):
        raise RuntimeError("VAE is on the CPU")

    state = State(preview_function=broken)
    state.begin()
    state.current_latent = object()
    state.sampling_step = 10
    state.set_current_image()
    assert state.current_image is None and state.id_live_preview == 0


def test_assign_current_image_drops_alpha_for_jpeg(opts):
    state = State()
    opts(live_previews_image_format="jpeg")
    state.assign_current_image(Image.new("RGBA", (4, 4)))
    assert state.current_image.mode == "RGB" and state.id_live_preview == 1
    opts(live_previews_image_format="png")
    state.assign_current_image(Image.new("RGBA", (4, 4)))
    assert state.current_image.mode == "RGBA" and state.id_live_preview == 2


def test_default_preview_uses_the_settings(opts, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(shared, "sd_model", None)
    opts(show_progress_every_n_steps=1, show_progress_type="Approx cheap", show_progress_grid=False)
    from modules.engine import previews

    state = State(preview_function=previews.preview_function())
    state.begin()
    state.current_latent = torch.zeros(2, 4, 3, 5)
    state.sampling_step = 1
    state.set_current_image()
    assert state.current_image.size == (40, 24)


def test_the_state_drives_the_console_bars_at_each_step_even_without_previews(opts):
    opts(live_previews_enable=False)
    calls: list[tuple] = []

    class Recorder:  # modules.console_progress.ConsoleProgress's interface
        def step(self, *args: int) -> None:
            calls.append(("step", *args))

        def next_batch(self) -> None:
            calls.append(("next_batch",))

        def end(self) -> None:
            calls.append(("end",))

    state = State()
    state.console = Recorder()
    state.begin(job="txt2img")
    state.job_count = 2
    state.sampling_step, state.sampling_steps = 1, 4  # what the engine's step callback sets, then reports
    state.set_current_image()
    state.nextjob()
    state.end()
    assert calls == [("end",), ("step", 1, 4, 0, 2), ("next_batch",), ("end",)]  # begin closes leftovers
