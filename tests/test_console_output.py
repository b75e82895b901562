"""What the console shows while people watch it: A1111's tqdm bars per job, and no misleading or noisy lines
(gradio's `share=True` hint, httpx's line per request)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
import urllib.request

import pytest

from modules import console_progress, processing, shared
from modules.shared_state import State

BAR = re.compile(r"(\d+)/(\d+) \[[\d:]+<[\d:?]+, +[\d.?]+(it/s|s/it)\]")


@pytest.fixture
def console(monkeypatch):
    """Bars on, both of them, live previews off; returns a setter for the two switches."""
    monkeypatch.setattr(shared.cmd_opts, "disable_console_progressbars", False, raising=False)
    monkeypatch.setitem(shared.opts.data, "multiple_tqdm", True)
    monkeypatch.setitem(shared.opts.data, "live_previews_enable", False)

    def switch(bars: bool = True, total: bool = True) -> None:
        monkeypatch.setattr(shared.cmd_opts, "disable_console_progressbars", not bars)
        monkeypatch.setitem(shared.opts.data, "multiple_tqdm", total)

    return switch


def run_job(state: State, batches: int, steps: int, pause: float = 0.0) -> None:
    """What processing does with the state: begin, a step report per sampling step, nextjob per batch, end."""
    state.begin(job="test")
    state.job_count = batches
    for _ in range(batches):
        for i in range(steps):
            time.sleep(pause)
            state.sampling_step, state.sampling_steps = i + 1, steps
            state.set_current_image()
        state.nextjob()
    state.end()


def final_bars(err: str) -> list[tuple[str, str, str]]:
    """(n, total, unit) of every bar frame written, in order."""
    return BAR.findall(err)


def test_a_job_prints_a_bar_per_batch_and_a_total_bar(console, capsys):
    run_job(State(), batches=2, steps=3, pause=0.01)
    err = capsys.readouterr().err
    frames = final_bars(err)
    assert ("3", "3", "it/s") in frames  # each batch's bar ends full, with tqdm's speed
    assert "Total progress" in err and ("6", "6", "it/s") in frames
    totals = re.findall(r"Total progress: +\d+%\|[^|]*\| \d+/(\d+)", err)
    assert totals and set(totals) == {"6"}  # one bar over the whole job, never one per batch
    assert re.search(r"100%\|[^|]*\| 3/3 \[00:00<00:00", err)  # the ETA column reaches zero


def test_disable_console_progressbars_prints_nothing(console, capsys):
    console(bars=False)
    run_job(State(), batches=2, steps=3)
    assert capsys.readouterr().err == ""


def test_multiple_tqdm_off_leaves_only_the_batch_bars(console, capsys):
    console(total=False)
    run_job(State(), batches=2, steps=3)
    err = capsys.readouterr().err
    assert "Total progress" not in err and ("3", "3") in [f[:2] for f in final_bars(err)]


def test_a_step_reported_twice_counts_once_and_a_restart_opens_a_new_bar(console, capsys):
    console(total=False)
    progress = console_progress.ConsoleProgress()
    for step in (1, 2, 2, 3, 1, 2):  # the last two: a new sampling run that did not call nextjob
        progress.step(step, 3, job_no=0, job_count=1)
    progress.end()
    bars = [f[:2] for f in final_bars(capsys.readouterr().err)]
    assert ("4", "3") not in bars and ("5", "3") not in bars  # the repeated report moved nothing
    assert bars[-1] == ("2", "3") and ("3", "3") in bars[:-1]  # the first run's bar ended full, then a new one


@pytest.mark.parametrize("stream", ["closed", "none"])
def test_a_console_that_went_away_never_fails_the_job(console, monkeypatch, stream):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed if stream == "closed" else None)
    state = State()
    run_job(state, batches=2, steps=3)  # no exception
    assert state.job == "" and state.job_no == 2


def test_a_job_without_steps_prints_no_bar(console, capsys):
    state = State()
    state.begin(job="load-model")
    state.end()
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, isolated_data_dir):
    settings = {"live_previews_enable": False, "samples_save": False}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), {"tiny.safetensors": {"family": "sd1"}}, settings):
        yield


def test_process_images_prints_tqdm_bars(tiny_model, console, capsys):
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a red circle", steps=3, width=64, height=64, n_iter=2,
                                                    do_not_save_samples=True, do_not_save_grid=True)
    processing.process_images(p)
    err = capsys.readouterr().err
    bars = final_bars(err)
    assert ("3", "3") in [b[:2] for b in bars] and ("6", "6") in [b[:2] for b in bars], err
    assert "Total progress" in err


def test_process_images_with_bars_disabled_prints_none(tiny_model, console, capsys):
    console(bars=False)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a red circle", steps=2, width=64, height=64,
                                                    do_not_save_samples=True, do_not_save_grid=True)
    processing.process_images(p)
    assert not final_bars(capsys.readouterr().err)


# --- the server's own log ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_log(tmp_path_factory):
    """The log of a real `launch.py` (no model loaded: only the console lines matter) after a page load and
    a few requests, among them gradio's own client calls at start-up."""
    from browser.helpers import Server

    server = Server(tmp_path_factory.mktemp("data"), "--skip-load-model-at-start").start()
    try:
        for path in ("", "config", "gradio_api/info"):
            urllib.request.urlopen(server.url + path, timeout=30).read()
        body = json.dumps({"id_task": "task(none)", "id_live_preview": -1}).encode()
        request = urllib.request.Request(server.url + "internal/progress", body,
                                         {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).read()
        time.sleep(0.5)  # let the log catch up
        yield server.log_path.read_text(errors="replace")
    finally:
        server.stop()


def test_the_log_names_our_share_flag_not_gradios_launch_argument(server_log):
    assert "Running on local URL:  http://127.0.0.1:" in server_log
    assert "share=True" not in server_log and "launch()" not in server_log, server_log
    assert "--share" in server_log


def test_requests_do_not_log_an_httpx_line_each(server_log):
    assert "HTTP Request:" not in server_log, server_log


@pytest.mark.parametrize(("loglevel", "httpx_level"), [(None, logging.WARNING), ("info", logging.WARNING),
                                                       ("DEBUG", logging.DEBUG)])
def test_httpx_shows_only_warnings_unless_debug_is_asked(loglevel, httpx_level):
    import webui

    root, httpx = logging.getLogger(), logging.getLogger("httpx")
    saved = root.level, httpx.level
    try:
        webui.setup_logging(loglevel)
        assert httpx.level == httpx_level
    finally:
        root.setLevel(saved[0])
        httpx.setLevel(saved[1])
