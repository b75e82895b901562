"""The Extras tab (A1111's): upscale and restore faces of one image, several uploads, or a server folder.

Generate runs `modules.postprocessing` on the shared queue, like txt2img; results go to outputs/extras-images
and show in a results panel with their postprocessing infotext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import postprocessing, scripts_postprocessing, shared
from modules.ui import generation, results, uploads

MODES = ("single_image", "batch_process", "batch_from_directory")


@dataclass
class ExtrasTab:
    mode: gr.State
    mode_tabs: gr.Tabs
    image: gr.Image
    image_batch: gr.File
    input_dir: gr.Textbox
    output_dir: gr.Textbox
    show_results: gr.Checkbox
    generate: gr.Button
    script_inputs: list[Any]
    results: results.Results


def build() -> ExtrasTab:
    mode = gr.State(0)
    with gr.Row(equal_height=False, elem_id="extras_row"):
        with gr.Column(elem_id="extras_settings"):
            with gr.Tabs(elem_id="mode_extras") as mode_tabs:
                with gr.Tab("Single Image", id="single_image", elem_id="extras_single_tab") as tab_single:
                    # type="filepath": the file as uploaded, so its `parameters` chunk is kept in the result
                    image = uploads.checked_image(label="Source", elem_id="extras_image", type="filepath",
                                                  image_mode=None, sources=["upload", "clipboard"], height=400)
                with gr.Tab("Batch Process", id="batch_process", elem_id="extras_batch_process_tab") as tab_batch:
                    image_batch = gr.File(label="Batch Process", file_count="multiple", type="filepath",
                                          file_types=["image"], elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id="batch_from_directory",
                            elem_id="extras_batch_directory_tab") as tab_dir:
                    gr.Markdown("Process every image in a folder on the server. Folders must be inside the data "
                                "dir or a folder the server allows with --batch-dirs.")
                    input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir",
                                           placeholder="A directory on the same machine where the server is running.",
                                           **shared.hide_dirs)
                    output_dir = gr.Textbox(label="Output directory", elem_id="extras_batch_output_dir",
                                            placeholder="Leave blank to save images to the default path.",
                                            **shared.hide_dirs)
                    show_results = gr.Checkbox(label="Show result images", value=True,
                                               elem_id="extras_show_extras_results")
            script_inputs = scripts_postprocessing.runner().setup_ui()
        with gr.Column(elem_id="extras_output"):
            generate_button = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            panel = results.build("extras")
    for index, tab in enumerate((tab_single, tab_batch, tab_dir)):
        tab.select(lambda i=index: i, outputs=[mode], show_progress="hidden", queue=False)
    image.upload(upload_check, inputs=[image], outputs=[panel.html_log], show_progress="hidden")
    image.change(lambda: scripts_postprocessing.runner().image_changed(), show_progress="hidden", queue=False)
    event = generate_button.click(generate, inputs=[mode, image, image_batch, input_dir, output_dir, show_results,
                                            *script_inputs],
                          outputs=panel.outputs, show_progress="hidden", concurrency_limit=None,
                          concurrency_id="generate")
    # the page's after-run hook, as for txt2img (javascript/ui.js): "generate forever" and run counters use it
    event.then(None, js="() => window.studioAfterGenerate && window.studioAfterGenerate('extras')")
    return ExtrasTab(mode, mode_tabs, image, image_batch, input_dir, output_dir, show_results, generate_button,
                     script_inputs, panel)


def upload_check(value: Any) -> Any:
    if isinstance(value, uploads.UnreadableUpload):
        from modules.ui import common

        return common.error_html(value.message)
    return gr.skip()


def make_work(mode: Any, image: Any, image_batch: Any, input_dir: str, output_dir: str, show_results: bool,
              script_args: list[Any]):
    """Widget values -> the function the queue runs. What can be refused at once is refused here."""
    extras_mode = int(mode or 0)
    single = uploads.readable(image) if extras_mode == postprocessing.SINGLE else None
    batch = list(image_batch or []) if extras_mode == postprocessing.BATCH else None
    # the folders and the upscaler names are checked now, so a mistake is shown before the job waits in line
    postprocessing.check_request(extras_mode, single, batch, input_dir, output_dir, script_args)
    return lambda: postprocessing.run(extras_mode, single, batch, input_dir, output_dir, bool(show_results),
                                      script_args)


def generate(request: gr.Request, mode: Any, image: Any, image_batch: Any, input_dir: str, output_dir: str,
             show_results: bool, *script_args: Any):
    yield from generation.stream("extras", lambda: make_work(mode, image, image_batch, input_dir, output_dir,
                                                             show_results, list(script_args)), request)
