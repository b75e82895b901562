"""Token merging (ToMe, modules/engine/token_merging.py) on tiny random-weight models: A1111's ratios per pass
(first pass, hires pass, img2img), infotext, the patch taken off exactly after every job (failed ones too), the
API field and settings.

The tiny SD1 UNet has attention at full latent resolution (where A1111's max_downsample=1 merges): at 64×64
pixels that is 8×8 = 64 tokens, of which ratio 0.5 merges 32; the hires pass at 128×128 has 256 tokens."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tomesd
import torch
from PIL import Image
from test_api_support import CHECKPOINTS, FAST, SETTINGS, client, decode, serving

from modules import infotext_utils, processing, sd_models, shared
from modules.api.server import create_app
from modules.engine import generate, token_merging, unet_graph


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, {"live_previews_enable": False}) as root:
        yield root


@pytest.fixture
def merges(monkeypatch) -> list[tuple[int, int]]:
    """(tokens, merged tokens) of every merge tomesd computes."""
    calls: list[tuple[int, int]] = []
    original = tomesd.merge.bipartite_soft_matching_random2d

    def recording(metric, w, h, sx, sy, r, **kwargs):
        calls.append((metric.shape[1], r))
        return original(metric, w, h, sx, sy, r, **kwargs)

    monkeypatch.setattr(tomesd.merge, "bipartite_soft_matching_random2d", recording)
    return calls


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def txt2img(**kw) -> processing.Processed:
    args = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 42, "do_not_save_samples": True, "do_not_save_grid": True}
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**{**args, **kw}))


def img2img(**kw) -> processing.Processed:
    rs = np.random.RandomState(0)
    init = Image.fromarray(rs.randint(0, 256, (64, 64, 3), dtype=np.uint8))
    args = {"prompt": "a blue square", "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1,
            "do_not_save_samples": True, "do_not_save_grid": True, "init_images": [init], "denoising_strength": 0.6}
    return processing.process_images(processing.StableDiffusionProcessingImg2Img(**{**args, **kw}))


def px(result: processing.Processed) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def params(result: processing.Processed) -> dict:
    return infotext_utils.parse_generation_parameters(result.infotexts[0])


def unpatched(unet: torch.nn.Module) -> bool:
    blocks = token_merging._transformer_blocks(unet)
    hooks = [h for h in unet._forward_pre_hooks.values() if "tomesd" in getattr(h, "__module__", "")]
    return (not token_merging.is_patched(unet) and not hooks
            and all(type(b).__name__ == "BasicTransformerBlock" for b in blocks)
            and not any("_tome_info" in vars(m) for m in (unet, *blocks)))


def test_ratio_zero_is_bit_identical_and_patches_nothing(data_dir, merges):
    model = use("sd1.safetensors")
    version = unet_graph.structure_version(model.unet)
    plain, zero = txt2img(), txt2img(token_merging_ratio=0)
    assert np.array_equal(px(plain), px(zero))
    assert merges == [] and "Token merging" not in zero.infotexts[0]
    assert unet_graph.structure_version(model.unet) == version  # nothing to re-capture


def test_half_the_tokens_merged_changes_the_picture_and_is_taken_off_after(data_dir, merges):
    model = use("sd1.safetensors")
    plain = txt2img()
    version = unet_graph.structure_version(model.unet)
    merged = txt2img(token_merging_ratio=0.5)
    assert merges and set(merges) == {(64, 32)}  # every full-resolution self-attention: 32 of 64 tokens merged
    assert not np.array_equal(px(plain), px(merged))
    assert "Token merging ratio: 0.5" in merged.infotexts[0] and "Token merging ratio hr" not in merged.infotexts[0]
    assert unpatched(model.unet)
    # applied and removed without touching the structure version: the plain graphs stay valid
    assert unet_graph.structure_version(model.unet) == version and unet_graph.current_variant(model.unet) is None
    merges.clear()
    assert np.array_equal(px(txt2img()), px(plain)) and merges == []


def test_the_setting_does_what_the_field_does_and_pastes_back(data_dir, merges):
    use("sd1.safetensors")
    by_field = txt2img(token_merging_ratio=0.5)
    by_setting = txt2img(override_settings={"token_merging_ratio": 0.5})
    assert np.array_equal(px(by_field), px(by_setting))
    assert params(by_setting)["Token merging ratio"] == "0.5"
    pasted = infotext_utils.create_override_settings_dict(["Token merging ratio: 0.5", "Token merging ratio hr: 0.3"])
    assert pasted == {"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0.3}


def test_the_hires_ratio_applies_to_the_hires_pass_only(data_dir, merges):
    use("sd1.safetensors")
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.6}
    plain = txt2img(**hires)
    merges.clear()
    result = txt2img(**hires, token_merging_ratio_hr=0.5)
    assert merges and set(merges) == {(256, 128)}  # 16×16 latent of the 128×128 hires pass; none at 64 tokens
    assert not np.array_equal(px(plain), px(result))
    assert "Token merging ratio hr: 0.5" in result.infotexts[0]
    assert "Token merging ratio" not in params(result)  # the first pass ran without
    merges.clear()
    both = txt2img(**hires, token_merging_ratio=0.3)  # A1111: the hires pass falls back to the first pass's ratio
    assert {n for n, _ in merges} == {64, 256} and (64, 19) in merges and (256, 76) in merges
    assert params(both)["Token merging ratio"] == "0.3" and params(both)["Token merging ratio hr"] == "0.3"


def test_img2img_takes_its_own_setting(data_dir, merges):
    use("sd1.safetensors")
    plain = img2img()
    merged = img2img(override_settings={"token_merging_ratio_img2img": 0.5})
    assert merges and not np.array_equal(px(plain), px(merged))
    assert params(merged)["Token merging ratio"] == "0.5"
    merges.clear()
    txt2img(override_settings={"token_merging_ratio_img2img": 0.5})  # txt2img does not read it
    assert merges == []


def test_a_failed_job_leaves_the_model_unpatched(data_dir, monkeypatch):
    model = use("sd1.safetensors")
    seen = []

    def failing(request, **kwargs):
        seen.append(token_merging.is_patched(request.model.unet))
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(generate, "sample_batch", failing)
    with pytest.raises(RuntimeError, match="the sampler broke"):
        txt2img(token_merging_ratio=0.5)
    assert seen == [True] and unpatched(model.unet)


def test_sdxl_merges_nothing_as_in_a1111(data_dir, merges):
    use("xl.safetensors")  # no attention at full latent resolution; max_downsample=1 leaves every block alone
    assert np.array_equal(px(txt2img()), px(txt2img(token_merging_ratio=0.5)))
    assert merges == []


def test_merged_is_exact_and_refuses_what_it_cannot_patch():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_unet

    unet = build_unet("sd1", seed=3)
    blocks = token_merging._transformer_blocks(unet)
    before = [(type(m), set(vars(m))) for m in (unet, *blocks)]
    with token_merging.merged(unet, 0.5) as patched:
        assert patched and all(type(b).__name__ == "ToMeBlock" for b in blocks)
    assert [(type(m), set(vars(m)) - {"_sd_structure_version"}) for m in (unet, *blocks)] == before
    with pytest.raises(ValueError, match="between 0 and 0.9"):
        with token_merging.merged(unet, 0.95):
            pass
    blocks[0]._chunk_size = 2  # diffusers' chunked feed-forward: tomesd's forward would drop it
    with pytest.raises(ValueError, match="cannot patch"):
        with token_merging.merged(unet, 0.5):
            pass
    assert unpatched(unet)


@pytest.mark.parametrize(("fields", "settings", "first", "hires_ratio", "i2i"), [
    ({}, {}, 0, 0, 0),
    ({"token_merging_ratio": 0.4}, {"token_merging_ratio": 0.2}, 0.4, 0.4, 0.4),
    ({}, {"token_merging_ratio": 0.2}, 0.2, 0.2, 0.2),
    ({}, {"token_merging_ratio": 0.2, "token_merging_ratio_hr": 0.6}, 0.2, 0.6, 0.2),
    ({"token_merging_ratio_hr": 0.7}, {"token_merging_ratio_hr": 0.6}, 0, 0.7, 0),
    ({}, {"token_merging_ratio": 0.2, "token_merging_ratio_img2img": 0.5}, 0.2, 0.2, 0.5),
])
def test_ratios_follow_a1111s_rules(monkeypatch, fields, settings, first, hires_ratio, i2i):
    for key, value in settings.items():
        monkeypatch.setitem(shared.opts.data, key, value)
    txt = SimpleNamespace(kind="txt2img", override_settings={}, **fields)
    i2i_job = SimpleNamespace(kind="img2img", override_settings={}, **fields)
    assert token_merging.ratio_for(txt) == first
    assert token_merging.ratio_for(txt, hires=True) == hires_ratio
    assert token_merging.ratio_for(i2i_job) == i2i


def test_img2img_prefers_an_overridden_token_merging_ratio(monkeypatch):
    monkeypatch.setitem(shared.opts.data, "token_merging_ratio", 0.2)
    monkeypatch.setitem(shared.opts.data, "token_merging_ratio_img2img", 0.5)
    job = SimpleNamespace(kind="img2img", override_settings={"token_merging_ratio": 0.2})
    assert token_merging.ratio_for(job) == 0.2


@pytest.fixture(scope="module")
def http(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api"), CHECKPOINTS, SETTINGS):
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def test_the_api_field_takes_effect(http, merges):
    use("tiny.safetensors")  # the API's SD1 model, not a model an earlier test left loaded
    def run(**fields) -> tuple[np.ndarray, str]:
        r = http.post("/sdapi/v1/txt2img", json={**FAST, **fields})
        assert r.status_code == 200, r.text
        image = np.asarray(decode(r.json()["images"][0]).convert("RGB"), dtype=np.int16)
        return image, json.loads(r.json()["info"])["infotexts"][0]

    plain, plain_info = run()
    merged, info = run(token_merging_ratio=0.5)
    assert "Token merging ratio: 0.5" in info and "Token merging" not in plain_info
    assert merges and not np.array_equal(plain, merged)
    assert np.array_equal(run()[0], plain)  # the next request runs the unpatched UNet


def test_a_patched_pass_runs_under_its_own_graph_variant_and_never_compiled(monkeypatch):
    import sys
    from pathlib import Path

    from modules.engine import unet_compile

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_unet

    unet = build_unet("sd1", seed=3)
    compiles: list[int] = []
    monkeypatch.setattr(unet_compile, "BACKEND", lambda gm, inputs: compiles.append(1) or gm.forward)
    monkeypatch.setattr(unet_compile, "IN_WORKER", False)
    variants = []
    for ratio in (0.5, 0.5, 0.3):
        with token_merging.merged(unet, ratio) as patched:
            assert patched
            variants.append(unet_graph.current_variant(unet))

            def forward(module, x):
                return x

            assert unet_compile.forward_for(unet, forward, (torch.zeros(1),), {}) is forward
        assert unet_graph.current_variant(unet) is None and "_sd_graph_variant" not in vars(unet)
    assert variants[0] == variants[1] != variants[2] and variants[0][:2] == ("tome", 0.5)
    assert compiles == []


def test_graph_sets_are_kept_per_variant():
    unet = torch.nn.Linear(2, 2)
    plain = unet_graph._cache_for(unet)
    with unet_graph.graph_variant(unet, ("tome", 0.5)):
        tome = unet_graph._cache_for(unet)
        assert tome is not plain and unet._sd_graph_cache is tome
    assert unet_graph._cache_for(unet) is plain  # the plain graphs survived the patched pass
    with unet_graph.graph_variant(unet, ("tome", 0.5)):
        assert unet_graph._cache_for(unet) is tome  # and the next pass with the same patch finds its graphs
    with unet_graph.graph_variant(unet, ("tome", 0.3)):
        unet_graph._cache_for(unet)
    assert len(unet._sd_graph_caches) == unet_graph.MAX_VARIANTS
    fresh = unet_graph._cache_for(unet)
    assert fresh is not plain  # the least recently used set (the plain one, here) was let go
    unet_graph.bump_structure_version(unet)
    assert unet_graph._cache_for(unet) is not fresh  # a real code change still drops them
