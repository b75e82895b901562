"""The "Download model" box in the Settings tab: a URL or a hub repo id + file, fetched as a job on the queue.

The download runs on the shared queue (one job at a time, Interrupt stops it and keeps the `.part` for a
resume), so its progress comes through the same machinery as a generation's: the bar shows the bytes so far,
the size and the ETA. When it ends the folder of its type has been rescanned; the checkpoint bar's 🔄 (or a
page reload) shows the new file in the dropdowns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import download_files, downloads, shared
from modules.download_guard import DownloadRefused
from modules.ui import common, tasks

KIND_LABELS = {"Checkpoint": "checkpoint", "LoRA": "lora", "VAE": "vae", "ControlNet": "controlnet",
               "Upscaler": "upscaler", "Embedding": "embedding"}


@dataclass
class DownloadBox:
    url: gr.Textbox
    repo_id: gr.Textbox
    repo_file: gr.Textbox
    kind: gr.Dropdown
    upscaler: gr.Dropdown
    sha256: gr.Textbox
    name: gr.Textbox
    overwrite: gr.Checkbox
    button: gr.Button
    result: gr.HTML
    finished: Any = None  # the click's event: other parts of the page chain their refresh on it (.then)

    @property
    def inputs(self) -> list[Any]:
        return [self.url, self.repo_id, self.repo_file, self.kind, self.upscaler, self.sha256, self.name,
                self.overwrite]


def build() -> DownloadBox:
    with gr.Accordion("Download model", open=False, elem_id="download_model"):
        gr.Markdown("A URL (https), or a Hugging Face hub repo id and file. The file goes into the folder of its "
                    "type; a cut download resumes when you press Download again.")
        url = gr.Textbox(label="URL", elem_id="download_url", placeholder="https://.../model.safetensors")
        with gr.Row():
            repo_id = gr.Textbox(label="Hub repo id", elem_id="download_repo_id", placeholder="owner/repo")
            repo_file = gr.Textbox(label="File in the repo", elem_id="download_repo_file",
                                   placeholder="model.safetensors")
        with gr.Row():
            kind = gr.Dropdown(label="Type", choices=list(KIND_LABELS), value="Checkpoint", elem_id="download_kind")
            upscaler = gr.Dropdown(label="Upscaler folder (type Upscaler)", choices=list(download_files.UPSCALERS),
                                   value="ESRGAN", elem_id="download_upscaler")
        with gr.Row():
            sha256 = gr.Textbox(label="sha256 (optional)", elem_id="download_sha256")
            name = gr.Textbox(label="Save as (optional)", elem_id="download_name")
        overwrite = gr.Checkbox(label="Overwrite a file of the same name", value=False, elem_id="download_overwrite")
        button = gr.Button("Download", variant="primary", elem_id="download_button")
        result = gr.HTML(elem_id="download_result")
    box = DownloadBox(url, repo_id, repo_file, kind, upscaler, sha256, name, overwrite, button, result)
    box.finished = button.click(run, inputs=box.inputs, outputs=[result], show_progress="hidden",
                                concurrency_limit=None)
    return box


def make_request(url: str, repo_id: str, repo_file: str, kind: str, upscaler: str, sha256: str, name: str,
                 overwrite: bool) -> downloads.DownloadRequest:
    if kind not in KIND_LABELS:
        raise DownloadRefused(f"unknown type {kind!r}")
    return downloads.DownloadRequest(kind=KIND_LABELS[kind], url=(url or "").strip(),
                                     repo_id=(repo_id or "").strip(), filename=(repo_file or "").strip(),
                                     upscaler=upscaler if KIND_LABELS[kind] == "upscaler" else None,
                                     sha256=(sha256 or "").strip() or None, name=(name or "").strip() or None,
                                     overwrite=bool(overwrite))


def _report(name: str, done: int, total: int | None) -> None:
    """Bytes so far into the job's state, which the progress bar reads as steps."""
    state = shared.state
    state.job_count = 1
    state.sampling_steps = total or 0
    state.sampling_step = done if total else 0
    state.textinfo = f"Downloading {name}: {downloads.format_size(done)} of {downloads.format_size(total)}"


def job(req: downloads.DownloadRequest) -> downloads.DownloadResult:
    shared.state.job_count = 1
    shared.state.textinfo = "Connecting..."
    return downloads.download(req, progress=_report, should_stop=lambda: bool(shared.state.interrupted))


def done_html(result: downloads.DownloadResult) -> str:
    hidden = getattr(shared.cmd_opts, "hide_ui_dir_config", False)
    shown = "its folder" if hidden else os.path.dirname(result.path)
    text = (f"Downloaded {result.name} ({downloads.format_size(result.size)}, sha256 {result.sha256}) "
            f"into {shown}.")
    if result.kind == "checkpoint":
        text += " It is in the checkpoint list now (🔄 in the bar refreshes this page's list)."
    return common.notice_html(text)


def run(url: str, repo_id: str, repo_file: str, kind: str, upscaler: str, sha256: str, name: str, overwrite: bool,
        request: gr.Request) -> Iterator[str]:
    """The Download button: check the request, queue it, stream its progress, then its result or reason."""
    try:
        req = make_request(url, repo_id, repo_file, kind, upscaler, sha256, name, overwrite)
    except DownloadRefused as e:
        yield common.error_html(f"Download refused: {e}")
        return
    yield from tasks.stream_html("download", lambda: job(req), request, done_html,
                                 lambda error: common.error_html(f"Download refused or failed: {error}"))
