"""Conditioning kept between jobs (modules/engine/cond_cache.py, A1111's cached_c / cached_uc) on tiny models (CPU).

Every cached result is compared bit for bit with the picture the same job gives with the cache switched off; the
text encoder's runs are counted through PromptEncoder._encode_chunk (one call per encoder per chunk).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_files import TE_LAYERS, kohya_lora, module_of, write
from test_offload import generate_image as generate
from test_offload import use

from modules import shared, textual_inversion
from modules.engine import cond_cache, hooks
from modules.engine.conditioning import PromptEncoder
from modules.models import offload
from modules.networks import files, networks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"a.safetensors": {"family": "sd1", "seed": 3}, "b.safetensors": {"family": "sd1", "seed": 4},
                   "xl.safetensors": {"family": "sdxl", "seed": 5}}
    settings = {"live_previews_enable": False, "sd_checkpoints_limit": 3}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, settings) as root:
        yield root


@pytest.fixture
def runs(data_dir, monkeypatch) -> list[int]:
    """A fresh cache and embeddings database, model a loaded; the list grows by one per text-encoder run."""
    monkeypatch.setattr(textual_inversion, "embedding_db", textual_inversion.EmbeddingDatabase())
    use("a.safetensors")
    cond_cache.clear()
    calls: list[int] = []
    original = PromptEncoder._encode_chunk

    def counting(self, slot, ids):
        calls.append(1)
        return original(self, slot, ids)

    monkeypatch.setattr(PromptEncoder, "_encode_chunk", counting)
    yield calls
    cond_cache.clear()




def uncached(prompt: str = "a red circle", **kw) -> np.ndarray:
    """The same job with the cache switched off (it neither reads nor writes it)."""
    held = cond_cache.held()
    cond_cache.enabled = False
    try:
        return generate(prompt, **kw)
    finally:
        cond_cache.enabled = True
        assert cond_cache.held() == held


def encodes(runs: list[int], prompt: str = "a red circle", **kw) -> tuple[int, np.ndarray]:
    """(text-encoder runs, picture) of one job."""
    runs.clear()
    picture = generate(prompt, **kw)
    return len(runs), picture


def test_same_prompts_and_a_new_seed_do_not_encode_again(runs):
    n, first = encodes(runs, seed=1)
    assert n == 2  # the prompt and the negative prompt, one chunk each
    assert cond_cache.held() == [("base", "negative"), ("base", "positive")]
    n, second = encodes(runs, seed=2)
    assert n == 0
    assert np.array_equal(second, uncached(seed=2))
    assert np.array_equal(first, uncached(seed=1))
    assert not np.array_equal(first, second)


def test_prompt_negative_prompt_size_and_settings_each_encode_again(runs):
    encodes(runs)
    n, picture = encodes(runs, "a blue circle")  # the negative prompt is still cached
    assert n == 1 and np.array_equal(picture, uncached("a blue circle"))
    n, picture = encodes(runs, "a blue circle", negative_prompt="dark")
    assert n == 1 and np.array_equal(picture, uncached("a blue circle", negative_prompt="dark"))
    n, picture = encodes(runs, "a blue circle", negative_prompt="dark", width=96)  # SDXL conditions on the size
    assert n == 2 and np.array_equal(picture, uncached("a blue circle", negative_prompt="dark", width=96))
    n, _ = encodes(runs, "a blue circle", negative_prompt="dark", steps=4)  # schedules are cut for the steps
    assert n == 2

    saved = dict(shared.opts.data)
    try:
        base = uncached()
        encodes(runs)
        shared.opts.data["samples_format"] = "jpg"  # any setting: the cache does not know which ones matter
        n, picture = encodes(runs)
        assert n == 2 and np.array_equal(picture, base)
        shared.opts.data["CLIP_stop_at_last_layers"] = 2
        n, picture = encodes(runs)
        assert n == 2 and np.array_equal(picture, uncached())
        assert not np.array_equal(picture, base)  # a stale result would have been wrong
        assert encodes(runs)[0] == 0  # kept again (transformers' hidden-state hooks are known to be harmless)
    finally:
        shared.opts.data.clear()
        shared.opts.data.update(saved)


def test_the_key_holds_the_encoders_own_options(runs):
    model = shared.sd_model
    keys = [cond_cache.encoder_key(model, PromptEncoder(model, **kw), 20, 64, 64)
            for kw in ({}, {"clip_skip": 2}, {"emphasis": "No norm"}, {"comma_backtrack": 5})]
    assert len(set(keys)) == 4
    assert cond_cache.encoder_key(model, PromptEncoder(model), 20, 64, 64) == keys[0]
    # a device move (--medvram, every job) gives buffers new tensors: same values, same key; other values, another
    path = next(name for name, _ in model.text_encoders[0].named_buffers() if name.endswith("position_ids"))
    embeddings = model.text_encoders[0].get_submodule(path.rpartition(".")[0])
    position_ids = embeddings.position_ids
    try:
        embeddings.position_ids = position_ids.clone()
        assert cond_cache.encoder_key(model, PromptEncoder(model), 20, 64, 64) == keys[0]
        embeddings.position_ids = position_ids.flip(-1)
        assert cond_cache.encoder_key(model, PromptEncoder(model), 20, 64, 64) != keys[0]
    finally:
        embeddings.position_ids = position_ids
    model.text_encoders[0].train()  # dropout is random: nothing may be kept
    try:
        assert cond_cache.encoder_key(model, PromptEncoder(model), 20, 64, 64) is None
    finally:
        model.text_encoders[0].eval()



def test_a_lora_written_in_place_encodes_again(runs, data_dir):
    model = shared.sd_model
    write(data_dir / "models" / "Lora" / "style.safetensors", kohya_lora(model, seed=1))
    files.list_available_networks()
    try:
        plain = uncached()
        encodes(runs)
        n, picture = encodes(runs, "a red circle <lora:style:0.7>")  # the encoder sees the same text
        assert n == 2 and np.array_equal(picture, uncached("a red circle <lora:style:0.7>"))
        assert encodes(runs, "a red circle <lora:style:0.7>")[0] == 0  # an unchanged LoRA writes nothing
        n, picture = encodes(runs)
        assert n == 2 and np.array_equal(picture, plain)
    finally:
        networks.unload(model)
        (data_dir / "models" / "Lora" / "style.safetensors").unlink()
        files.list_available_networks()
    # a write that goes around the patcher is seen too (the tensors' own version counters)
    layer = module_of(model.text_encoders[0], TE_LAYERS[0])
    saved = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.mul_(1.5)
        n, picture = encodes(runs)
        assert n == 2 and np.array_equal(picture, uncached())
        assert not np.array_equal(picture, plain)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)


def test_an_added_or_changed_embedding_encodes_again(runs, data_dir):
    before = encodes(runs)[1]
    folder = data_dir / "embeddings"
    folder.mkdir(exist_ok=True)
    vec = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    path = folder / "circle.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "circle"}, path)
    try:
        n, picture = encodes(runs)
        assert n == 2 and np.array_equal(picture, uncached())
        assert not np.array_equal(picture, before)
        assert encodes(runs)[0] == 0
        # an embedding registered without a file, then changed in place
        registered = textual_inversion.Embedding(torch.randn(1, 64), "red")
        textual_inversion.embedding_db.register_embedding(registered, shared.sd_model)
        assert encodes(runs)[0] == 2
        with torch.no_grad():
            registered.vec.mul_(3)
        n, picture = encodes(runs)
        assert n == 2 and np.array_equal(picture, uncached())
    finally:
        path.unlink()


def test_switching_models_encodes_again(runs):
    encodes(runs)
    use("b.safetensors")
    n, picture = encodes(runs)
    assert n == 2 and np.array_equal(picture, uncached())
    assert encodes(runs)[0] == 0
    use("a.safetensors")
    assert encodes(runs)[0] == 2


def test_sdxl_conditioning_and_its_empty_negative_prompt(runs):
    use("xl.safetensors")
    try:
        for negative in ("blurry", ""):
            # two encoders; the second round only the negative prompt changed
            assert encodes(runs, negative_prompt=negative, seed=1)[0] == (4 if negative else 2)
            n, picture = encodes(runs, negative_prompt=negative, seed=2)
            assert n == 0 and np.array_equal(picture, uncached(negative_prompt=negative, seed=2))
    finally:
        use("a.safetensors")


def test_medvram_offload_hooks_do_not_stop_the_cache(runs):
    model = shared.sd_model
    device = model.device
    offload.place(model, device, "medvram")  # an accelerate hook on each text encoder: it moves weights only
    try:
        assert encodes(runs, seed=1)[0] == 2
        n, picture = encodes(runs, seed=2)
        assert n == 0 and np.array_equal(picture, uncached(seed=2))
    finally:
        offload.place(model, device, "none")


def test_the_hires_pass_keeps_its_own_entry(runs):
    hr = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5,
          "hr_second_pass_steps": 2}
    assert encodes(runs, **hr)[0] == 4
    assert cond_cache.held() == [("base", "negative"), ("base", "positive"),
                                 ("base/img2img", "negative"), ("base/img2img", "positive")]
    n, picture = encodes(runs, seed=12, **hr)
    assert n == 0 and np.array_equal(picture, uncached(seed=12, **hr))


def test_a_hook_writing_into_its_conditioning_does_not_reach_the_cache(runs):
    reference = uncached()

    def scribble(params):
        for composable in params.denoiser.c.cond.batch[0]:
            for scheduled in composable.schedules:
                scheduled.cond.mul_(0)
        for scheduled in params.denoiser.c.uncond[0]:
            scheduled.cond.add_(1)

    hook = hooks.register("cfg_denoiser", scribble, name="scribble")
    try:
        first = encodes(runs)[1]  # a miss: the value it wrote into was the encoder's, the cache holds a copy
        second = encodes(runs)[1]  # a hit: its value is a copy as well
    finally:
        hooks.remove(lambda h: h is hook)
    assert not np.array_equal(first, reference) and np.array_equal(first, second)
    n, picture = encodes(runs)
    assert n == 0 and np.array_equal(picture, reference)


def test_nothing_is_kept_after_a_failure_a_race_or_under_a_foreign_hook(runs, monkeypatch):
    def broken(self, slot, ids):
        raise RuntimeError("encoder broke")

    with monkeypatch.context() as patched:
        patched.setattr(PromptEncoder, "_encode_chunk", broken)
        with pytest.raises(RuntimeError, match="encoder broke"):
            generate()
    assert cond_cache.held() == []
    assert encodes(runs)[0] == 2

    # an extension's hook on the text encoder may change its output from job to job: not cached while it is there
    handle = shared.sd_model.text_encoders[0].register_forward_hook(lambda module, args, output: None)
    try:
        assert encodes(runs, "a green circle")[0] == 2
        assert encodes(runs, "a green circle")[0] == 2
    finally:
        handle.remove()
    assert encodes(runs, "a green circle")[0] == 1  # the negative prompt's entry from before the hook is good again
    assert encodes(runs, "a green circle")[0] == 0

    # weights written while the encode ran (another thread's LoRA): that value belongs to no key, it is not kept
    cond_cache.clear()
    layer = module_of(shared.sd_model.text_encoders[0], TE_LAYERS[0])
    original = PromptEncoder._encode_chunk

    def racing(self, slot, ids):
        with torch.no_grad():
            layer.weight.mul_(1.0)  # an in-place write, values unchanged
        return original(self, slot, ids)

    with monkeypatch.context() as patched:
        patched.setattr(PromptEncoder, "_encode_chunk", racing)
        generate()
    assert cond_cache.held() == []
