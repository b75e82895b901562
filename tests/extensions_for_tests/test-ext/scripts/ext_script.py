"""A small extension written for the tests, in A1111's layout: an always-visible script, a selectable script and
one callback of each kind. It records what happened in `calls` (read by the tests through `shared`)."""

import gradio as gr

from modules import script_callbacks, scripts, shared
from modules.options import OptionInfo

calls: list = []
shared.test_extension_calls = calls  # where the tests find the record


class AlwaysOn(scripts.Script):
    def title(self):
        return "Test always on"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("Test always on", open=False, elem_id=self.elem_id("accordion")):
            enabled = gr.Checkbox(label="Rewrite prompts", value=False, elem_id=self.elem_id("enabled"))
            suffix = gr.Textbox(label="Suffix", value=", rewritten", elem_id=self.elem_id("suffix"))
        return [enabled, suffix]

    def before_process(self, p, enabled, suffix):
        calls.append(("before_process", enabled))

    def process(self, p, enabled, suffix):
        calls.append(("process", enabled))
        if enabled:
            p.all_prompts = [x + suffix for x in p.all_prompts]
            p.all_seeds = [s + 1000 for s in p.all_seeds]

    def before_process_batch(self, p, enabled, suffix, **kwargs):
        calls.append(("before_process_batch", kwargs["batch_number"]))

    def process_batch(self, p, enabled, suffix, **kwargs):
        calls.append(("process_batch", kwargs["batch_number"]))

    def postprocess_batch(self, p, enabled, suffix, **kwargs):
        calls.append(("postprocess_batch", tuple(kwargs["images"].shape)))

    def postprocess_batch_list(self, p, pp, enabled, suffix, **kwargs):
        calls.append(("postprocess_batch_list", len(pp.images)))

    def postprocess_image(self, p, pp, enabled, suffix):
        calls.append(("postprocess_image", pp.image.size))
        if enabled:
            pp.image = pp.image.transpose(0)  # mirror: visible in the result

    def postprocess(self, p, processed, enabled, suffix):
        calls.append(("postprocess", len(processed.images)))


class Selectable(scripts.Script):
    def title(self):
        return "Test selectable"

    def ui(self, is_img2img):
        return [gr.Slider(label="Steps instead", minimum=1, maximum=10, step=1, value=2,
                          elem_id=self.elem_id("steps"))]

    def run(self, p, steps):
        from modules import processing

        calls.append(("run", steps))
        p.steps = int(steps)
        return processing.process_images(p)


class Failing(scripts.Script):
    def title(self):
        return "Test failing always on"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        raise RuntimeError("this script has a bug")


def on_denoiser(params):
    calls.append(("cfg_denoiser", params.sampling_step, params.total_sampling_steps))


def on_denoised(params):
    calls.append(("cfg_denoised", params.sampling_step))


def on_after_cfg(params):
    calls.append(("cfg_after_cfg", params.sampling_step))


def on_settings():
    shared.opts.add_option("test_extension_setting", OptionInfo(
        3, "Test extension setting", gr.Slider, {"minimum": 1, "maximum": 9, "step": 1},
        section=("test_extension", "Test extension")))


def on_tabs():
    with gr.Blocks() as tab:
        box = gr.Textbox(label="Echo", elem_id="test_extension_input")
        out = gr.Textbox(label="Echoed", elem_id="test_extension_output")
        gr.Button("Echo", elem_id="test_extension_button").click(lambda x: f"echo: {x}", inputs=[box], outputs=[out])
    return [(tab, "Test extension", "test_extension")]


def on_started(demo, app):
    calls.append(("app_started", demo is not None))

    @app.get("/test-extension/ping")
    def ping():
        return {"pong": True}


script_callbacks.on_cfg_denoiser(on_denoiser)
script_callbacks.on_cfg_denoised(on_denoised)
script_callbacks.on_cfg_after_cfg(on_after_cfg)
script_callbacks.on_image_saved(lambda params: calls.append(("image_saved", params.filename.endswith(".png"))))
script_callbacks.on_model_loaded(lambda model: calls.append(("model_loaded", model.sd_checkpoint_info.name)))
script_callbacks.on_ui_settings(on_settings)
script_callbacks.on_ui_tabs(on_tabs)
script_callbacks.on_app_started(on_started)
script_callbacks.on_infotext_pasted(lambda text, params: params.setdefault("Test pasted", "yes"))
script_callbacks.on_before_ui(lambda: calls.append(("before_ui",)))
script_callbacks.on_model_loaded(lambda model: 1 / 0)  # a broken callback: reported, the others still run
