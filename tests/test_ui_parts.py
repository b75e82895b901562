"""UI helpers without a browser: masks from the editor, infotext -> widget values, progress HTML, jobs."""

from __future__ import annotations

import gradio as gr
from PIL import Image, ImageDraw

from modules import call_queue, shared
from modules.ui import masks, paste, tasks


def test_painted_mask_is_the_union_of_the_strokes():
    background = Image.new("RGBA", (32, 32), (0, 0, 255, 255))
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((4, 4, 9, 9), fill=(255, 255, 255, 128))
    mask = masks.painted_mask({"background": background, "layers": [layer], "composite": background})
    assert mask.mode == "L" and mask.getpixel((5, 5)) == 255 and mask.getpixel((20, 20)) == 0
    assert mask.getbbox() == (4, 4, 10, 10)
    empty = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert masks.painted_mask({"background": background, "layers": [empty], "composite": background}) is None
    assert masks.painted_mask(None) is None


def test_uploaded_mask_uses_alpha_when_transparent_else_brightness():
    opaque = Image.new("RGB", (8, 8), (255, 255, 255))
    assert masks.uploaded_mask(opaque).getpixel((0, 0)) == 255
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    transparent.putpixel((1, 1), (0, 0, 0, 255))
    mask = masks.uploaded_mask(transparent)
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((0, 0)) == 0


def test_batch_masks_are_matched_by_name(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "masks" / "a.png").write_bytes(b"x")
    files = masks.list_images(str(tmp_path / "in"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jpg", "b.png"]
    assert masks.mask_for(files[0], str(tmp_path / "masks")).endswith("a.png")
    assert masks.mask_for(files[1], str(tmp_path / "masks")) is None


def test_infotext_values_fit_their_widgets():
    with gr.Blocks():
        steps = gr.Slider(1, 150, step=1)
        cfg = gr.Slider(1, 30, step=0.5)
        sampler = gr.Dropdown(choices=["Euler", "DPM++ 2M"])
        seed = gr.Number(precision=0)
        prompt = gr.Textbox()
        fill = gr.Radio(choices=["fill", "original"], type="index")
        extra = gr.Checkbox()
    fields = [(steps, "Steps"), (cfg, "CFG scale"), (sampler, "Sampler"), (seed, "Seed"), (prompt, "Prompt"),
              (fill, "Masked content"), (extra, lambda d: "Variation seed" in d)]
    params = paste.parse("a cat\nNegative prompt: dog\nSteps: 12, Sampler: Euler, CFG scale: 6.5, Seed: 77, "
                         "Size: 64x64, Masked content: fill")
    values = paste.values_for(fields, params)
    assert values == [12, 6.5, "Euler", 77, "a cat", "fill", False]
    # What the page then sends back must pass each widget's own check (an index radio wants its choice).
    assert [component.preprocess(v) for (component, _), v in zip(fields, values, strict=True)][5] == 0
    unknown = paste.values_for([(sampler, "Sampler"), (steps, "Steps")], {"Sampler": "Nope", "Steps": "x"})
    assert all(isinstance(v, type(gr.skip())) for v in unknown)


def test_progress_html_escapes_text_and_accepts_only_image_data_uris():
    html = tasks.progress_html({"active": True, "progress": 0.5, "eta": 75, "textinfo": "<b>x</b>"},
                               "javascript:alert(1)")
    assert "50%" in html and "ETA: 1m 15s" in html
    assert "<b>x</b>" not in html and "&lt;b&gt;" in html
    assert "javascript:" not in html
    queued = tasks.progress_html({"queued": True, "queue_position": 2}, None)
    assert "Waiting in queue: 2 jobs ahead" in queued


def test_a_job_streams_its_result_or_its_readable_error():
    updates = list(tasks.run("test", lambda: 42, "session-a"))
    assert updates[-1].finished and updates[-1].result == 42 and updates[-1].error is None
    assert tasks.job_of("session-a").status == "done"

    def fail():
        raise ValueError("width must be a multiple of 8")

    last = list(tasks.run("test", fail, "session-b"))[-1]
    assert last.finished and last.error == "width must be a multiple of 8"
    # the queue goes on after a failure
    assert list(tasks.run("test", lambda: "next", "session-b"))[-1].result == "next"
    assert call_queue.queue.current() is None


def test_the_page_s_progress_updates_follow_the_update_period_setting(monkeypatch):
    """"Progressbar and preview update period" (ms) sets how often a running job's bar is sent to the page; the
    result is sent when the job ends, not at the next period; 0 means A1111's 500 ms."""
    import time

    def sleeper(seconds: float):
        return lambda: time.sleep(seconds) or "done"

    monkeypatch.setitem(shared.opts.data, "live_preview_refresh_period", 100)
    updates = list(tasks.run("test", sleeper(0.8), "session-fast"))
    assert updates[-1].result == "done" and len(updates[:-1]) >= 3  # about eight bars

    monkeypatch.setitem(shared.opts.data, "live_preview_refresh_period", 5000)
    started = time.monotonic()
    updates = list(tasks.run("test", sleeper(0.5), "session-slow"))
    assert updates[-1].result == "done" and updates[:-1] == []  # no bar within the period
    assert time.monotonic() - started < 4  # the result came when the job ended

    monkeypatch.setitem(shared.opts.data, "live_preview_refresh_period", 0)
    assert tasks.refresh_seconds() == 0.5
