"""The X/Y/Z plot script (scripts/xyz_grid.py) on tiny models: cells equal single runs, labels, infotexts,
value parsing, and refusals before anything is generated."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from script_test_support import default_args, load_builtin, pixels, tiny_data_dir, txt2img

from modules import grid_labels, images, infotext_utils, processing, shared, xyz_axes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    with tiny_data_dir(isolated_data_dir, tmp_path_factory.mktemp("data"),
                       ("sd1.safetensors", "other.safetensors")) as root:
        yield root


@pytest.fixture(scope="module")
def xyz():
    return load_builtin("xyz_grid.py")[1]


def xyz_args(script, x=("Nothing", ""), y=("Nothing", ""), z=("Nothing", ""), **flags) -> list:
    args = default_args(script)
    for i, (kind, values) in enumerate((x, y, z)):
        args[3 * i:3 * i + 3] = [kind, values, []]
    names = ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
             "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode"]
    for name, value in flags.items():
        args[9 + names.index(name)] = value
    return args


def request(**kw) -> processing.StableDiffusionProcessingTxt2Img:
    return txt2img(**{"prompt": "a red circle", **kw})


def test_ui_has_a1111s_arguments_and_ids(xyz):
    with gr.Blocks():
        controls = xyz.ui(False)
    assert len(controls) == 18  # A1111 1.10's run(p, x_type, ..., margin_size, csv_mode)
    assert controls[0].elem_id == xyz.elem_id("x_type") and controls[7].elem_id == xyz.elem_id("z_values")
    assert controls[9].label == "Draw legend" and controls[12].label == "Keep -1 for seeds"
    assert controls[0].value == "Seed" and controls[3].value == "Nothing"
    labels = [opt.label for opt in xyz.current_axis_options]
    for label in ("Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Prompt S/R", "Prompt order",
                  "Sampler", "Schedule type", "Checkpoint name", "Clip skip", "VAE", "Styles", "Size"):
        assert label in labels
    img2img_labels = [o.label for o in xyz_axes.axes_for(True)]
    for label in ("Hires steps", "Hires sampler", "Hires upscaler"):  # A1111's, txt2img only
        assert label in labels and label not in img2img_labels
    assert "Denoising" in labels and "Denoising" in img2img_labels  # img2img's, or the hires pass's
    assert labels.index("Hires steps") == labels.index("Steps") + 1  # A1111's order


def grids_saved(data_dir, pattern: str) -> set:
    return set((data_dir / "outputs" / "txt2img-grids").rglob(pattern))


def test_steps_by_cfg_grid_cells_match_single_runs(data_dir, xyz):
    before = grids_saved(data_dir, "xyz_grid-*.png")
    result = xyz.run(request(), *xyz_args(xyz, ("Steps", "1, 2"), ("CFG Scale", "3, 7.5"), include_lone_images=True))
    assert len(result.images) == 5 and result.index_of_first_image == 1
    seed = result.all_seeds[0]
    assert seed >= 0 and result.all_seeds == [seed] * 4  # fixed once: every cell shares it
    cells = [(1, 3.0), (2, 3.0), (1, 7.5), (2, 7.5)]  # x changes fastest
    for (steps, cfg), image, text in zip(cells, result.images[1:], result.infotexts[1:], strict=True):
        single = processing.process_images(request(seed=seed, steps=steps, cfg_scale=cfg))
        assert np.array_equal(pixels(image), pixels(single.images[0]))
        assert text == single.infotexts[0]
        assert f"Steps: {steps}," in text and f"CFG scale: {int(cfg) if cfg.is_integer() else cfg}," in text

    grid = result.images[0]
    hor = [[grid_labels.GridAnnotation(t)] for t in ("Steps: 1", "Steps: 2")]
    ver = [[grid_labels.GridAnnotation(t)] for t in ("CFG Scale: 3.0", "CFG Scale: 7.5")]
    left, top = grid_labels.annotation_margins(64, 64, hor, ver)
    assert left == 48 and top > 0  # row labels take 3/4 of a cell, column labels their text's height
    assert grid.size == (2 * 64 + left, 2 * 64 + top)
    assert np.array_equal(pixels(grid.crop((left + 64, top + 64, left + 128, top + 128))), pixels(result.images[4]))
    text = result.infotexts[0]
    assert text.startswith(result.infotexts[1].split("Version:")[0])  # the first cell's, plus the plot's
    assert 'Script: X/Y/Z plot, X Type: Steps, X Values: "1, 2", Y Type: CFG Scale, Y Values: "3, 7.5"' in text
    saved = grids_saved(data_dir, "xyz_grid-*.png") - before
    assert len(saved) == 1
    with Image.open(saved.pop()) as image:
        assert image.size == grid.size
        assert images.read_info_from_image(image)[0] == text


def test_without_legend_the_grid_is_just_the_cells(data_dir, xyz):
    result = xyz.run(request(), *xyz_args(xyz, ("Steps", "1, 2"), draw_legend=False, include_lone_images=True))
    grid, first, second = result.images
    assert grid.size == (128, 64)
    assert np.array_equal(pixels(grid.crop((64, 0, 128, 64))), pixels(second))


def test_z_axis_gives_sub_grids(data_dir, xyz):
    result = xyz.run(request(steps=1), *xyz_args(xyz, z=("Seed", "1, 2"), include_sub_grids=True))
    main, sub1, sub2 = result.images
    assert sub1.size == sub2.size == (64, 64)
    assert main.width == 128 and main.height > 64  # the Z labels above the sub grids
    assert "Z Type: Seed, Z Values: \"1, 2\"" in result.infotexts[0]
    assert "Z Type" not in result.infotexts[1] and "Seed: 2," in result.infotexts[2]


def test_seed_axis_fixes_minus_one_and_keep_minus_one_does_not(data_dir, xyz):
    result = xyz.run(request(steps=1), *xyz_args(xyz, ("Seed", "-1, 5"), include_lone_images=True))
    random_seed = result.all_seeds[0]
    assert random_seed != -1 and result.all_seeds[1] == 5
    assert f"Fixed X Values: \"{random_seed}, 5\"" in result.infotexts[0]
    kept = xyz.run(request(steps=1, seed=-1), *xyz_args(xyz, ("Steps", "1, 1"), no_fixed_seeds=True,
                                                        include_lone_images=True))
    assert kept.all_seeds[0] != kept.all_seeds[1]  # each cell drew its own seed


def test_vary_seeds_for_x(data_dir, xyz):
    result = xyz.run(request(steps=1, seed=100), *xyz_args(xyz, ("Steps", "1, 1"), vary_seeds_x=True,
                                                            include_lone_images=True))
    assert result.all_seeds == [100, 101]


def test_checkpoint_and_clip_skip_axes_switch_per_cell_and_are_put_back(data_dir, xyz):
    before = shared.sd_model.sd_checkpoint_info.filename
    clip_skip = shared.opts.data.get("CLIP_stop_at_last_layers")
    result = xyz.run(request(steps=1), *xyz_args(xyz, ("Checkpoint name", "sd1, other"), ("Clip skip", "1, 2"),
                                                 include_lone_images=True))
    texts = result.infotexts[1:]
    assert "Model: sd1," in texts[0] and "Model: other," in texts[1] and "Clip skip" not in texts[0]
    assert "Model: other," in texts[3] and "Clip skip: 2," in texts[3]
    assert shared.sd_model.sd_checkpoint_info.filename == before
    assert shared.opts.data.get("CLIP_stop_at_last_layers") == clip_skip
    assert not np.array_equal(pixels(result.images[1]), pixels(result.images[2]))


def test_sampler_parameter_axis_reaches_the_engine_and_is_removed_after(data_dir, xyz):
    before = shared.opts.data.get("s_churn", "absent")
    result = xyz.run(request(steps=2), *xyz_args(xyz, ("Sigma Churn", "0, 1"), include_lone_images=True))
    assert "Sigma churn: 0.0," in result.infotexts[1] and "Sigma churn: 1.0," in result.infotexts[2]
    assert not np.array_equal(pixels(result.images[1]), pixels(result.images[2]))
    assert shared.opts.data.get("s_churn", "absent") == before


def test_a_failing_cell_stays_blank_and_is_reported(data_dir, xyz, monkeypatch):
    real = processing.process_images

    def fails_at_two_steps(p):
        if p.steps == 2:
            raise RuntimeError("the GPU caught fire")
        return real(p)

    monkeypatch.setattr(processing, "process_images", fails_at_two_steps)
    result = xyz.run(request(), *xyz_args(xyz, ("Steps", "1, 2"), include_lone_images=True))
    assert pixels(result.images[2]).max() == 0 and pixels(result.images[1]).max() > 0
    assert "cell 2 failed: RuntimeError: the GPU caught fire" in result.comments
    with pytest.raises(RuntimeError, match="caught fire"):  # no cell worked: the plot fails with the reason
        xyz.run(request(), *xyz_args(xyz, ("Steps", "2")))


def test_prompt_search_and_replace_and_order():
    p = request(prompt="a red circle, blue", negative_prompt="red")
    xyz_axes.apply_prompt(p, "green", ["red", "green"])
    assert (p.prompt, p.negative_prompt) == ("a green circle, blue", "green")
    xyz_axes.apply_order(p, ("blue", "circle"), [])
    assert p.prompt == "a green blue, circle"
    with pytest.raises(ValueError, match="did not find purple"):
        xyz_axes.apply_prompt(p, "x", ["purple", "x"])


def test_unknown_sampler_is_refused_by_name_before_generating(data_dir, xyz, monkeypatch):
    def must_not_run(p):
        raise AssertionError("generated before the values were checked")

    monkeypatch.setattr(processing, "process_images", must_not_run)
    with pytest.raises(ValueError, match="Unknown sampler: Nonesuch"):
        xyz.run(request(), *xyz_args(xyz, ("Steps", "1, 2"), ("Sampler", "Euler, Nonesuch")))
    for axis, values, message in (("Checkpoint name", "sd1, missing", "Unknown checkpoint: missing"),
                                  ("Steps", "1, x", "'x' is not a whole number"),
                                  ("Size", "64x64, 60x64", "multiples of 8"),
                                  ("Clip skip", "1, 99", "CLIP_stop_at_last_layers"),
                                  ("Schedule type", "Karras, Sideways", "Unknown schedule type: Sideways"),
                                  ("VAE", "Automatic, nothing.pt", "Unknown VAE: nothing.pt"),
                                  ("Prompt S/R", "purple, green", "did not find purple"),
                                  ("Steps", "1-100000000", "at most")):
        with pytest.raises(ValueError, match=message):
            xyz.run(request(), *xyz_args(xyz, (axis, values)))


def test_axis_type_by_index_with_values_from_the_dropdown(data_dir, xyz):
    sampler = [o.label for o in xyz_axes.axes_for(False)].index("Sampler")
    args = xyz_args(xyz, (sampler, ""), include_lone_images=True)
    args[2] = ["Euler", "euler a"]  # the page's multiselect for an axis with choices
    result = xyz.run(request(steps=1), *args)
    assert "Sampler: Euler," in result.infotexts[1] and "Sampler: Euler a," in result.infotexts[2]
    assert 'X Type: Sampler, X Values: "Euler,euler a"' in result.infotexts[0]


@pytest.mark.parametrize(("label", "text", "expected"), [
    ("Steps", "1, 2, 3", [1, 2, 3]),
    ("Steps", "1-5", [1, 2, 3, 4, 5]),
    ("Steps", "1-5 (+2)", [1, 3, 5]),
    ("Steps", "10-1 (-3)", [10, 7, 4]),  # A1111's end is "end + 1" whichever way the step goes
    ("Steps", "1-10 [4]", [1, 4, 7, 10]),
    ("Steps", "[1..9]", [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("Steps", "[3..1]", [3, 2, 1]),
    ("Steps", "1-3, 8, [10..11]", [1, 2, 3, 8, 10, 11]),
    ("Steps", " 2 - 4 ", [2, 3, 4]),
    ("CFG Scale", "1-2 (+0.5)", [1.0, 1.5, 2.0]),
    ("CFG Scale", "0-1 [3]", [0.0, 0.5, 1.0]),
    ("CFG Scale", "7, 7.5", [7.0, 7.5]),
    ("CFG Scale", "[1.5..3]", [1.5, 2.5]),
    ("Seed", "-1, 5", [-1, 5]),
    ("Prompt S/R", 'red, "green, dark", blue', ["red", "green, dark", "blue"]),
    ("Prompt order", "a, b", [("a", "b"), ("b", "a")]),
    ("Size", "64x64, 128x96", ["64x64", "128x96"]),
])
def test_value_syntax(label, text, expected):
    opt = xyz_axes.find_axis(xyz_axes.axes_for(False), label)
    values = xyz_axes.parse_axis_values(opt, text, None, csv_mode=True,
                                        p=request(prompt="red a b"))
    assert values == pytest.approx(expected) if label == "CFG Scale" else values == expected


def test_loop_order_puts_the_costliest_axis_outermost():
    assert xyz_axes.loop_order(0, 0, 0) == (2, 1, 0)  # A1111's default: z, then y, x innermost
    assert xyz_axes.loop_order(1.0, 0, 0.7) == (0, 2, 1)
    assert xyz_axes.loop_order(0, 1.0, 0) == (1, 2, 0)


def hires_request(**kw) -> processing.StableDiffusionProcessingTxt2Img:
    return request(steps=1, enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, **kw)


def test_hires_axes_reach_the_second_pass(data_dir, xyz):
    result = xyz.run(hires_request(), *xyz_args(xyz, ("Hires steps", "1, 2"), ("Denoising", "0.3, 0.9"),
                                                 include_lone_images=True))
    texts = result.infotexts[1:]
    assert [im.size for im in result.images[1:]] == [(128, 128)] * 4  # every cell got its hires pass
    assert "Hires steps: 1," in texts[0] and "Hires steps: 2," in texts[1]
    assert "Denoising strength: 0.3," in texts[0] and "Denoising strength: 0.9," in texts[3]
    assert not np.array_equal(pixels(result.images[2]), pixels(result.images[4]))  # 2 hires steps: 0.3 vs 0.9

    result = xyz.run(hires_request(), *xyz_args(xyz, ("Hires upscaler", "Latent, Latent (nearest)"),
                                                 ("Hires sampler", "Euler, DPM++ 2M"), include_lone_images=True))
    texts = result.infotexts[1:]
    assert "Hires upscaler: Latent," in texts[0] and "Hires upscaler: Latent (nearest)" in texts[1]
    assert "Hires sampler" not in texts[0] and "Hires sampler: DPM++ 2M" in texts[2]  # A1111: only when it differs
    assert not np.array_equal(pixels(result.images[1]), pixels(result.images[2]))


def test_hires_axes_are_refused_by_name_before_generating(data_dir, xyz, monkeypatch):
    def must_not_run(p):
        raise AssertionError("generated before the values were checked")

    monkeypatch.setattr(processing, "process_images", must_not_run)
    for axis, values, message in (("Hires sampler", "Euler, Nonesuch", "Unknown sampler: Nonesuch"),
                                  ("Hires upscaler", "Latent, 4x-NoSuchModel", "Unknown hires upscaler: 4x-NoSuch"),
                                  ("Hires steps", "1, -2", "out of range"),
                                  ("Denoising", "0.5, 1.5", "out of range")):
        with pytest.raises(ValueError, match=message):
            xyz.run(hires_request(), *xyz_args(xyz, (axis, values)))
    for axis, values in (("Hires steps", "1, 2"), ("Hires upscaler", "Latent"), ("Denoising", "0.5")):
        with pytest.raises(ValueError, match=f"{axis}: turn on Hires. fix"):
            xyz.run(request(), *xyz_args(xyz, (axis, values)))


def test_token_merging_and_fp8_axes_change_the_cells_and_are_put_back(data_dir, xyz):
    fp8_before = shared.opts.data.get("fp8_storage", "Disable")
    result = xyz.run(request(steps=1), *xyz_args(xyz, ("Token merging ratio", "0, 0.5"), ("FP8 mode", "Disable, Enable"),
                                                 include_lone_images=True))
    texts = result.infotexts[1:]
    assert "Token merging ratio" not in texts[0] and "Token merging ratio: 0.5" in texts[1]
    assert "FP8 weight" not in texts[0] and "FP8 weight: Enable" in texts[2]
    cells = [pixels(image) for image in result.images[1:]]
    assert not np.array_equal(cells[0], cells[1]) and not np.array_equal(cells[0], cells[2])
    assert shared.opts.data.get("fp8_storage", "Disable") == fp8_before
    seed = int(infotext_utils.parse_generation_parameters(texts[0])["Seed"])
    plain = processing.process_images(request(steps=1, seed=seed))
    assert not shared.sd_model.fp8_storage  # the next job goes back to the file's weights
    assert np.array_equal(pixels(plain.images[0]), cells[0])


def test_token_merging_and_fp8_values_are_refused_by_name(data_dir, xyz):
    for axis, values, message in (("Token merging ratio", "0, 1.5", "Token merging ratio value \"1.5\" out of range"),
                                  ("FP8 mode", "Disable, Sometimes", "fp8_storage: 'Sometimes' is not one of")):
        with pytest.raises(ValueError, match=message):
            xyz.run(request(steps=1), *xyz_args(xyz, (axis, values)))
