"""LoRA and LyCORIS files on tiny models, through `<lora:...>` tags in real generations (CPU).

Every expected weight is recomputed here from the file's tensors with plain formulas (tests/lora_files.py), never
through modules.networks; images are compared bit for bit.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from lora_files import (
    SD1_UNET_LAYERS,
    TE_LAYERS,
    kohya_lora,
    kohya_name,
    lora_delta,
    low_rank_pair,
    module_of,
    write,
)

from modules import extra_networks, infotext_utils, processing, sd_models, shared
from modules.api import infotext as api_infotext
from modules.networks import files, networks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    checkpoints = {"sd1.safetensors": {"family": "sd1", "seed": 3}, "xl.safetensors": {"family": "sdxl", "seed": 5}}
    settings = {"live_previews_enable": False, "lora_in_memory_limit": 4, "sd_checkpoints_limit": 2}
    with isolated_data_dir(tmp_path_factory.mktemp("data"), checkpoints, settings) as root:
        yield root


@pytest.fixture
def lora_dir(data_dir):
    folder = data_dir / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    for model in (shared.sd_model,):
        networks.unload(model)
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink()
    networks.networks_in_memory.clear()
    files.list_available_networks()


def use(name: str):
    return sd_models.load_model(sd_models.get_closet_checkpoint_match(name))


def generate(prompt: str = "a red circle", **kw) -> processing.Processed:
    args = {"prompt": prompt, "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler", "seed": 11, "cfg_scale": 7.0, "do_not_save_samples": True,
            "do_not_save_grid": True}
    args.update(kw)
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**args))


def pixels(result: processing.Processed, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].convert("RGB"), dtype=np.int16)


def save(lora_dir, name: str, tensors: dict, metadata: dict | None = None):
    path = write(lora_dir / name, tensors, metadata)
    files.list_available_networks()
    return path


def targets(model):
    """(kohya layer name, module) of the SD1 layers the test files touch."""
    out = [(kohya_name("lora_unet_", p), model.unet.get_submodule(p)) for p in SD1_UNET_LAYERS]
    out += [(kohya_name("lora_te_", "text_model." + p), model.text_encoders[0].get_submodule(p)) for p in TE_LAYERS]
    return out


@torch.no_grad()
def merge_by_hand(model, tensors: dict, strength: float, te_strength: float | None = None) -> dict:
    """Add strength * delta to the model's weights directly; returns the originals to put back."""
    saved = {}
    for name, module in targets(model):
        s = strength if name.startswith("lora_unet_") or te_strength is None else te_strength
        saved[name] = module.weight.detach().clone()
        module.weight += (s * lora_delta(tensors, name, module.weight.shape)).to(module.weight.dtype)
    return saved


@torch.no_grad()
def put_back(model, saved: dict) -> None:
    for name, module in targets(model):
        module.weight.copy_(saved[name])


# --- applying, removing, adding -----------------------------------------------------------------------------------


def test_lora_changes_the_image_exactly_as_the_merged_weights(lora_dir):
    model = use("sd1.safetensors")
    tensors = kohya_lora(model, seed=1)
    save(lora_dir, "style.safetensors", tensors)
    plain = generate()
    with_lora = generate("a red circle <lora:style:0.7>")
    assert not np.array_equal(pixels(plain), pixels(with_lora))
    networks.unload(model)
    saved = merge_by_hand(model, tensors, 0.7)
    try:
        merged = generate()
    finally:
        put_back(model, saved)
    # The same weights up to float32 rounding (the product and scale are computed in another order here)
    assert np.abs(pixels(with_lora) - pixels(merged)).max() <= 1
    assert np.abs(pixels(with_lora) - pixels(plain)).max() > 10


def test_removing_a_lora_restores_the_image_bit_for_bit_without_reloading(lora_dir, monkeypatch):
    model = use("sd1.safetensors")
    save(lora_dir, "style.safetensors", kohya_lora(model, seed=1))
    weights_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    plain = generate()
    loads = []
    monkeypatch.setattr(sd_models.manager, "load", lambda *a, **k: loads.append(a) or model)
    generate("a red circle <lora:style:1>")
    again = generate()
    assert loads == []  # a change of LoRA never reloads the checkpoint
    assert np.array_equal(pixels(plain), pixels(again))
    assert all(torch.equal(weights_before[k], v) for k, v in model.unet.state_dict().items())
    assert model.patcher.patched_keys == []


def test_two_loras_add_and_weight_zero_is_a_no_op(lora_dir):
    model = use("sd1.safetensors")
    a, b = kohya_lora(model, seed=1), kohya_lora(model, seed=2)
    save(lora_dir, "a.safetensors", a)
    save(lora_dir, "b.safetensors", b)
    layer = model.unet.get_submodule(SD1_UNET_LAYERS[0])
    name = kohya_name("lora_unet_", SD1_UNET_LAYERS[0])
    original = layer.weight.detach().clone()
    both = generate("a red circle <lora:a:0.5> <lora:b:-0.25>")
    expected = original + 0.5 * lora_delta(a, name, original.shape) - 0.25 * lora_delta(b, name, original.shape)
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    assert "Lora hashes" in both.info and "a: " in both.info and "b: " in both.info
    networks.unload(model)
    plain = generate()
    zero = generate("a red circle <lora:a:0>")
    assert np.array_equal(pixels(plain), pixels(zero))
    assert torch.equal(layer.weight, original)


def test_te_and_unet_weights_positional_and_named(lora_dir):
    model = use("sd1.safetensors")
    tensors = kohya_lora(model, seed=1)
    save(lora_dir, "style.safetensors", tensors)
    unet_layer = model.unet.get_submodule(SD1_UNET_LAYERS[0])
    te_layer = model.text_encoders[0].get_submodule(TE_LAYERS[0])
    unet_original, te_original = unet_layer.weight.detach().clone(), te_layer.weight.detach().clone()
    te_name = kohya_name("lora_te_", "text_model." + TE_LAYERS[0])
    for prompt in ("x <lora:style:0:0.5>", "x <lora:style:te=0:unet=0.5>", "x <lyco:style:0:0.5>"):
        generate(prompt)
        assert torch.equal(te_layer.weight, te_original), prompt
        assert not torch.equal(unet_layer.weight, unet_original), prompt
    generate("x <lora:style:0.3>")  # unet defaults to te
    assert torch.allclose(te_layer.weight, te_original + 0.3 * lora_delta(tensors, te_name, te_original.shape),
                          atol=1e-6)
    assert torch.allclose(unet_layer.weight, unet_original + 0.3 * lora_delta(
        tensors, kohya_name("lora_unet_", SD1_UNET_LAYERS[0]), unet_original.shape), atol=1e-6)


def test_dyn_keeps_only_the_first_ranks(lora_dir):
    model = use("sd1.safetensors")
    tensors = kohya_lora(model, seed=1, rank=4, alpha=4)
    save(lora_dir, "dy.safetensors", tensors)
    layer = model.unet.get_submodule(SD1_UNET_LAYERS[0])
    original = layer.weight.detach().clone()
    name = kohya_name("lora_unet_", SD1_UNET_LAYERS[0])
    generate("x <lora:dy:1:dyn=2>")
    up, down = tensors[f"{name}.lora_up.weight"][:, :2], tensors[f"{name}.lora_down.weight"][:2]
    assert torch.allclose(layer.weight, original + (up @ down) * (4 / 4), atol=1e-6)


def test_lora_and_lyco_tags_together_both_apply(lora_dir):
    model = use("sd1.safetensors")
    save(lora_dir, "a.safetensors", kohya_lora(model, seed=1))
    save(lora_dir, "b.safetensors", kohya_lora(model, seed=2))
    generate("x <lora:a:1> <lyco:b:1>")
    assert [n.name for n in networks.loaded_networks] == ["a", "b"]


# --- prompt text --------------------------------------------------------------------------------------------------


def test_tags_never_reach_the_text_encoder(lora_dir):
    model = use("sd1.safetensors")
    save(lora_dir, "style.safetensors", kohya_lora(model, seed=1))
    plain = generate("a red circle")
    assert np.array_equal(pixels(plain), pixels(generate("a red circle<lora:style:0>")))
    assert np.array_equal(pixels(plain), pixels(generate("a red circle<lora:missing-file:1>")))


def test_tags_inside_prompt_editing_apply_for_every_step(lora_dir):
    """A1111 cuts every tag out of the prompt before the schedule is parsed: both LoRAs apply all along, and
    what is left of the editing is `[::0.5]`, which schedules nothing."""
    model = use("sd1.safetensors")
    save(lora_dir, "a.safetensors", kohya_lora(model, seed=1))
    save(lora_dir, "b.safetensors", kohya_lora(model, seed=2))
    edited = generate("a red circle [<lora:a:1>:<lora:b:1>:0.5]")
    assert [n.name for n in networks.loaded_networks] == ["a", "b"]
    flat = generate("a red circle <lora:a:1><lora:b:1>")
    assert np.array_equal(pixels(edited), pixels(flat))


def test_a_batch_uses_the_tags_of_its_first_prompt(lora_dir):
    model = use("sd1.safetensors")
    save(lora_dir, "style.safetensors", kohya_lora(model, seed=1))
    mixed = generate(["x <lora:style:1>", "x <lora:style:0.2>"], batch_size=2)
    same = generate(["x <lora:style:1>", "x <lora:style:1>"], batch_size=2)
    assert np.array_equal(pixels(mixed, 1), pixels(same, 1))


def test_sd_lora_setting_adds_the_network_to_every_prompt(lora_dir, monkeypatch):
    model = use("sd1.safetensors")
    save(lora_dir, "style.safetensors", kohya_lora(model, seed=1))
    monkeypatch.setitem(shared.opts.data, "sd_lora", "style")
    result = generate("a red circle")
    assert "<lora:style:1.0>" in result.prompt or "<lora:style:1.0>" in result.all_prompts[0]
    assert "Lora hashes" in result.info
    monkeypatch.setitem(shared.opts.data, "sd_lora", "None")
    assert np.array_equal(pixels(result), pixels(generate("a red circle <lora:style:1.0>")))


# --- refusals -----------------------------------------------------------------------------------------------------


def test_an_sd1_lora_on_sdxl_is_refused_by_name_and_the_image_made_without_it(lora_dir):
    sd1 = use("sd1.safetensors")
    save(lora_dir, "sd1-style.safetensors", kohya_lora(sd1, seed=1))
    use("xl.safetensors")
    plain = generate()
    result = generate("a red circle <lora:sd1-style:1>")
    assert np.array_equal(pixels(plain), pixels(result))
    assert "LoRA not applied: sd1-style" in result.comments
    assert "SD1" in result.comments and "SDXL" in result.comments
    assert "Lora hashes" not in result.info


def test_metadata_family_refuses_before_reading(lora_dir):
    sd1 = use("sd1.safetensors")
    save(lora_dir, "tagged.safetensors", kohya_lora(sd1, seed=1), {"ss_base_model_version": "sdxl_base_v1-0"})
    result = generate("x <lora:tagged:1>")
    assert "tagged: made for SDXL, the loaded model is SD1" in result.comments


def test_keys_that_match_nothing_are_refused_by_name(lora_dir):
    use("sd1.safetensors")
    save(lora_dir, "junk.safetensors", {"lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2),
                                        "lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4)})
    result = generate("x <lora:junk:1>")
    assert "LoRA not applied: junk: none of its 2 keys matches a layer" in result.comments


def test_a_missing_or_corrupt_file_is_named_and_the_server_goes_on(lora_dir):
    use("sd1.safetensors")
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    files.list_available_networks()
    result = generate("x <lora:broken:1> <lora:nowhere:1>")
    assert "LoRA not applied: broken" in result.comments
    assert "LoRA not applied: nowhere: not found" in result.comments
    assert generate("x").images


def test_a_bad_weight_is_named(lora_dir):
    model = use("sd1.safetensors")
    save(lora_dir, "style.safetensors", kohya_lora(model, seed=1))
    result = generate("x <lora:style:lots>")
    assert "LoRA not applied: style: te 'lots' is not a number" in result.comments


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_files_go_through_the_restricted_loader(lora_dir):
    model = use("sd1.safetensors")
    tensors = kohya_lora(model, seed=1)
    save(lora_dir, "old.pt", tensors)
    layer = model.unet.get_submodule(SD1_UNET_LAYERS[0])
    original = layer.weight.detach().clone()
    generate("x <lora:old:1>")
    name = kohya_name("lora_unet_", SD1_UNET_LAYERS[0])
    assert torch.allclose(layer.weight, original + lora_delta(tensors, name, original.shape), atol=1e-6)
    with open(lora_dir / "evil.pt", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    files.list_available_networks()
    result = generate("x <lora:evil:1>")
    assert "LoRA not applied: evil" in result.comments and "refused" in result.comments


# --- other layouts ------------------------------------------------------------------------------------------------


def test_peft_and_diffusers_names(lora_dir):
    model = use("sd1.safetensors")
    g = torch.Generator().manual_seed(5)
    path = SD1_UNET_LAYERS[1]
    layer = model.unet.get_submodule(path)
    te_layer = model.text_encoders[0].get_submodule(TE_LAYERS[0])
    up, down = low_rank_pair(layer.weight, 2, g)
    te_up, te_down = low_rank_pair(te_layer.weight, 2, g)
    save(lora_dir, "peft.safetensors", {
        f"unet.{path}.lora_A.weight": down, f"unet.{path}.lora_B.weight": up,
        f"text_encoder.text_model.{TE_LAYERS[0]}.lora_A.weight": te_down,
        f"text_encoder.text_model.{TE_LAYERS[0]}.lora_B.weight": te_up,
    })
    original, te_original = layer.weight.detach().clone(), te_layer.weight.detach().clone()
    generate("x <lora:peft:1>")
    assert torch.allclose(layer.weight, original + up @ down, atol=1e-6)
    assert torch.allclose(te_layer.weight, te_original + te_up @ te_down, atol=1e-6)


def test_lycoris_formats_and_full_diff(lora_dir):
    model = use("sd1.safetensors")
    g = torch.Generator().manual_seed(9)
    q = model.unet.get_submodule(SD1_UNET_LAYERS[0])  # Linear
    conv = model.unet.get_submodule(SD1_UNET_LAYERS[3])  # 3x3 conv
    ff = model.unet.get_submodule(SD1_UNET_LAYERS[2])
    out_q, in_q = q.weight.shape
    q_name, conv_name, ff_name = (kohya_name("lora_unet_", p) for p in (SD1_UNET_LAYERS[0], SD1_UNET_LAYERS[3],
                                                                       SD1_UNET_LAYERS[2]))
    w1a, w1b = torch.randn(out_q, 2, generator=g), torch.randn(2, in_q, generator=g)
    w2a, w2b = torch.randn(out_q, 2, generator=g), torch.randn(2, in_q, generator=g)
    diff = torch.randn(conv.weight.shape, generator=g) * 0.1
    diff_b = torch.randn(conv.bias.shape, generator=g) * 0.1
    ia3 = torch.randn(ff.weight.shape[0], generator=g) * 0.1
    save(lora_dir, "lyco.safetensors", {
        f"{q_name}.hada_w1_a": w1a, f"{q_name}.hada_w1_b": w1b, f"{q_name}.hada_w2_a": w2a,
        f"{q_name}.hada_w2_b": w2b, f"{q_name}.alpha": torch.tensor(1.0),
        f"{conv_name}.diff": diff, f"{conv_name}.diff_b": diff_b,
        f"{ff_name}.weight": ia3, f"{ff_name}.on_input": torch.tensor(False),
    })
    originals = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
                 for n, m in ((q_name, q), (conv_name, conv), (ff_name, ff))}
    generate("x <lyco:lyco:0.5>")
    loha = (w1a @ w1b) * (w2a @ w2b) * (1.0 / 2)
    assert torch.allclose(q.weight, originals[q_name][0] + 0.5 * loha, atol=1e-5)
    assert torch.allclose(conv.weight, originals[conv_name][0] + 0.5 * diff, atol=1e-6)
    assert torch.allclose(conv.bias, originals[conv_name][1] + 0.5 * diff_b, atol=1e-6)
    assert torch.allclose(ff.weight, originals[ff_name][0] * (1 + 0.5 * ia3[:, None]), atol=1e-6)
    networks.unload(model)
    assert torch.equal(conv.bias, originals[conv_name][1])


def test_lokr_and_dora(lora_dir):
    model = use("sd1.safetensors")
    g = torch.Generator().manual_seed(4)
    q = model.unet.get_submodule(SD1_UNET_LAYERS[0])
    k = model.unet.get_submodule(SD1_UNET_LAYERS[1])
    q_name, k_name = kohya_name("lora_unet_", SD1_UNET_LAYERS[0]), kohya_name("lora_unet_", SD1_UNET_LAYERS[1])
    out_q, in_q = q.weight.shape
    w1 = torch.randn(2, 2, generator=g)
    w2 = torch.randn(out_q // 2, in_q // 2, generator=g) * 0.1
    up, down = low_rank_pair(k.weight, 2, g, scale=0.2)
    magnitude = torch.rand(k.weight.shape[0], 1, generator=g) + 0.5
    save(lora_dir, "kr.safetensors", {f"{q_name}.lokr_w1": w1, f"{q_name}.lokr_w2": w2,
                                      f"{k_name}.lora_up.weight": up, f"{k_name}.lora_down.weight": down,
                                      f"{k_name}.dora_scale": magnitude})
    q0, k0 = q.weight.detach().clone(), k.weight.detach().clone()
    generate("x <lora:kr:1>")
    assert torch.allclose(q.weight, q0 + torch.kron(w1, w2), atol=1e-5)
    combined = k0 + up @ down
    dora = magnitude * combined / combined.norm(dim=1, keepdim=True)
    assert torch.allclose(k.weight, dora, atol=1e-5)


def test_sdxl_kohya_names_original_layout_and_both_text_encoders(lora_dir):
    xl = use("xl.safetensors")
    # the tiny SDXL UNet has one layer per block: level 1's first attention is input_blocks.(1 + 1*2).1
    ldm_attn = "input_blocks.3.1.transformer_blocks.0.attn1.to_q"
    diffusers_attn = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = xl.unet.get_submodule(diffusers_attn)
    te1 = module_of(xl.text_encoders[0], TE_LAYERS[0])
    te2 = module_of(xl.text_encoders[1], TE_LAYERS[0])
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, module in ((kohya_name("lora_unet_", ldm_attn), layer),
                         (kohya_name("lora_te1_", "text_model." + TE_LAYERS[0]), te1),
                         (kohya_name("lora_te2_", "text_model." + TE_LAYERS[0]), te2)):
        up, down = low_rank_pair(module.weight, 2, g)
        tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"] = up, down
    save(lora_dir, "xl-style.safetensors", tensors, {"ss_base_model_version": "sdxl_base_v1-0"})
    before = [m.weight.detach().clone() for m in (layer, te1, te2)]
    result = generate("x <lora:xl-style:1>")
    assert not result.comments
    for (name, module), original in zip(((kohya_name("lora_unet_", ldm_attn), layer),
                                         (kohya_name("lora_te1_", "text_model." + TE_LAYERS[0]), te1),
                                         (kohya_name("lora_te2_", "text_model." + TE_LAYERS[0]), te2)), before,
                                        strict=True):
        assert torch.allclose(module.weight, original + lora_delta(tensors, name, original.shape), atol=1e-6)


# --- files, cache, infotext ---------------------------------------------------------------------------------------


def test_alias_from_metadata_and_preferred_name(lora_dir, monkeypatch):
    model = use("sd1.safetensors")
    save(lora_dir / "sub" / "deeper", "file-name.safetensors", kohya_lora(model, seed=1),
         {"ss_output_name": "pretty", "ss_base_model_version": "sd_v1"})
    entry = files.available_networks["file-name"]
    assert entry.alias == "pretty" and entry.get_alias() == "pretty" and entry.sd_version == "SD1"
    monkeypatch.setitem(shared.opts.data, "lora_preferred_name", "Filename")
    assert entry.get_alias() == "file-name"
    assert not generate("x <lora:pretty:1>").comments
    assert not generate("x <lora:file-name:1>").comments


def test_cached_networks_are_not_read_again(lora_dir, monkeypatch):
    model = use("sd1.safetensors")
    save(lora_dir, "a.safetensors", kohya_lora(model, seed=1))
    save(lora_dir, "b.safetensors", kohya_lora(model, seed=2))
    reads = []
    original = networks.read_state_dict
    monkeypatch.setattr(networks, "read_state_dict", lambda path: reads.append(path) or original(path))
    for prompt in ("x <lora:a:1>", "x <lora:b:1>", "x <lora:a:1>", "x <lora:b:1>"):
        generate(prompt)
    assert len(reads) == 2


def test_lora_hashes_are_the_addnet_hash_and_paste_finds_a_renamed_file(lora_dir):
    from modules import hashes

    model = use("sd1.safetensors")
    path = save(lora_dir, "before.safetensors", kohya_lora(model, seed=1))
    expected = hashes.addnet_hash_safetensors(str(path))[:12]
    result = generate("x <lora:before:0.8>")
    assert f'Lora hashes: "before: {expected}"' in result.info
    path.rename(lora_dir / "after.safetensors")
    files.list_available_networks()
    pasted = api_infotext.parse(result.info)
    assert "<lora:after:0.8>" in pasted["Prompt"]
    again = processing.process_images(processing.StableDiffusionProcessingTxt2Img(
        prompt=pasted["Prompt"], negative_prompt="blurry", steps=3, width=64, height=64, sampler_name="Euler",
        seed=11, cfg_scale=7.0, do_not_save_samples=True, do_not_save_grid=True))
    assert np.array_equal(pixels(result), pixels(again))
    parsed = infotext_utils.parse_generation_parameters(result.info)
    assert parsed["Lora hashes"] == f"before: {expected}"


def test_tags_of_a_handled_type_are_not_reported_unapplied(lora_dir):
    from modules.networks import extra_network_lora

    extra_network_lora.ensure_registered()
    assert extra_networks.unapplied(["x <lora:a:1> <lyco:b:1> <hypernet:c:1>"]) == ["hypernet:c"]


def test_a_failure_half_way_through_puts_every_weight_back(lora_dir, monkeypatch):
    from modules.models import patcher as patcher_module

    model = use("sd1.safetensors")
    save(lora_dir, "a.safetensors", kohya_lora(model, seed=1))
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    calls = []
    original_apply = patcher_module.ModelPatcher._apply

    def fail_on_third(self, key, patches):
        calls.append(key)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("no room")
        original_apply(self, key, patches)

    monkeypatch.setattr(patcher_module.ModelPatcher, "_apply", fail_on_third)
    with pytest.raises(torch.OutOfMemoryError):
        networks.load_networks(["a"], [1.0], [1.0], [None], model=model)
    assert all(torch.equal(weights[k], v) for k, v in model.unet.state_dict().items())
    assert model.patcher.patched_keys == []
