"""The generation engine through A1111's public entry point, on tiny random-weight models (CPU)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from modules import images, infotext_utils, processing, sd_models, shared
from modules.engine import cfg_denoiser
from modules.engine.sampling.registry import all_samplers
from modules.engine.sampling.schedules import schedulers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {
        "sd1.safetensors": {"family": "sd1", "seed": 3},
        "sd2v.safetensors": {"family": "sd2", "seed": 4, "prediction": "v"},
        "xl.safetensors": {"family": "sdxl", "seed": 5},
        "refiner.safetensors": {"family": "sdxl_refiner", "seed": 6},
        "sd1-inpaint.safetensors": {"family": "sd1", "variant": "inpaint", "seed": 7},
    }
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def txt2img(**kw) -> processing.Processed:
    args = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 4, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 42, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True}
    args.update(kw)
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**args))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_same_settings_give_a_bit_identical_image(data_dir):
    use("sd1.safetensors")
    a, b = txt2img(), txt2img()
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    c = txt2img(seed=43)
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))


def test_random_seed_is_fixed_and_reported(data_dir):
    use("sd1.safetensors")
    result = txt2img(seed=-1)
    assert result.seed >= 0
    again = txt2img(seed=result.seed)
    assert np.array_equal(pixels(result.images[0]), pixels(again.images[0]))


def test_batch_image_i_gets_seed_plus_i(data_dir):
    use("sd1.safetensors")
    batch = txt2img(batch_size=2, n_iter=2)
    assert batch.all_seeds == [42, 43, 44, 45]
    assert len(batch.images) == 4  # no grid: do_not_save_grid
    single = txt2img(seed=43)
    # Same noise and conditioning; batched matmuls may differ in the last bit, so allow one level.
    assert np.abs(pixels(batch.images[1]) - pixels(single.images[0])).max() <= 1
    assert json.loads(batch.js())["all_seeds"] == [42, 43, 44, 45]


def test_variation_seed(data_dir):
    use("sd1.safetensors")
    base = txt2img()
    zero = txt2img(subseed=7, subseed_strength=0.0)
    varied = txt2img(subseed=7, subseed_strength=0.5)
    assert np.array_equal(pixels(base.images[0]), pixels(zero.images[0]))
    assert not np.array_equal(pixels(base.images[0]), pixels(varied.images[0]))
    assert "Variation seed: 7, Variation seed strength: 0.5" in varied.infotexts[0]


@pytest.mark.parametrize("sampler", [s.name for s in all_samplers])
def test_every_sampler_runs(data_dir, sampler):
    use("sd1.safetensors")
    result = txt2img(sampler_name=sampler, steps=3)
    assert np.isfinite(pixels(result.images[0])).all()
    assert f"Sampler: {sampler}" in result.infotexts[0]


@pytest.mark.parametrize("scheduler", [s.label for s in schedulers])
def test_every_schedule_type_runs(data_dir, scheduler):
    use("sd1.safetensors")
    result = txt2img(sampler_name="DPM++ 2M", scheduler=scheduler, steps=4)
    assert result.images[0].size == (64, 64)
    if scheduler != "Automatic":
        assert f"Schedule type: {scheduler}" in result.infotexts[0]


def test_old_combined_sampler_names_are_accepted(data_dir):
    use("sd1.safetensors")
    result = txt2img(sampler_name="Euler a Karras")
    assert "Sampler: Euler a, Schedule type: Karras" in result.infotexts[0]


@pytest.mark.parametrize(("name", "size"), [("sd2v.safetensors", (64, 64)), ("xl.safetensors", (64, 96)),
                                            ("refiner.safetensors", (64, 64)), ("sd1-inpaint.safetensors", (64, 64))])
def test_other_families_generate(data_dir, name, size):
    model = use(name)
    result = txt2img(width=size[0], height=size[1])
    assert result.images[0].size == size
    assert model.sd_checkpoint_info.model_name in result.infotexts[0]


def _record_contexts(monkeypatch):
    seen = []
    real = cfg_denoiser.unet_call

    def spy(unet, inp, **kwargs):
        seen.append(inp.context.clone())
        return real(unet, inp, **kwargs)

    monkeypatch.setattr("modules.engine.generate.unet_call", spy)
    return seen


def _encoded(text: str) -> torch.Tensor:
    from modules.engine.conditioning import PromptEncoder

    return PromptEncoder(shared.sd_model).encode([text])


def test_prompt_editing_switches_conditioning_at_the_right_step(data_dir, monkeypatch):
    use("sd1.safetensors")
    seen = _record_contexts(monkeypatch)
    txt2img(prompt="[cat:dog:2]", steps=4)
    cat, dog = _encoded("cat")[0], _encoded("dog")[0]
    assert len(seen) == 4
    # A1111 compares the 0-based step with the schedule's end step using <=: "cat" through step 2.
    assert [torch.equal(c[0], cat) for c in seen] == [True, True, True, False]
    assert torch.equal(seen[3][0], dog)


def test_prompt_editing_by_fraction_and_alternation(data_dir, monkeypatch):
    use("sd1.safetensors")
    seen = _record_contexts(monkeypatch)
    txt2img(prompt="[cat:dog:0.5]", steps=8)  # 0.5 of 8 steps: end step 4
    cat, dog = _encoded("cat")[0], _encoded("dog")[0]
    assert [torch.equal(c[0], cat) for c in seen] == [True] * 5 + [False] * 3
    assert all(torch.equal(c[0], dog) for c in seen[5:])
    seen.clear()
    txt2img(prompt="[cat|dog]", steps=5)  # A1111's schedule [[1, cat], [2, dog], [3, cat], ...] read with <=
    assert [("cat" if torch.equal(c[0], cat) else "dog" if torch.equal(c[0], dog) else "?") for c in seen] == [
        "cat", "cat", "dog", "cat", "dog"]


def test_and_composition_runs_one_row_per_subprompt(data_dir, monkeypatch):
    use("sd1.safetensors")
    seen = _record_contexts(monkeypatch)
    txt2img(prompt="a cat AND a dog:0.5", steps=2)
    assert seen[0].shape[0] == 3  # two sub-prompts + the negative


def test_long_prompts_and_break_use_more_chunks(data_dir, monkeypatch):
    use("sd1.safetensors")
    seen = _record_contexts(monkeypatch)
    txt2img(prompt="circle " * 100, negative_prompt="", steps=1)
    assert seen[0].shape[1] == 154  # two 77-token chunks; the negative ran separately (one chunk)
    seen.clear()
    txt2img(prompt="red BREAK blue", negative_prompt="x BREAK y", steps=1)
    assert seen[0].shape[1] == 154


def test_interrupt_stops_within_one_step(data_dir, monkeypatch):
    use("sd1.safetensors")
    seen = _record_contexts(monkeypatch)
    real_sample = processing.generate.sample_batch

    def sample_and_interrupt(request, callback=None, should_stop=lambda: False):
        def cb(d):
            if callback:
                callback(d)
            if d["i"] == 2:
                shared.state.interrupt()
        return real_sample(request, callback=cb, should_stop=should_stop)

    monkeypatch.setattr(processing.generate, "sample_batch", sample_and_interrupt)
    shared.state.begin(job="test")
    try:
        result = txt2img(steps=20, n_iter=3)
    finally:
        shared.state.end()
        shared.state.interrupted = False
    assert len(seen) == 3  # steps 0, 1, 2 ran; the interrupt came during step 2
    # As A1111: the interrupted image is kept (the estimate after step 2), saved, with its infotext.
    assert len(result.images) == 1 and result.all_seeds[0] == 42
    assert result.infotexts[0].split("Seed: ")[1].startswith("42,")
    monkeypatch.setattr(processing.generate, "sample_batch", real_sample)
    full = txt2img(steps=20)
    assert pixels(result.images[0]).shape == pixels(full.images[0]).shape
    assert not np.array_equal(pixels(result.images[0]), pixels(full.images[0]))  # partial, not the finished one


def test_an_interrupted_image_is_saved_like_a_finished_one(data_dir, monkeypatch, tmp_path):
    use("sd1.safetensors")
    real_sample = processing.generate.sample_batch

    def sample_and_interrupt(request, callback=None, should_stop=lambda: False):
        def cb(d):
            if callback:
                callback(d)
            if d["i"] == 1:
                shared.state.interrupt()
        return real_sample(request, callback=cb, should_stop=should_stop)

    monkeypatch.setattr(processing.generate, "sample_batch", sample_and_interrupt)
    shared.state.begin(job="test")
    try:
        result = txt2img(steps=20, do_not_save_samples=False, outpath_samples=str(tmp_path))
    finally:
        shared.state.end()
        shared.state.interrupted = False
    saved = list(tmp_path.rglob("*.png"))
    assert len(saved) == 1 and len(result.images) == 1
    with Image.open(saved[0]) as im:
        assert im.info["parameters"] == result.infotexts[0]


def test_interrupt_before_the_first_step_gives_no_image(data_dir):
    use("sd1.safetensors")
    shared.state.begin(job="test")
    shared.state.interrupt()
    try:
        result = txt2img(steps=4)
    finally:
        shared.state.end()
        shared.state.interrupted = False
    assert result.images == []


def test_extra_network_tags_are_not_prompt_words_and_are_reported(data_dir, monkeypatch):
    use("sd1.safetensors")
    seen = []
    real_sample = processing.generate.sample_batch

    def record(request, **kw):
        seen.append((list(request.prompts), list(request.negative_prompts)))
        return real_sample(request, **kw)

    monkeypatch.setattr(processing.generate, "sample_batch", record)
    tagged = txt2img(prompt="a red circle <lora:detail:0.8>, <lyco:style>", negative_prompt="blurry <hypernet:x:1>")
    plain = txt2img(prompt="a red circle , ", negative_prompt="blurry ")
    assert seen[0] == (["a red circle , "], ["blurry "])
    assert np.array_equal(pixels(tagged.images[0]), pixels(plain.images[0]))  # the tags changed nothing
    # the LoRA files do not exist: each is named; hypernetworks have no handler at all
    assert tagged.comments == ("LoRA not applied: detail: not found in the LoRA folders\n"
                               "LoRA not applied: style: not found in the LoRA folders\n"
                               "Extra networks not applied (not supported in this version): hypernet:x")
    assert tagged.infotexts[0].startswith("a red circle <lora:detail:0.8>, <lyco:style>\n")  # kept, as in A1111
    assert plain.comments == ""


def test_saved_png_carries_the_infotext_in_a1111_layout(data_dir):
    use("sd1.safetensors")
    result = txt2img(do_not_save_samples=False, prompt="a red circle", negative_prompt="blurry")
    folder = os.path.join(str(data_dir), "outputs", "txt2img-images")
    day = os.listdir(folder)[0]
    files = sorted(os.listdir(os.path.join(folder, day)))
    assert files[-1] == f"{len(files) - 1:05d}-42.png"
    saved = Image.open(os.path.join(folder, day, files[-1]))
    text = saved.info["parameters"]
    model = shared.sd_model
    assert text == (
        "a red circle\nNegative prompt: blurry\n"
        f"Steps: 4, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x64, Model hash: {model.sd_model_hash}, "
        f"Model: sd1, Version: {processing.VERSION}"
    )
    assert text == result.infotexts[0]
    params = infotext_utils.parse_generation_parameters(text)
    assert params["Prompt"] == "a red circle" and params["Seed"] == "42" and params["Size-1"] == "64"
    assert images.read_info_from_image(saved)[0] == text


def test_tiling_and_clip_skip_are_recorded(data_dir):
    use("sd1.safetensors")
    shared.opts.data["CLIP_stop_at_last_layers"] = 2
    try:
        result = txt2img(tiling=True)
    finally:
        shared.opts.data["CLIP_stop_at_last_layers"] = 1
    assert "Clip skip: 2" in result.infotexts[0] and result.infotexts[0].count("Tiling") == 1
    plain = txt2img()
    assert not np.array_equal(pixels(plain.images[0]), pixels(result.images[0]))


def test_bad_requests_are_refused_with_a_message(data_dir):
    use("sd1.safetensors")
    with pytest.raises(ValueError, match="multiples of 8"):
        txt2img(width=65)
    with pytest.raises(ValueError, match="unknown sampler 'Nope'"):
        txt2img(sampler_name="Nope")
    with pytest.raises(ValueError, match="prompt: brackets nested more than 100 levels deep"):
        txt2img(prompt="(" * 300 + "x" + ")" * 300)
    with pytest.raises(ValueError, match="hr_upscaler: unknown upscaler 'Nope'"):
        txt2img(enable_hr=True, hr_upscaler="Nope")
    with pytest.raises(ValueError, match="restore_faces: no CodeFormer model in models/Codeformer"):
        txt2img(restore_faces=True)


def test_sdxl_refiner_takes_over_at_the_switch_step(data_dir, monkeypatch):
    base = use("xl.safetensors")
    calls = []
    real = cfg_denoiser.unet_call

    def spy(unet, inp, **kwargs):
        calls.append(unet)
        return real(unet, inp, **kwargs)

    monkeypatch.setattr("modules.engine.generate.unet_call", spy)
    result = txt2img(steps=5, refiner_checkpoint="refiner.safetensors", refiner_switch_at=0.6)
    refiner_unet = [u for u in calls if u is not base.unet]
    assert len(calls) == 5 and calls[:3] == [base.unet] * 3 and len(refiner_unet) == 2
    assert refiner_unet[0].config.projection_class_embeddings_input_dim != base.unet.config.projection_class_embeddings_input_dim
    info = sd_models.get_closet_checkpoint_match("refiner.safetensors")
    assert f"Refiner: {info.short_title}, Refiner switch at: 0.6" in result.infotexts[0]
    assert shared.sd_model is base  # the base model stays current
    with pytest.raises(ValueError, match="refiner_checkpoint: Checkpoint not found"):
        txt2img(refiner_checkpoint="missing", refiner_switch_at=0.5)


def test_styles_from_styles_csv_apply_with_the_prompt_placeholder(data_dir):
    from modules.styles import StyleDatabase

    (data_dir / "styles.csv").write_text('name,prompt,negative_prompt\n"Glow","{prompt}, glowing","dark"\n',
                                         encoding="utf-8")
    shared.prompt_styles = StyleDatabase(str(data_dir / "styles.csv"))
    use("sd1.safetensors")
    result = txt2img(prompt="a red circle", negative_prompt="blurry", styles=["Glow"])
    assert result.all_prompts == ["a red circle, glowing"]
    assert result.infotexts[0].startswith("a red circle, glowing\nNegative prompt: blurry, dark\n")


def test_skip_moves_on_to_the_next_batch(data_dir, monkeypatch):
    use("sd1.safetensors")
    real_sample = processing.generate.sample_batch
    batches = []

    def sample_and_skip_first(request, callback=None, should_stop=lambda: False):
        batches.append(request.seeds[0])

        def cb(d):
            if callback:
                callback(d)
            if len(batches) == 1 and d["i"] == 1:
                shared.state.skip()
        return real_sample(request, callback=cb, should_stop=should_stop)

    monkeypatch.setattr(processing.generate, "sample_batch", sample_and_skip_first)
    result = txt2img(n_iter=3, steps=4)
    assert batches == [42, 43, 44]
    # The skipped batch keeps its partial image (A1111 returns the last latent), and the job goes on.
    assert [int(t.split("Seed: ")[1].split(",")[0]) for t in result.infotexts] == [42, 43, 44]
    assert len(result.images) == 3


def test_progress_and_live_previews_during_sampling(data_dir, monkeypatch):
    use("sd1.safetensors")
    shared.opts.data.update(live_previews_enable=True, show_progress_every_n_steps=2)
    seen = []
    real_sample = processing.generate.sample_batch

    def watch(request, callback=None, should_stop=lambda: False):
        def cb(d):
            callback(d)
            seen.append((shared.state.sampling_step, shared.state.sampling_steps, shared.state.progress()[0],
                         shared.state.current_image))
        return real_sample(request, callback=cb, should_stop=should_stop)

    monkeypatch.setattr(processing.generate, "sample_batch", watch)
    try:
        txt2img(steps=4)
    finally:
        shared.opts.data["live_previews_enable"] = False
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [round(s[2], 2) for s in seen] == [0.26, 0.51, 0.76, 1.0]  # A1111's formula starts at 0.01
    previews = [s[3] for s in seen if s[3] is not None]
    assert previews and previews[-1].size == (64, 64)


def test_batches_save_every_image_and_a_grid(data_dir):
    use("sd1.safetensors")
    result = txt2img(batch_size=2, n_iter=2, do_not_save_samples=False, do_not_save_grid=False, seed=500)
    assert result.index_of_first_image == 1 and len(result.images) == 5
    assert result.images[0].size == (128, 128)  # 2x2 grid of 64x64
    grids = os.path.join(str(data_dir), "outputs", "txt2img-grids")
    day = os.listdir(grids)[0]
    assert sorted(os.listdir(os.path.join(grids, day)))[-1].startswith("grid-")
    samples = os.path.join(str(data_dir), "outputs", "txt2img-images", day)
    assert {f.split("-", 1)[1] for f in os.listdir(samples)} >= {"500.png", "501.png", "502.png", "503.png"}


def test_token_counter_for_the_ui(data_dir):
    from modules.engine.conditioning import PromptEncoder

    encoder = PromptEncoder(use("sd1.safetensors"))
    assert encoder.token_count("a red circle") == (3, 75)
    assert encoder.token_count("(a:1.3) [red] circle") == (3, 75)
    assert encoder.token_count("circle " * 80) == (80, 150)
    from modules.ui import toprow

    assert toprow.count_tokens("a red circle <lora:film grain:0.8>") == toprow.counter_html(3, 75)
    # a steps change recounts both prompts: the longer prompt of a schedule counts only when its step is reached
    negative = "[blurry:a blurry dark photo:10]"
    assert toprow.count_both("a red circle", negative, 20) == (toprow.counter_html(3, 75), toprow.counter_html(4, 75))
    assert toprow.count_both("a red circle", negative, 4) == (toprow.counter_html(3, 75), toprow.counter_html(1, 75))
