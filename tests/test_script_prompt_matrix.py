"""The Prompt matrix script (scripts/prompt_matrix.py) on a tiny model."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from script_test_support import default_args, load_builtin, pixels, tiny_data_dir, txt2img

from modules import grid_labels, images, processing


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    with tiny_data_dir(isolated_data_dir, tmp_path_factory.mktemp("data")) as root:
        yield root


@pytest.fixture(scope="module")
def loaded():
    return load_builtin("prompt_matrix.py")


@pytest.fixture(scope="module")
def module(loaded):
    return loaded[0]


@pytest.fixture(scope="module")
def matrix(loaded):
    return loaded[1]


def request(**kw) -> processing.StableDiffusionProcessingTxt2Img:
    return txt2img(**{"prompt": "a cat|red|blue", "steps": 1, **kw})


def test_ui_has_a1111s_arguments_and_ids(matrix):
    with gr.Blocks():
        controls = matrix.ui(False)
    assert [c.elem_id for c in controls] == [
        "script_txt2img_prompt_matrix_put_at_start", "script_txt2img_prompt_matrix_different_seeds",
        "script_txt2img_prompt_matrix_prompt_type", "script_txt2img_prompt_matrix_variations_delimiter",
        "script_txt2img_prompt_matrix_margin_size"]
    assert [c.value for c in controls] == [False, False, "positive", "comma", 0]


@pytest.mark.parametrize(("prompt", "at_start", "delimiter", "expected"), [
    ("a cat|red|blue", False, ", ", ["a cat", "a cat, red", "a cat, blue", "a cat, red, blue"]),
    ("a cat|red|blue", True, " ", ["a cat", "red a cat", "blue a cat", "red blue a cat"]),
    ("a cat | red, | blue", False, ", ", ["a cat ", "a cat , red", "a cat , blue", "a cat , red, blue"]),
    ("no bars", False, ", ", ["no bars"]),
])
def test_combinations(module, prompt, at_start, delimiter, expected):
    assert module.matrix_prompts(prompt, at_start, delimiter)[1] == expected


def test_two_parts_give_four_pictures_with_one_seed_and_a_labelled_grid(data_dir, matrix):
    grids = data_dir / "outputs" / "txt2img-grids"
    before = set(grids.rglob("prompt_matrix-*.png"))
    result = matrix.run(request(batch_size=2), *default_args(matrix))
    assert len(result.images) == 5 and result.index_of_first_image == 1
    assert result.all_prompts == ["a cat", "a cat, red", "a cat, blue", "a cat, red, blue"]
    seed = result.all_seeds[0]
    assert result.all_seeds == [seed] * 4
    for prompt, text in zip(result.all_prompts, result.infotexts[1:], strict=True):
        assert text.startswith(prompt + "\nNegative prompt: blurry\n") and f"Seed: {seed}," in text
    single = processing.process_images(request(prompt="a cat, blue", seed=seed))
    assert np.abs(pixels(single.images[0]) - pixels(result.images[3])).max() <= 1  # batched: last bit may differ

    grid = result.images[0]
    labels = [[grid_labels.GridAnnotation("red", is_active=bool(pos))] for pos in (0, 1)]
    rows = [[grid_labels.GridAnnotation("blue", is_active=bool(pos))] for pos in (0, 1)]
    left, top = grid_labels.annotation_margins(64, 64, labels, rows)
    assert grid.size == (128 + left, 128 + top) and left == 48 and top > 0
    assert np.array_equal(pixels(grid.crop((left + 64, top, left + 128, top + 64))), pixels(result.images[2]))
    saved = set(grids.rglob("prompt_matrix-*.png")) - before
    assert len(saved) == 1
    with Image.open(saved.pop()) as image:
        assert image.size == grid.size
        assert images.read_info_from_image(image)[0] == result.infotexts[0]


def test_variable_part_at_start_different_seeds_and_a_short_last_batch(data_dir, matrix):
    args = default_args(matrix)
    args[0:4] = [True, True, "positive", "space"]
    result = matrix.run(request(prompt="a cat|red", seed=7, batch_size=3), *args)
    assert result.all_prompts == ["a cat", "red a cat"]  # one picture per combination, not a full batch of 3
    assert result.all_seeds == [7, 8] and len(result.images) == 3


def test_negative_prompt_matrix(data_dir, matrix):
    args = default_args(matrix)
    args[2] = "negative"
    result = matrix.run(request(prompt="a cat", negative_prompt="blurry|dark", seed=3), *args)
    assert result.all_negative_prompts == ["blurry", "blurry, dark"]
    assert result.all_prompts == ["a cat", "a cat"] and result.all_seeds == [3, 3]


def test_bad_choices_are_refused(data_dir, matrix):
    with pytest.raises(ValueError, match="prompt type"):
        matrix.run(request(), False, False, "sideways", "comma", 0)
    with pytest.raises(ValueError, match="joining char"):
        matrix.run(request(), False, False, "positive", "tab", 0)
