"""Build the page: quicksettings bar, then the tabs txt2img, img2img, Extras, PNG Info, Checkpoint Merger, Depth
and Settings."""

from __future__ import annotations

import gradio as gr

from modules import call_queue, infotext_utils, script_callbacks, ui_extra_networks
from modules.ui import (
    checkpoint_merger,
    component_hooks,
    depth,
    extension_tabs,
    extensions_tab,
    extra_networks_pages,
    extras,
    img2img,
    pnginfo,
    quicksettings,
    sendto,
    settings,
    settings_defaults,
    styles_store,
    toprow,
    txt2img,
    ui_config,
)
from modules.ui.page_load import PageLoad


def create_ui(first_load: call_queue.Job | None = None) -> gr.Blocks:
    """The page. `first_load` is the start-up job loading the first model: the page says what it skipped."""
    infotext_utils.reset()  # paste-field registry: rebuilt with the page
    styles_store.database()
    ui_extra_networks.initialize()  # the built-in card pages; extensions add theirs in on_before_ui, as in A1111
    extra_networks_pages.register_default_pages()
    script_callbacks.before_ui_callback()
    script_callbacks.ui_settings_callback()  # extensions' settings exist before the Settings tab is made
    with component_hooks.page_build():
        demo = _page(first_load, extension_tabs.collect())
    return demo


def _page(first_load: call_queue.Job | None, ext_tabs: list) -> gr.Blocks:
    """The tabs in A1111's order; extensions' tabs go before Settings."""
    loads = PageLoad()  # what each page open refreshes, as one event
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        quick = quicksettings.build()
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build()
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.build()
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                ext = extras.build()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build()
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                merger = checkpoint_merger.build()
            with gr.Tab("Depth", id="depth", elem_id="tab_depth"):
                dep = depth.build()
            extension_tabs.build(ext_tabs)
            extensions_tab.build(loads)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                page = settings.build()
        tracked = ui_config.apply(tabs)  # ui-config.json's defaults, before the page's config is made
        toprow.link_style_lists([t2i.toprow, i2i.toprow])
        sendto.wire(tabs, t2i, i2i, png, image_only_panels=(ext.results, dep.results))
        sendto.wire_extras(tabs, ext, [t2i.results, i2i.results, dep.results], png)
        depth.wire_send(dep, tabs, i2i)
        refiner_boxes = [t2i.refiner.checkpoint, i2i.refiner.checkpoint]
        quicksettings.wire(demo, loads, quick, refiner_boxes, first_load)
        settings.wire(loads, page)
        settings_defaults.wire(page.defaults, tracked)  # Settings > Defaults reads the components ui_config keyed
        # a finished download shows in the checkpoint and VAE lists at once, without pressing 🔄
        page.download.finished.then(quicksettings.refresher(len(refiner_boxes)),
                                    outputs=[quick.checkpoint, quick.vae, *refiner_boxes], show_progress="hidden")
        merger.finished.then(quicksettings.refresher(len(refiner_boxes)),  # and a merged one, after the merge
                             outputs=[quick.checkpoint, quick.vae, *refiner_boxes], show_progress="hidden")

        def refresh_styles():
            choices = styles_store.names()
            return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

        # Each page load sees the current styles file (another tab may have saved a style).
        loads.add(refresh_styles, [t2i.toprow.styles, i2i.toprow.styles])
        loads.wire(demo)
    return demo
