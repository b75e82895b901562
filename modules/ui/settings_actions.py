"""Settings' "Actions" and "Sysinfo" sub-tabs (A1111's): unload or load the checkpoint and hash every checkpoint
(jobs on the shared queue, so never under a running picture), and the system report for a bug (a download, and a
check that a pasted report was not edited)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from modules import shared, sysinfo
from modules.ui import common, tasks


def _unload() -> str:
    from modules import sd_models

    sd_models.unload_model_weights()
    return "Checkpoint unloaded; its memory is free. The next job loads it again."


def _load() -> str:
    from modules import sd_models

    model = shared.sd_model or sd_models.load_model()
    info = model.checkpoint_info
    return f"Checkpoint loaded: {info.title if info is not None else 'the bundled default model'}."


def _hash_all() -> str:
    from modules import hashes
    from modules.models import registry

    if not hashes.hashing_enabled():
        return "Hashing is turned off on this server (--no-hashing)."
    checkpoints = list(registry.checkpoints_list.values())  # a copy: hashing re-titles and re-registers them
    failed = []
    for i, info in enumerate(checkpoints):
        shared.state.textinfo = f"Hashing {info.name} ({i + 1}/{len(checkpoints)})"
        try:
            info.calculate_shorthash()
        except OSError as e:
            failed.append(f"{info.name}: {e.strerror or e}")
    done = f"Hashed {len(checkpoints) - len(failed)} of {len(checkpoints)} checkpoints."
    return done + (" Could not read: " + "; ".join(failed) if failed else "")


def _streamed(kind: str, fn: Callable[[], str]) -> Callable[..., Iterator[str]]:
    def run(request: gr.Request) -> Iterator[str]:
        yield from tasks.stream_html(kind, fn, request, common.notice_html, common.error_html)
    return run


def check_report(text: str) -> str:
    if not (text or "").strip():
        return common.error_html("Paste a system report first.")
    if sysinfo.check(text):
        return common.notice_html("The report's checksum matches: it was not edited.")
    return common.error_html("The report's checksum does not match: it was edited, or it is not a report.")


def build() -> None:
    """Inside the settings' gr.Tabs."""
    with gr.Tab("Actions", id="actions", elem_id="settings_tab_actions"):
        with gr.Row():
            unload = gr.Button("Unload SD checkpoint to free memory", elem_id="sett_unload_sd_model")
            load = gr.Button("Load SD checkpoint", elem_id="sett_reload_sd_model")
            hash_all = gr.Button("Calculate hash for all checkpoints", elem_id="calculate_all_checkpoint_hash")
        result = gr.HTML("", elem_id="settings_actions_result", padding=False)
    with gr.Tab("Sysinfo", id="sysinfo", elem_id="settings_tab_sysinfo"):
        # a relative link, so it works under --subpath; the route needs the same login as the page
        gr.HTML('<p><a href="internal/sysinfo?attachment=true" download id="sysinfo_download">Download system '
                "info</a> (platform, GPU, versions, flags with secrets redacted, extensions, settings, packages), "
                'or <a href="internal/sysinfo" target="_blank" rel="noopener">open it</a>.</p>')
        report = gr.Textbox(label="Check a system report", lines=3, max_lines=10, elem_id="sysinfo_check_text",
                            placeholder="paste a report here to see whether it was edited after it was made")
        check = gr.Button("Check", elem_id="sysinfo_check")
        checked = gr.HTML("", elem_id="sysinfo_check_result", padding=False)
    for button, kind, fn in ((unload, "unload-checkpoint", _unload), (load, "reload-checkpoint", _load),
                             (hash_all, "hash-checkpoints", _hash_all)):
        button.click(_streamed(kind, fn), outputs=[result], show_progress="hidden")
    check.click(check_report, inputs=[report], outputs=[checked], show_progress="hidden")


__all__: list[Any] = ["build", "check_report"]
