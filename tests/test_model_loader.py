"""Single-file checkpoints are detected and loaded, and the loaded networks compute what they were written from."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import build_family, write_tiny_checkpoint

from modules.devices import choose_precision
from modules.models.checkpoint_files import ModelFileError
from modules.models.loader import load_model

CPU = choose_precision(torch.device("cpu"))


def _unet_inputs(tiny, unet):
    torch.manual_seed(1)
    cfg = unet.config
    x = torch.randn(1, cfg.in_channels, 8, 8)
    t = torch.tensor([500])
    ctx = torch.randn(1, 77, cfg.cross_attention_dim)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - cfg.addition_time_embed_dim * (
            6 if tiny.family == "sdxl" else 5
        )
        n_ids = 6 if tiny.family == "sdxl" else 5
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.rand(1, n_ids) * 512}
    return x, t, ctx, kwargs


def _assert_same_unet(tiny, loaded_unet):
    x, t, ctx, kwargs = _unet_inputs(tiny, loaded_unet)
    with torch.no_grad():
        expected = tiny.unet(x, t, encoder_hidden_states=ctx, **kwargs).sample
        got = loaded_unet(x, t, encoder_hidden_states=ctx, **kwargs).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _assert_same_vae(tiny, loaded_vae):
    torch.manual_seed(2)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = tiny.vae.encode(image).latent_dist.mean
        got = loaded_vae.encode(image).latent_dist.mean
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded_vae.decode(got).sample, tiny.vae.decode(expected).sample, rtol=1e-4, atol=1e-5)
    assert loaded_vae.config.scaling_factor == tiny.vae.config.scaling_factor


def _assert_same_text(tiny, loaded_encoders, tokenizers):
    ids = tokenizers[0]("a small red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert len(loaded_encoders) == len(tiny.text_encoders)
    with torch.no_grad():
        for source, loaded in zip(tiny.text_encoders, loaded_encoders, strict=True):
            ref = source(ids, output_hidden_states=True)
            out = loaded(ids, output_hidden_states=True)
            if tiny.family == "sd2":
                # SD2 conditions on the penultimate layer + final norm; the loader builds exactly that network.
                expected = source.final_layer_norm(ref.hidden_states[-2])
                torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-4, atol=1e-5)
                continue
            torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.hidden_states[-2], ref.hidden_states[-2], rtol=1e-4, atol=1e-5)
            if hasattr(ref, "text_embeds"):
                torch.testing.assert_close(out.text_embeds, ref.text_embeds, rtol=1e-4, atol=1e-5)


CASES = [
    ("sd1", "normal", None, "SD1.x", "epsilon"),
    ("sd1", "inpaint", None, "SD1.x inpainting", "epsilon"),
    ("sd2", "normal", "v", "SD2.x v-prediction", "v_prediction"),
    ("sd2", "normal", "epsilon", "SD2.x", "epsilon"),
    ("sdxl", "normal", None, "SDXL", "epsilon"),
    ("sdxl", "inpaint", None, "SDXL inpainting", "epsilon"),
    ("sdxl_refiner", "normal", None, "SDXL refiner", "epsilon"),
]


@pytest.mark.parametrize(("family", "variant", "prediction", "name", "expected_prediction"), CASES)
def test_checkpoint_is_detected_and_matches_its_source(tmp_path, family, variant, prediction, name, expected_prediction):
    path = tmp_path / f"{family}-{variant}.safetensors"
    tiny = write_tiny_checkpoint(path, family, variant, prediction=prediction)
    model = load_model(str(path), CPU)
    assert model.spec.display_name == name
    assert model.spec.prediction_type == expected_prediction
    assert model.unet.config.in_channels == tiny.unet.config.in_channels
    _assert_same_unet(tiny, model.unet)
    _assert_same_vae(tiny, model.vae)
    _assert_same_text(tiny, model.text_encoders, model.tokenizers)


@pytest.mark.parametrize(("variant", "name"), [("depth", "SD2.x depth"), ("ip2p", "SD2.x instruct-pix2pix")])
def test_depth_and_instruct_pix2pix_are_recognised(tmp_path, variant, name):
    path = tmp_path / f"sd2-{variant}.safetensors"
    write_tiny_checkpoint(path, "sd2", variant, prediction="epsilon")
    assert load_model(str(path), CPU).spec.display_name == name


def test_pickled_ckpt_loads_through_the_restricted_loader(tmp_path):
    path = tmp_path / "model.ckpt"
    tiny = write_tiny_checkpoint(path, "sd1", fmt="ckpt")
    model = load_model(str(path), CPU)
    _assert_same_unet(tiny, model.unet)


def test_sd1_tokenizer_pads_with_end_token_and_sd2_with_exclamation_mark(tmp_path):
    write_tiny_checkpoint(tmp_path / "a.safetensors", "sd1")
    write_tiny_checkpoint(tmp_path / "b.safetensors", "sd2", prediction="epsilon")
    sd1 = load_model(str(tmp_path / "a.safetensors"), CPU)
    sd2 = load_model(str(tmp_path / "b.safetensors"), CPU)
    assert sd1.tokenizers[0].pad_token_id == 49407
    assert sd2.tokenizers[0].pad_token_id == 0


def test_v_pred_marker_key_is_honoured(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "xl-v.safetensors"
    write_tiny_checkpoint(path, "sdxl")
    state = load_file(str(path))
    state["v_pred"] = torch.tensor([])
    save_file(state, str(path))
    model = load_model(str(path), CPU)
    assert model.spec.prediction_type == "v_prediction"
    assert model.spec.display_name == "SDXL v-prediction"


def test_yaml_sidecar_overrides_detection(tmp_path):
    path = tmp_path / "model.safetensors"
    write_tiny_checkpoint(path, "sd2", prediction="epsilon")
    (tmp_path / "model.yaml").write_text(
        "model:\n  params:\n    parameterization: v\n    scale_factor: 0.5\n"
        "    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"
    )
    model = load_model(str(path), CPU)
    assert model.spec.prediction_type == "v_prediction"
    assert model.spec.prediction_source == "sidecar model.yaml"
    assert model.vae.config.scaling_factor == 0.5


def test_json_sidecar_overrides_detection_and_names_a_family_mismatch(tmp_path):
    path = tmp_path / "model.safetensors"
    write_tiny_checkpoint(path, "sd1")
    (tmp_path / "model.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    assert load_model(str(path), CPU).spec.prediction_type == "v_prediction"
    (tmp_path / "model.json").write_text(json.dumps({"sd version": "SDXL"}))
    with pytest.raises(ModelFileError, match=r"model\.json: says the model is SDXL but the weights are SD1\.x"):
        load_model(str(path), CPU)


def test_diffusers_folder_loads(tmp_path):
    tiny = build_family("sdxl")
    folder = tmp_path / "xl-diffusers"
    tiny.unet.save_pretrained(folder / "unet")
    tiny.vae.save_pretrained(folder / "vae")
    tiny.text_encoders[0].save_pretrained(folder / "text_encoder")
    tiny.text_encoders[1].save_pretrained(folder / "text_encoder_2")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    }))
    model = load_model(str(folder), CPU)
    assert model.spec.display_name == "SDXL"
    _assert_same_unet(tiny, model.unet)
    _assert_same_text(tiny, model.text_encoders, model.tokenizers)
