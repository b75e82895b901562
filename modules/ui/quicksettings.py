"""The quicksettings bar: checkpoint (switches the model, with refresh), VAE and Clip skip.

Switching runs as a job on the shared queue, so it never swaps the model under a running generation.
Each change is saved to config.json at once, as A1111's quicksettings are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import call_queue, extensions, script_callbacks, scripts, sd_models, shared
from modules.models import registry, vae_registry
from modules.ui import common
from modules.ui.page_load import PageLoad

SWITCH_TIMEOUT = 600.0


@dataclass
class QuickSettings:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    vae: gr.Dropdown
    clip_skip: gr.Slider
    result: gr.HTML


def current_checkpoint() -> str | None:
    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    if info is not None:
        return info.title
    return shared.opts.data.get("sd_model_checkpoint")


def build() -> QuickSettings:
    with gr.Row(elem_id="quicksettings"):
        checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint",
                                 choices=registry.checkpoint_tiles(), value=current_checkpoint(),
                                 allow_custom_value=True, scale=3)
        refresh = common.tool_button(common.REFRESH, "refresh_sd_model_checkpoint",
                                     "Look for new checkpoints and VAEs in the model folders")
        vae = gr.Dropdown(label="SD VAE", elem_id="setting_sd_vae", choices=vae_registry.vae_option_names(),
                          value=shared.opts.data.get("sd_vae", "Automatic"), scale=2)
        clip_skip = gr.Slider(label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers", minimum=1, maximum=12,
                              step=1, value=int(shared.opts.data.get("CLIP_stop_at_last_layers", 1)), scale=2)
    result = gr.HTML("", elem_id="quicksettings_result", padding=False)
    return QuickSettings(checkpoint, refresh, vae, clip_skip, result)


def _save() -> None:
    shared.opts.save(shared.config_filename)


def _run_job(kind: str, fn: Any) -> str | None:
    """Run fn on the queue and wait; the readable error, or None."""
    job = call_queue.queue.submit(kind, fn)
    try:
        job.wait(timeout=SWITCH_TIMEOUT)
    except call_queue.JobFailed as e:
        return e.message
    except call_queue.JobCancelled:
        return "Cancelled."
    except TimeoutError:
        return "Still waiting for the queue; the change will apply when the jobs before it finish."
    return None


def switch_checkpoint(title: str | None):
    if not title:
        return gr.skip(), ""
    info = sd_models.get_closet_checkpoint_match(title)
    if info is None:
        return current_checkpoint(), common.error_html(f"Checkpoint not found: {title}")

    def load() -> None:
        sd_models.load_model(info)
        _save()

    error = _run_job("load-model", load)
    if error:
        return current_checkpoint(), common.error_html(f"Could not switch to {info.title}: {error}")
    return current_checkpoint(), common.notice_html(f"Loaded {info.title}.")


def switch_vae(choice: str):
    def apply() -> None:
        shared.opts.set("sd_vae", choice)
        sd_models.reload_vae_weights()
        _save()

    old = shared.opts.data.get("sd_vae", "Automatic")
    error = _run_job("load-vae", apply)
    if error:
        shared.opts.data["sd_vae"] = old
        return old, common.error_html(f"Could not use VAE {choice}: {error}")
    return choice, common.notice_html(f"VAE: {choice}.")


def set_clip_skip(value: float):
    shared.opts.set("CLIP_stop_at_last_layers", int(value))
    _save()
    return ""


def refresh() -> tuple[Any, ...]:
    registry.list_models()
    vae_registry.refresh_vae_list()
    tiles = registry.checkpoint_tiles()
    return gr.Dropdown(choices=tiles, value=current_checkpoint()), gr.Dropdown(choices=vae_registry.vae_option_names())


def refresher(n_refiner_boxes: int):
    """The 🔄 button's handler: checkpoint and VAE lists read again, and the refiner boxes given the new titles."""

    def refresh_all() -> tuple[Any, ...]:
        checkpoint, vae = refresh()
        short = registry.checkpoint_tiles(use_short=True)
        return (checkpoint, vae, *[gr.Dropdown(choices=short) for _ in range(n_refiner_boxes)])

    return refresh_all


def current_values() -> tuple[Any, ...]:
    """What the bar shows on each page load: the live model and settings, not those at build time."""
    return (gr.Dropdown(choices=registry.checkpoint_tiles(), value=current_checkpoint()),
            gr.Dropdown(choices=vae_registry.vae_option_names(), value=shared.opts.data.get("sd_vae", "Automatic")),
            int(shared.opts.data.get("CLIP_stop_at_last_layers", 1)))


def startup_notices(first_load: call_queue.Job | None) -> str:
    """Which checkpoints the start-up skipped and why (after the first load finished), or ""."""
    if first_load is not None:
        try:
            first_load.wait(timeout=SWITCH_TIMEOUT)
        except (call_queue.JobFailed, call_queue.JobCancelled, TimeoutError):
            pass  # the notices below (or the console) say what went wrong
    notices = sd_models.startup_notices()
    html = "".join(common.error_html(n) if n.startswith(("Could not", "No checkpoint")) else common.notice_html(n)
                   for n in notices)
    # Extensions that failed to load or whose callbacks raised: named, so the person knows which one to fix.
    problems = ([f"Extension script not loaded: {e}" for e in scripts.load_errors] + list(extensions.errors)
                + list(script_callbacks.errors))
    return html + "".join(common.error_html(p) for p in problems)


def wire(demo: gr.Blocks, loads: PageLoad, quick: QuickSettings, refiner_boxes: list[gr.Dropdown],
         first_load: call_queue.Job | None = None) -> None:
    # .input fires only for the person's own changes, not when a page load sets the value.
    quick.checkpoint.input(switch_checkpoint, inputs=[quick.checkpoint], outputs=[quick.checkpoint, quick.result],
                           concurrency_limit=None)
    quick.vae.input(switch_vae, inputs=[quick.vae], outputs=[quick.vae, quick.result], concurrency_limit=None)
    quick.clip_skip.release(set_clip_skip, inputs=[quick.clip_skip], outputs=[quick.result], show_progress="hidden")

    quick.refresh.click(refresher(len(refiner_boxes)), outputs=[quick.checkpoint, quick.vae, *refiner_boxes],
                        show_progress="hidden")
    loads.add(current_values, [quick.checkpoint, quick.vae, quick.clip_skip])
    # Waits for the start-up load in its own event, so the page is usable meanwhile.
    demo.load(lambda: startup_notices(first_load), outputs=[quick.result], show_progress="hidden",
              concurrency_limit=None)
