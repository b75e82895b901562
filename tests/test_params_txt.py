"""params.txt, A1111's record of the last generation: written after each job, read back by the ↙️ button of the
txt2img / img2img top row (which fills the fields PNG Info's "send to" fills); the top row's 📋 style button."""

from __future__ import annotations

import logging
import os
import sys

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules import cmd_args, paths, processing, sd_models, shared
from modules.styles import PromptStyle, StyleDatabase
from modules.ui import paste, styles_store, toprow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        sd_models.load_model(sd_models.get_closet_checkpoint_match("sd1.safetensors"))
        yield root


def txt2img(**kw) -> processing.Processed:
    args = {"prompt": "a red fox", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 42, "do_not_save_samples": True, "do_not_save_grid": True}
    args.update(kw)
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**args))


def test_each_job_writes_its_first_image_s_infotext_to_params_txt(data_dir):
    params = data_dir / "params.txt"
    params.unlink(missing_ok=True)
    result = txt2img(batch_size=2)
    text = params.read_text(encoding="utf-8")
    assert text == result.infotexts[0] and text.startswith("a red fox\nNegative prompt: blurry\n")
    assert "Seed: 42," in text and "Seed: 43" not in text  # the first image's, not the second's

    rng = np.random.RandomState(0)
    picture = Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8))
    processing.process_images(processing.StableDiffusionProcessingImg2Img(
        prompt="a blue fox", steps=2, width=64, height=64, sampler_name="Euler", seed=7, init_images=[picture],
        denoising_strength=0.5, do_not_save_samples=True, do_not_save_grid=True))
    text = params.read_text(encoding="utf-8")
    assert text.startswith("a blue fox\n") and "Seed: 7," in text and "Denoising strength: 0.5" in text


def test_no_prompt_history_writes_no_params_txt(data_dir, monkeypatch):
    params = data_dir / "params.txt"
    params.unlink(missing_ok=True)
    monkeypatch.setattr(shared.cmd_opts, "no_prompt_history", True)
    assert len(txt2img().images) == 1
    assert not params.exists()
    # and the flag's --help no longer calls it "(not yet effective)"
    assert "--no-prompt-history" in cmd_args.EFFECTIVE_FLAGS
    action = next(a for a in cmd_args.parser._actions if "--no-prompt-history" in a.option_strings)
    assert cmd_args.NOT_EFFECTIVE not in action.help


def test_a_params_txt_that_cannot_be_written_does_not_fail_the_job(data_dir, monkeypatch, caplog):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(processing.atomic_files, "atomic_write_text", full_disk)
    with caplog.at_level(logging.WARNING, logger="modules.processing"):
        result = txt2img()
    assert len(result.images) == 1
    assert "could not write params.txt: [Errno 28] No space left on device" in caplog.text


@pytest.fixture
def fields():
    with gr.Blocks():
        prompt, negative = gr.Textbox(), gr.Textbox()
        steps = gr.Slider(1, 150, step=1)
        seed = gr.Number(precision=0)
    return [(prompt, "Prompt"), (negative, "Negative prompt"), (steps, "Steps"), (seed, "Seed")]


@pytest.fixture
def data_path(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "data_path", str(tmp_path))
    return tmp_path


def skipped(value) -> bool:
    return isinstance(value, type(gr.skip()))


def test_paste_reads_the_prompt_box_or_else_params_txt(fields, data_path):
    (data_path / "params.txt").write_text("a red fox\nNegative prompt: blurry\nSteps: 9, Sampler: Euler, "
                                          "Seed: 1234, Size: 64x64", encoding="utf-8")
    assert paste.from_prompt(fields, "") == ["a red fox", "blurry", 9, 1234, ""]
    assert paste.from_prompt(fields, "  \n") == ["a red fox", "blurry", 9, 1234, ""]  # blank counts as empty
    typed = "a cat\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x64"
    assert paste.from_prompt(fields, typed) == ["a cat", "", 3, 5, ""]


def _refused(fields, message: str) -> None:
    values = paste.from_prompt(fields, "")
    assert all(skipped(v) for v in values[:-1]), values  # nothing changes
    assert "class='error'" in values[-1] and message in values[-1], values[-1]


def test_params_txt_that_cannot_be_used_is_refused_with_a_message(fields, data_path, monkeypatch):
    params = data_path / "params.txt"
    _refused(fields, "There is no last generation yet (no params.txt)")
    params.write_bytes(b"a" * (paste.MAX_PARAMS_BYTES + 1))
    _refused(fields, "params.txt is larger than 256 KB")
    params.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    _refused(fields, "params.txt does not hold text")
    params.write_bytes(b"a fox \xff\xfe\nSteps: 3")
    _refused(fields, "params.txt does not hold text")
    params.write_bytes(b"\n \n")
    _refused(fields, "params.txt is empty")
    params.unlink()
    params.mkdir()
    _refused(fields, "params.txt is not a regular file")
    params.rmdir()
    if sys.platform != "win32":
        os.mkfifo(params)  # nobody writes to it: a plain open() would wait forever
        _refused(fields, "params.txt is not a regular file")
        params.unlink()

    params.write_text("a red fox\nSteps: 9, Sampler: Euler, Seed: 1234, Size: 64x64", encoding="utf-8")
    monkeypatch.setattr(shared.cmd_opts, "no_prompt_history", True)
    _refused(fields, "not kept on this server (--no-prompt-history)")
    monkeypatch.setattr(shared.cmd_opts, "no_prompt_history", False)
    monkeypatch.setattr(shared.cmd_opts, "hide_ui_dir_config", True)  # a shared server: someone else's prompt
    _refused(fields, "turned off on this server (--hide-ui-dir-config)")


def test_apply_styles_writes_the_styles_into_the_prompts_and_clears_the_selection(tmp_path, monkeypatch):
    db = StyleDatabase(tmp_path / "styles.csv")
    db.styles["oil"] = PromptStyle("oil", "masterpiece, {prompt}, oil painting", "lowres")
    db.styles["sharp"] = PromptStyle("sharp", "sharp focus", "")
    monkeypatch.setattr(styles_store, "database", lambda: db)
    assert toprow.apply_styles("a cat", "blurry", ["oil", "sharp"]) == \
        ("masterpiece, a cat, oil painting, sharp focus", "blurry, lowres", [])
    assert toprow.apply_styles("", "", []) == ("", "", [])
