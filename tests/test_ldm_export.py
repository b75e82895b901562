"""Round trip: tiny diffusers models -> original single-file layout (ours) -> diffusers (diffusers' own
converters) must give back every tensor unchanged."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file
from tiny_models import FAMILIES, TinyModel, build_family, build_unet, write_tiny_checkpoint

from modules.models import ldm_export

# Where each family keeps its text encoders: (kind, ldm prefix) per encoder, in text_encoders order.
TEXT_LAYOUT = {
    "sd1": [("clip", "cond_stage_model.")],
    "sd2": [("open_clip", "cond_stage_model.")],
    "sdxl": [("clip", "conditioner.embedders.0."), ("open_clip", "conditioner.embedders.1.")],
    "sdxl_refiner": [("open_clip", "conditioner.embedders.0.")],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, tuple[TinyModel, dict[str, torch.Tensor]]]:
    """Each family built once, written as safetensors and read back."""
    folder = tmp_path_factory.mktemp("ldm")
    out = {}
    for family in FAMILIES:
        model = write_tiny_checkpoint(folder / f"{family}.safetensors", family)
        out[family] = (model, load_file(str(model.path)))
    return out


def _text_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers 5's CLIPTextModel has no "text_model." level; diffusers' converters still emit it.
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def assert_same_tensors(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert got[key].shape == tensor.shape, key
        assert torch.equal(got[key], tensor), key


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_round_trip(written, family):
    model, ckpt = written[family]
    back = convert_ldm_unet_checkpoint(ckpt, model.unet.config)
    assert_same_tensors(back, model.unet.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_round_trip(written, family):
    model, ckpt = written[family]
    back = convert_ldm_vae_checkpoint(ckpt, model.vae.config)
    assert_same_tensors(back, model.vae.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_round_trip(written, family):
    model, ckpt = written[family]
    for encoder, (kind, prefix) in zip(model.text_encoders, TEXT_LAYOUT[family], strict=True):
        if kind == "clip":
            back = convert_ldm_clip_checkpoint(ckpt)
        else:
            back = convert_open_clip_checkpoint(encoder, ckpt, prefix=prefix + "model.")
        assert_same_tensors(_text_keys(back), _text_keys(encoder.state_dict()))


def test_sd2_identity_projection(written):
    # SD2's encoder has no projection; the file carries an identity one, which diffusers' SD2 conversion
    # deliberately ignores (as it ignores the 24th layer of the real model, which the tiny one does not have).
    _, ckpt = written["sd2"]
    proj = ckpt["cond_stage_model.model.text_projection"]
    assert torch.equal(proj, torch.eye(proj.shape[0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_key_is_accounted_for(written, family):
    model, ckpt = written[family]
    expected = len(model.unet.state_dict()) + len(model.vae.state_dict())
    for encoder, (kind, _) in zip(model.text_encoders, TEXT_LAYOUT[family], strict=True):
        sd = encoder.state_dict()
        expected += len(sd)
        if kind == "open_clip":
            # q, k, v (weight and bias) fuse into in_proj_weight/bias; a projection-less model gains an identity one
            expected += -4 * encoder.config.num_hidden_layers + (0 if "text_projection.weight" in sd else 1)
    if family in ("sd1", "sd2"):
        expected += 3  # betas, alphas_cumprod, alphas_cumprod_prev
    assert len(ckpt) == expected


def test_sd1_layout(written):
    model, ckpt = written["sd1"]
    u = "model.diffusion_model."
    # level 0: res+attn at 1, downsample at 2; level 1: res+attn at 3. Upsampler sits after the attention.
    for key in (
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.2.0.op.weight",
        "input_blocks.3.0.skip_connection.weight",
        "middle_block.1.norm.weight",
        "middle_block.2.out_layers.3.weight",
        "output_blocks.1.2.conv.weight",
        "output_blocks.3.1.proj_out.weight",
        "time_embed.2.weight",
        "out.2.weight",
    ):
        assert u + key in ckpt, key
    assert ckpt[u + "input_blocks.1.1.proj_in.weight"].ndim == 4  # SD1: 1x1 conv projection
    assert ckpt["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 64)
    assert ckpt["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    # ldm numbers decoder levels in reverse: diffusers' up_blocks[0] (lowest resolution) is up.3 of 4
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in ckpt
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ckpt
    assert torch.equal(  # the 64 -> 32 channel change sits in diffusers' up_blocks[2], ldm's up.1
        ckpt["first_stage_model.decoder.up.1.block.0.nin_shortcut.weight"],
        model.vae.state_dict()["decoder.up_blocks.2.resnets.0.conv_shortcut.weight"],
    )


def test_sdxl_layout(written):
    _, ckpt = written["sdxl"]
    u = "model.diffusion_model."
    assert ckpt[u + "label_emb.0.0.weight"].shape[1] == 32 + 6 * 256
    assert u + "label_emb.0.2.weight" in ckpt
    assert u + "input_blocks.1.1.norm.weight" not in ckpt  # DownBlock2D: no attention at level 0
    assert u + "input_blocks.3.1.transformer_blocks.1.ff.net.2.weight" in ckpt  # depth 2 at level 1
    assert u + "output_blocks.1.2.conv.weight" in ckpt
    assert u + "output_blocks.3.0.skip_connection.weight" in ckpt
    assert ckpt[u + "input_blocks.3.1.proj_in.weight"].ndim == 2  # linear projection
    g = "conditioner.embedders.1.model."
    assert ckpt[g + "text_projection"].shape == (64, 32)  # OpenCLIP stores [hidden, proj]
    assert ckpt[g + "transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * 64, 64)
    assert ckpt[g + "positional_embedding"].shape == (77, 64)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in ckpt
    assert "betas" not in ckpt


def test_refiner_layout(written):
    _, ckpt = written["sdxl_refiner"]
    assert ckpt["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 32 + 5 * 256
    assert ckpt["conditioner.embedders.0.model.text_projection"].shape == (64, 32)
    assert not any(k.startswith("conditioner.embedders.1.") for k in ckpt)


def test_ddpm_buffers(written):
    _, ckpt = written["sd1"]
    betas, ac, prev = ckpt["betas"], ckpt["alphas_cumprod"], ckpt["alphas_cumprod_prev"]
    assert betas.shape == ac.shape == prev.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    assert ac[0].item() == pytest.approx(1 - 0.00085)
    assert prev[0].item() == 1.0 and torch.equal(prev[1:], ac[:-1])


def test_ckpt_format_and_dtype(tmp_path):
    # The suffix picks the format: .ckpt is a pickled {"state_dict": ...} like the original releases.
    model = write_tiny_checkpoint(tmp_path / "m.ckpt", "sd1", dtype=torch.float16)
    assert model.path == tmp_path / "m.ckpt"
    sd = torch.load(model.path, weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float16 for t in sd.values())
    want = ldm_export.unet_to_ldm(model.unet.state_dict(), model.unet.config)
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(sd[key], want[key].half())


def test_shared_and_strided_tensors_are_saved(tmp_path):
    model = build_family("sd1")
    base = torch.arange(12.0).reshape(3, 4)
    extra = {"extra.a": base, "extra.b": base, "extra.t": base.t(), "extra.row": base[1]}
    ldm_export.write_checkpoint(
        tmp_path / "m.safetensors", "sd1", model.unet, model.vae, model.text_encoders, extra=extra
    )
    sd = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(sd["extra.t"], base.t()) and torch.equal(sd["extra.row"], base[1])


@pytest.mark.parametrize("with_prefix", [False, True])
def test_clip_keys_with_or_without_text_model_level(with_prefix):
    sd = {"embeddings.token_embedding.weight": torch.zeros(3, 2)}
    if with_prefix:
        sd = {"text_model." + k: v for k, v in sd.items()}
    out = ldm_export.clip_l_to_ldm(sd, "cond_stage_model.")
    assert list(out) == ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    out = ldm_export.open_clip_to_ldm(sd, "cond_stage_model.")
    assert sorted(out) == ["cond_stage_model.model.text_projection", "cond_stage_model.model.token_embedding.weight"]


def test_unknown_keys_raise():
    with pytest.raises(ValueError):
        ldm_export.vae_to_ldm({"encoder.something_new.weight": torch.zeros(1)})
    with pytest.raises(ValueError):
        ldm_export.unet_to_ldm({"encoder_hid_proj.weight": torch.zeros(1)}, {})
    with pytest.raises(ValueError):
        ldm_export.checkpoint_state_dict("sd3", None, {}, [])


@pytest.mark.parametrize(("variant", "channels"), [("inpaint", 9), ("depth", 5), ("ip2p", 8)])
def test_variants_change_input_channels(variant, channels):
    model = build_family("sd1", variant)
    sd = ldm_export.unet_to_ldm(model.unet.state_dict(), model.unet.config)
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == channels


def test_builders_are_deterministic():
    a, b, c = build_family("sd1", seed=3), build_family("sd1", seed=3), build_family("sd1", seed=4)
    for x, y in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoders[0], b.text_encoders[0])):
        assert_same_tensors(x.state_dict(), y.state_dict())
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)


def _probe(unet) -> float:
    """The loader's (A1111's) v-prediction probe."""
    x = torch.full((1, 4, 8, 8), 0.5)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    with torch.no_grad():
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - x).mean().item()


def test_sd2_prediction_fixture():
    assert _probe(build_unet("sd2", prediction="v")) < -1
    assert _probe(build_unet("sd2", prediction="epsilon")) > -1
    assert _probe(build_unet("sd2")) > -1  # seed 0's random weights read as epsilon
