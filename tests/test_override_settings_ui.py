"""A1111's "Override settings" box of txt2img / img2img: a paste lists the infotext's settings that differ from the
current ones ("Clip skip: 2"), the entries left in it apply to that tab's jobs only (checked as the API checks its
override_settings) and the settings are as before after each job."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from modules import infotext_utils, sd_models, shared
from modules.ui import app, override_settings, paste

PASTED = ("a red fox\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Clip skip: 2, ENSD: 31337, "
          "RNG: GPU, Emphasis: Original")  # RNG and Emphasis are the current settings: not listed


@pytest.fixture(scope="module")
def demo(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}):
        sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
        yield app.create_ui()


def component(page: gr.Blocks, elem_id: str) -> Any:
    (found,) = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    return found


def handler(page: gr.Blocks, trigger: Any, event: str = "click") -> Any:
    (fn,) = [f for f in page.fns.values() if (trigger._id, event) in [tuple(t) for t in f.targets]]
    return fn


def box_update(page: gr.Blocks, fn: Any, outputs: list[Any], tab: str) -> Any:
    """The update a paste handler's outputs give the tab's box; None when the handler does not touch it."""
    ids = [c._id for c in fn.outputs]
    box = component(page, f"{tab}_override_settings")
    return outputs[ids.index(box._id)] if box._id in ids else None


def test_a_paste_lists_the_settings_that_differ_on_that_tab_only(demo):
    t2i_box, i2i_box = component(demo, "txt2img_override_settings"), component(demo, "img2img_override_settings")
    assert not t2i_box.visible and not i2i_box.visible and t2i_box.multiselect
    # registered where extensions look for it
    assert infotext_utils.paste_fields["txt2img"]["override_settings_component"] is t2i_box
    assert infotext_utils.paste_fields["img2img"]["override_settings_component"] is i2i_box
    assert infotext_utils.paste_fields["inpaint"]["override_settings_component"] is i2i_box

    send = handler(demo, component(demo, "pnginfo_send_to_txt2img"))
    update = box_update(demo, send, send.fn(PASTED), "txt2img")
    assert update.value == ["Clip skip: 2", "ENSD: 31337"] and update.visible
    assert box_update(demo, send, send.fn(PASTED), "img2img") is None  # the other tab's box is not touched

    # ↙️ on img2img fills img2img's box; a paste with no differing setting empties and hides it
    paste_button = handler(demo, component(demo, "img2img_paste"))
    assert box_update(demo, paste_button, paste_button.fn(PASTED), "img2img").value == ["Clip skip: 2", "ENSD: 31337"]
    assert box_update(demo, paste_button, paste_button.fn(PASTED), "txt2img") is None
    plain = box_update(demo, paste_button, paste_button.fn("a cat\nSteps: 3, Seed: 1, Size: 64x64"), "img2img")
    assert plain.value == [] and plain.visible is False

    # PNG Info's send to inpaint, and a picture alone (no infotext) leaves the box as it is
    to_inpaint = handler(demo, component(demo, "pnginfo_send_to_inpaint"))
    assert box_update(demo, to_inpaint, to_inpaint.fn(None, PASTED), "img2img").value == ["Clip skip: 2", "ENSD: 31337"]
    assert isinstance(box_update(demo, to_inpaint, to_inpaint.fn(None, ""), "img2img"), type(gr.skip()))


def test_a_bad_value_is_listed_and_refused_by_name_not_applied(demo):
    params = paste.parse(PASTED.replace("Clip skip: 2", "Clip skip: abc"))
    assert override_settings.entries(params) == ["Clip skip: abc", "ENSD: 31337"]  # the paste itself works
    with pytest.raises(ValueError, match="'Clip skip: abc' refused"):
        override_settings.checked(["ENSD: 31337", "Clip skip: abc"])
    with pytest.raises(ValueError, match="'Clip skip: 99' refused"):  # out of the setting's range
        override_settings.checked(["Clip skip: 99"])
    with pytest.raises(ValueError, match="'Nonsense: 3' is not a setting here"):
        override_settings.checked(["Nonsense: 3"])
    assert override_settings.checked(["Clip skip: 2", "ENSD: 31337"]) == {
        "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}


def default(c: Any) -> Any:
    """What the page sends for a component it has not changed (a radio of type="index": the index)."""
    value = getattr(c, "value", None)
    return c.preprocess(value) if getattr(c, "type", None) == "index" else value


def generate_values(page: gr.Blocks, tab: str) -> tuple[Any, list[Any]]:
    """The Generate handler of `tab` and its inputs' values: the page's defaults, a small job of 2 steps."""
    fn = handler(page, component(page, f"{tab}_generate"))
    assert fn.inputs[0].elem_id == f"{tab}_override_settings"  # first: the scripts' values are counted from after
    values = [default(c) for c in fn.inputs]
    for elem_id, value in ((f"{tab}_prompt", "a red fox"), (f"{tab}_steps", 2), (f"{tab}_width", 64),
                           (f"{tab}_height", 64), (f"{tab}_sampling", "Euler a"), (f"{tab}_seed", 5)):
        values[[c._id for c in fn.inputs].index(component(page, elem_id)._id)] = value
    return fn, values


def run(fn: Any, values: list[Any], entries: list[str]) -> tuple[str, str]:
    """(infotext of the first picture, error line) of a Generate with the box holding `entries`."""
    request = SimpleNamespace(session_hash="override-settings-test", username=None)
    *_, last = fn.fn(request, entries, *values[1:])
    _, info_json, _, log, _ = last
    if isinstance(info_json, str):
        return json.loads(info_json)["infotexts"][0], ""
    return "", log


def test_a_job_runs_with_the_entries_left_and_the_settings_are_restored(demo):
    before = dict(shared.opts.data)
    fn, values = generate_values(demo, "txt2img")
    infotext, error = run(fn, values, ["Clip skip: 2", "ENSD: 31337"])
    assert not error and "Clip skip: 2," in infotext and "ENSD: 31337" in infotext, error or infotext
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.eta_noise_seed_delta == 0
    assert shared.opts.data == before

    # an entry the person removed is not applied
    infotext, error = run(fn, values, ["ENSD: 31337"])
    assert not error and "Clip skip" not in infotext and "ENSD: 31337" in infotext, error or infotext
    infotext, error = run(fn, values, [])
    assert not error and "Clip skip" not in infotext and "ENSD" not in infotext, error or infotext

    # a refused entry is named under the result and no job runs
    infotext, error = run(fn, values, ["ENSD: 31337", "Clip skip: abc"])
    assert not infotext and "Clip skip: abc" in error and "refused" in error
    assert shared.opts.data == before


def test_img2img_jobs_take_their_own_box(demo):
    fn, values = generate_values(demo, "img2img")
    ids = [c._id for c in fn.inputs]
    values[ids.index(component(demo, "img2img_image")._id)] = img2img_source()
    infotext, error = run(fn, values, ["Clip skip: 2"])
    assert not error and "Clip skip: 2," in infotext and "Denoising strength" in infotext, error or infotext
    assert shared.opts.CLIP_stop_at_last_layers == 1
    infotext, error = run(fn, values, ["Clip skip: x"])
    assert "Clip skip: x" in error and not infotext


def img2img_source():
    from PIL import Image

    return Image.new("RGBA", (64, 64), (30, 90, 200, 255))



def test_a_batch_picture_s_model_joins_the_box_s_entries(demo):
    from modules import img2img_batch

    model = shared.sd_model.sd_checkpoint_info
    page = {"prompt": "x", "override_settings": override_settings.checked(["Clip skip: 2"])}
    fields, notes = img2img_batch.with_png_info(page, f"y\nSteps: 2, Seed: 1, Model hash: {model.shorthash}",
                                                img2img_batch.PngInfo(frozenset({"Model hash"})), "a.png")
    assert not notes and fields["override_settings"] == {"CLIP_stop_at_last_layers": 2,
                                                         "sd_model_checkpoint": model.title}
    assert page["override_settings"] == {"CLIP_stop_at_last_layers": 2}  # the page's own is left as it was
