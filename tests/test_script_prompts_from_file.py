"""The Prompts from file or textbox script (scripts/prompts_from_file.py) on a tiny model."""

from __future__ import annotations

import gradio as gr
import pytest
from script_test_support import default_args, load_builtin, tiny_data_dir

from modules import processing


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    with tiny_data_dir(isolated_data_dir, tmp_path_factory.mktemp("data")) as root:
        yield root


@pytest.fixture(scope="module")
def loaded():
    return load_builtin("prompts_from_file.py")


@pytest.fixture(scope="module")
def module(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def from_file(loaded):
    return loaded[1]


def args_with(script, text: str, **flags) -> list:
    args = default_args(script)
    args[3] = text
    for name, value in flags.items():
        args[["iterate", "same_seed", "position"].index(name)] = value
    return args


def request(**kw) -> processing.StableDiffusionProcessingTxt2Img:
    fields = {"prompt": "", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 11,
              "do_not_save_samples": True}
    fields.update(kw)
    return processing.StableDiffusionProcessingTxt2Img(**fields)


def test_ui_has_a1111s_arguments_and_ids(from_file):
    with gr.Blocks():
        controls = from_file.ui(False)
    assert [c.elem_id for c in controls] == [
        "script_txt2img_prompts_from_file_or_textbox_checkbox_iterate",
        "script_txt2img_prompts_from_file_or_textbox_checkbox_iterate_batch",
        "script_txt2img_prompts_from_file_or_textbox_prompt_position",
        "script_txt2img_prompts_from_file_or_textbox_prompt_txt"]
    assert [c.value for c in controls] == [False, False, "start", ""]


def test_lines_with_options_give_the_requested_pictures(data_dir, from_file):
    text = "\n".join([
        "a red circle",
        "",
        '--prompt "a blue square" on grass --negative_prompt "ugly" --steps 1 --seed 5 --width 64 --height 96 '
        '--cfg_scale 3.5 --sampler_name "euler a" --styles "" --subseed_strength 0',
    ])
    result = from_file.run(request(), *args_with(from_file, text))
    assert result.all_prompts == ["a red circle", "a blue square on grass"]
    assert result.all_negative_prompts == ["", "ugly"]
    assert result.all_seeds == [11, 5]
    assert [image.size for image in result.images] == [(64, 64), (64, 96)]
    first, second = result.infotexts
    assert "Steps: 2, Sampler: Euler, CFG scale: 7, Seed: 11, Size: 64x64" in first
    assert second.startswith("a blue square on grass\nNegative prompt: ugly\n")
    assert "Steps: 1, Sampler: Euler a, CFG scale: 3.5, Seed: 5, Size: 64x96" in second


def test_iterate_seed_every_line_and_same_random_seed(data_dir, from_file):
    iterated = from_file.run(request(seed=20, steps=1), *args_with(from_file, "a\nb", iterate=True))
    assert iterated.all_seeds == [20, 21]
    same = from_file.run(request(seed=-1, steps=1), *args_with(from_file, "a\nb", same_seed=True))
    assert same.all_seeds[0] == same.all_seeds[1] != -1


def test_page_prompt_joins_each_line(module):
    p = request(prompt="photo", negative_prompt="bad")
    assert module.line_request(p, {"prompt": "cat"}, "start").prompt == "cat photo"
    assert module.line_request(p, {"prompt": "cat", "negative_prompt": "dark"}, "end").negative_prompt == "bad dark"
    assert module.line_request(p, {"steps": 3}, "start").prompt == "photo"
    assert p.steps == 2  # the page's request is not changed by a line


@pytest.mark.parametrize(("line", "expected"), [
    ("--prompt a b c --steps 3", {"prompt": "a b c", "steps": 3}),
    ("--negative_prompt 'x y' --cfg_scale 4 --tiling true", {"negative_prompt": "x y", "cfg_scale": 4.0,
                                                              "tiling": True}),
    ("--sampler_name DPM++\\ 2M --seed -1", {"sampler_name": "DPM++ 2M", "seed": -1}),
    ("--styles 'one, two'", {"styles": ["one", "two"]}),
])
def test_option_syntax(module, line, expected):
    assert module.cmdargs(line) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("a\n--prompt b --colour red", "line 2: unknown commandline option: --colour"),
    ("--steps many", "line 1: --steps: invalid literal"),
    ("--sampler_name Nonesuch", "unknown sampler 'Nonesuch'"),
    ("--sd_model missing", "unknown checkpoint 'missing'"),
    ("--prompt x --outpath_samples elsewhere", "unknown commandline option: --outpath_samples"),
    ("--prompt x --width 60", "--width 60: width and height must be multiples of 8"),
    ("--prompt x --steps", "missing argument for command line option --steps"),
    ('--prompt "unclosed', "cannot read the line"),
])
def test_bad_lines_are_refused_before_anything_runs(data_dir, from_file, monkeypatch, text, message):
    def must_not_run(p):
        raise AssertionError("generated before every line was read")

    monkeypatch.setattr(processing, "process_images", must_not_run)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        from_file.run(request(), *args_with(from_file, text))


def test_a_prompt_with_dashes_inside_is_a_prompt(module):
    assert module.read_jobs("masterpiece -- best quality\n --steps 2") == [
        {"prompt": "masterpiece -- best quality"}, {"steps": 2}]
