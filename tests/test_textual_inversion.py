"""Textual-inversion embeddings (modules/textual_inversion.py, the prompt encoder) on tiny random models.

The reference for "the embedding's vectors went through the encoder" never uses the hook: it is a copy of the
text encoder whose vocabulary rows for a few filler words hold the embedding's vectors, fed ids built by hand.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
import pickle
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file
from tiny_models import build_family

from modules import hashes, prompt_parser, shared, textual_inversion
from modules import textual_inversion_image as tii
from modules.engine.conditioning import PromptEncoder
from modules.models.detection import ModelSpec
from modules.models.loader import default_alphas_cumprod, load_tokenizer
from modules.models.sd_model import StableDiffusionModel

WIDTH = 64  # every tiny text encoder's hidden size
BOS, EOS = 49406, 49407
FILLERS = ["cat", "dog", "tree", "house", "car", "bird", "fish", "moon"]  # one token each
TOKENIZERS = {"sd1": ["clip-l"], "sd2": ["open-clip"], "sdxl": ["clip-l", "open-clip"], "sdxl_refiner": ["open-clip"]}


# --- fixtures and helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> dict[str, StableDiffusionModel]:
    made = {}
    for family in ("sd1", "sdxl", "sdxl_refiner"):
        tiny = build_family(family, seed=11)
        made[family] = StableDiffusionModel(
            spec=ModelSpec(family, prediction_type="epsilon"), unet=tiny.unet, vae=tiny.vae,
            text_encoders=tiny.text_encoders, tokenizers=[load_tokenizer(k) for k in TOKENIZERS[family]],
            alphas_cumprod=default_alphas_cumprod())
    return made


@pytest.fixture
def sd1(models):
    return models["sd1"]


@pytest.fixture
def sdxl(models):
    return models["sdxl"]


@pytest.fixture(autouse=True)
def emb_dir(tmp_path, monkeypatch) -> Path:
    """A fresh embeddings folder and database, a private hash cache, and no model loaded."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    monkeypatch.setattr(shared.cmd_opts, "embeddings_dir", str(folder))
    monkeypatch.setattr(textual_inversion, "embedding_db", textual_inversion.EmbeddingDatabase())
    monkeypatch.setattr(hashes, "cache_filename", str(tmp_path / "cache.json"))
    monkeypatch.setattr(hashes, "_data", None)
    monkeypatch.setattr(hashes, "_loaded_from", None)
    monkeypatch.setattr(shared, "sd_model", None)
    return folder


def vectors(n: int, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=g) * 0.5


def write_pt(path: Path, vec: torch.Tensor, **meta) -> Path:
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": path.stem, "step": 10,
            "sd_checkpoint": "4bdfc29c", "sd_checkpoint_name": "v1-5"}
    data.update(meta)
    torch.save(data, path)
    return path


def write_sdxl(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    return path


def png_text_embedding(path: Path, data_json: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(data_json.encode()).decode())
    Image.new("RGB", (32, 32), (200, 100, 50)).save(path, pnginfo=info)
    return path


def a1111_json(vec: torch.Tensor, **extra) -> str:
    """The JSON A1111 writes into an image: tensors as {"TORCHTENSOR": lists}."""
    return json.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": vec.tolist()}},
                       "step": 7, **extra})


def encode(model: StableDiffusionModel, texts: list[str], **kw):
    return PromptEncoder(model, **kw).encode(texts)


def filler_ids(model: StableDiffusionModel, n: int) -> list[int]:
    return [model.tokenizers[0].convert_tokens_to_ids(w + "</w>") for w in FILLERS[:n]]


def reference_model(model: StableDiffusionModel, parts: list[torch.Tensor]) -> StableDiffusionModel:
    """A copy whose vocabulary rows for the first len(part) filler words hold each encoder's vectors."""
    encoders = [copy.deepcopy(te) for te in model.text_encoders]
    for te, part in zip(encoders, parts, strict=True):
        with torch.no_grad():
            te.get_input_embeddings().weight[filler_ids(model, part.shape[0])] = part
    return dataclasses.replace(model, text_encoders=encoders)


def hand_ids(model: StableDiffusionModel, before: str, n: int, pad: int) -> torch.Tensor:
    tok = model.tokenizers[0]
    body = tok(before, add_special_tokens=False).input_ids + filler_ids(model, n)
    return torch.tensor([[BOS, *body, EOS] + [pad] * (75 - len(body))])


# --- (a) the embedding's vectors go through the encoder -------------------------------------------------------------


def test_sd1_rows_equal_the_encoder_fed_the_vectors_by_hand(sd1, emb_dir):
    vec = vectors(3)
    write_pt(emb_dir / "myemb.pt", vec)
    got = encode(sd1, ["a photo of myemb"])[0]

    ref = reference_model(sd1, [vec])
    with torch.no_grad():
        expected = ref.text_encoders[0](hand_ids(sd1, "a photo of", 3, EOS)).last_hidden_state[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the test can fail: without the embedding the name's own tokens give something else
    textual_inversion.embedding_db = textual_inversion.EmbeddingDatabase()
    (emb_dir / "myemb.pt").unlink()
    assert (encode(sd1, ["a photo of myemb"])[0] - expected).abs().max() > 1e-3


def test_sdxl_clip_l_goes_to_the_first_encoder_and_clip_g_to_the_second(sdxl, emb_dir):
    clip_l, clip_g = vectors(2, seed=1), vectors(2, seed=2)
    write_sdxl(emb_dir / "xlemb.safetensors", clip_l, clip_g)
    got = encode(sdxl, ["a photo of xlemb"])

    ref = reference_model(sdxl, [clip_l, clip_g])
    pads = [t.pad_token_id for t in sdxl.tokenizers]
    with torch.no_grad():
        out1 = ref.text_encoders[0](hand_ids(sdxl, "a photo of", 2, pads[0]), output_hidden_states=True)
        out2 = ref.text_encoders[1](hand_ids(sdxl, "a photo of", 2, pads[1]), output_hidden_states=True)
    expected = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)[0]
    torch.testing.assert_close(got["crossattn"][0], expected, rtol=0, atol=1e-6)
    # pooled from the EOS position, which the placeholders must not move
    torch.testing.assert_close(got["vector"][0], out2.text_embeds[0], rtol=0, atol=1e-6)
    swapped = reference_model(sdxl, [clip_g, clip_l])
    assert (encode(swapped, ["a photo of cat dog"])["crossattn"][0] - expected).abs().max() > 1e-3


def test_the_refiner_takes_the_clip_g_part(models, emb_dir):
    refiner = models["sdxl_refiner"]
    clip_l, clip_g = vectors(2, seed=3), vectors(2, seed=4)
    write_sdxl(emb_dir / "xlemb.safetensors", clip_l, clip_g)
    got = encode(refiner, ["xlemb, sky"])
    expected = encode(reference_model(refiner, [clip_g]), ["cat dog, sky"])
    torch.testing.assert_close(got["crossattn"], expected["crossattn"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["vector"], expected["vector"], rtol=0, atol=1e-6)


FORMATS = ["pt", "pt_parameterdict", "bin_diffusers_1d", "bin_diffusers_2d", "safetensors_emb_params",
           "safetensors_single", "png_text", "png_pixels", "webp_pixels"]


def write_format(folder: Path, fmt: str, vec: torch.Tensor) -> str:
    """Write `vec` in one file format; returns the embedding's name."""
    if fmt == "pt":
        write_pt(folder / "embpt.pt", vec)
        return "embpt"
    if fmt == "pt_parameterdict":  # the original textual-inversion code's layout
        params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
        torch.save({"string_to_token": {"*": 265}, "string_to_param": params, "step": 3}, folder / "embold.pt")
        return "embold"
    if fmt == "bin_diffusers_1d":
        torch.save({"<concept>": vec[0]}, folder / "learned_embeds.bin")
        return "learned_embeds"
    if fmt == "bin_diffusers_2d":
        torch.save({"<concept>": vec}, folder / "embbin.bin")
        return "embbin"
    if fmt == "safetensors_emb_params":
        save_file({"emb_params": vec}, str(folder / "kohya.safetensors"))
        return "kohya"
    if fmt == "safetensors_single":
        save_file({"<token>": vec}, str(folder / "embst.safetensors"))
        return "embst"
    if fmt == "png_text":
        png_text_embedding(folder / "picture.png", a1111_json(vec, name="pngemb"))
        return "pngemb"  # the name inside the image wins over the file name, as in A1111
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec.double()}, "name": "pixemb", "step": 2}
    image = tii.insert_image_data_embed(Image.new("RGB", (64, 48), (90, 160, 220)), data)
    if fmt == "png_pixels":
        image.save(folder / "pixels.png")
    else:
        image.save(folder / "pixels.webp", lossless=True)
    return "pixemb"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_and_encodes_like_the_reference(fmt, sd1, emb_dir):
    n = 1 if fmt == "bin_diffusers_1d" else 3
    vec = vectors(n, seed=5)
    name = write_format(emb_dir, fmt, vec)
    lookup = textual_inversion.embedding_db.lookup_for(sd1)
    assert list(lookup.word_embeddings) == [name], lookup.reasons
    emb = lookup.word_embeddings[name]
    assert (emb.vectors, emb.shape) == (n, WIDTH)
    torch.testing.assert_close(emb.vec, vec.float(), rtol=0, atol=1e-6)

    got = encode(sd1, [f"portrait, {name}, sky"])
    expected = encode(reference_model(sd1, [vec]), [f"portrait, {' '.join(FILLERS[:n])}, sky"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# --- (b) prompts without the name are unchanged ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_prompts_without_an_embedding_are_bit_identical(family, models, emb_dir):
    model = models[family]
    texts = ["a photo of a cat", "(masterpiece:1.3), [dog] BREAK sky", ", ".join(f"w{i}" for i in range(60)), ""]
    plain = encode(model, texts)  # empty folder
    write_pt(emb_dir / "myemb.pt", vectors(2))
    write_sdxl(emb_dir / "xlemb.safetensors", vectors(2), vectors(2, seed=9))
    with_folder = encode(model, texts)
    if family == "sd1":
        assert torch.equal(plain, with_folder)
        # and the same as the encoder fed the tokenizer's ids directly (alone: emphasis renormalises a batch)
        ids = model.tokenizers[0](texts[0], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(encode(model, texts[:1]), model.text_encoders[0](ids).last_hidden_state)
    else:
        assert torch.equal(plain["crossattn"], with_folder["crossattn"])
        assert torch.equal(plain["vector"], with_folder["vector"])


# --- (c) the negative prompt ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_negative_prompt_uses_the_embedding(family, models, emb_dir):
    model = models[family]
    clip_l, clip_g = vectors(2, seed=6), vectors(2, seed=7)
    if family == "sd1":
        write_pt(emb_dir / "badhands.pt", clip_l)
        ref = reference_model(model, [clip_l])
    else:
        write_sdxl(emb_dir / "badhands.safetensors", clip_l, clip_g)
        ref = reference_model(model, [clip_l, clip_g])
    encoder = PromptEncoder(model)
    negatives = prompt_parser.SdConditioning(["blurry, badhands"], is_negative_prompt=True, width=64, height=64)
    got = prompt_parser.get_learned_conditioning(encoder.encode, negatives, 20)[0][0].cond
    ref_negatives = prompt_parser.SdConditioning(["blurry, cat dog"], is_negative_prompt=True, width=64, height=64)
    expected = prompt_parser.get_learned_conditioning(PromptEncoder(ref).encode, ref_negatives, 20)[0][0].cond
    if family == "sd1":
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(got["crossattn"], expected["crossattn"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["vector"], expected["vector"], rtol=0, atol=1e-6)
    assert list(encoder.used_embeddings) == ["badhands"]


# --- emphasis, chunks, matching -------------------------------------------------------------------------------------


def test_emphasis_weights_apply_to_the_embedding_vectors(sd1, emb_dir):
    vec = vectors(2, seed=8)
    write_pt(emb_dir / "myemb.pt", vec)
    ref = reference_model(sd1, [vec])
    for emphasis in ("Original", "No norm"):
        got = encode(sd1, ["(myemb:1.6), photo"], emphasis=emphasis)
        expected = encode(ref, ["(cat dog:1.6), photo"], emphasis=emphasis)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert (got - encode(sd1, ["myemb, photo"], emphasis=emphasis)).abs().max() > 1e-3
    chunk = PromptEncoder(sd1).chunks("(myemb:1.6), photo")[0]
    assert chunk[1][:3] == [1.6, 1.6, 1.0]


def test_the_vectors_stay_in_one_chunk(sd1, emb_dir):
    write_pt(emb_dir / "fourvec.pt", vectors(4))
    encoder = PromptEncoder(sd1)
    chunks = encoder.chunks(" ".join(["word"] * 73) + " fourvec")
    assert len(chunks) == 2
    assert chunks[0][0][73:] == [-1, -1]  # the embedding did not fit after 73 words: all four moved on
    assert all(t >= 1 << 30 for t in chunks[1][0][:4]) and chunks[1][0][4] == -1
    got = encoder.encode([" ".join(["word"] * 73) + " fourvec"])
    assert got.shape == (1, 154, WIDTH)


def test_token_counter_counts_the_vectors(sd1, emb_dir):
    write_pt(emb_dir / "fivevec.pt", vectors(5))
    encoder = PromptEncoder(sd1)
    assert encoder.token_count("a photo of fivevec") == (3 + 5, 75)
    assert encoder.token_count("(fivevec:1.2) " * 16) == (80, 150)
    assert PromptEncoder(sd1).token_count("a photo of fivevecs")[0] < 8  # another word: the name's tokens only


def test_longest_name_matches_first(sd1, emb_dir):
    write_pt(emb_dir / "foo.pt", vectors(1))
    write_pt(emb_dir / "foo bar.pt", vectors(3, seed=1))
    encoder = PromptEncoder(sd1)
    assert encoder.token_count("foo bar")[0] == 3
    assert encoder.token_count("foo baz")[0] == 1 + 1
    db = textual_inversion.embedding_db
    shared.sd_model = sd1
    try:
        db.load_textual_inversion_embeddings()
        ids = sd1.tokenizers[0]("x foo bar", add_special_tokens=False).input_ids
        embedding, length = db.find_embedding_at_position(ids, 1)
        assert (embedding.name, length) == ("foo bar", 2)
        assert db.find_embedding_at_position(ids, 0) == (None, None)
    finally:
        shared.sd_model = None


def test_names_keep_their_case_and_match_as_tokens(sd1, emb_dir):
    write_pt(emb_dir / "MyStyle.pt", vectors(2))
    lookup = textual_inversion.embedding_db.lookup_for(sd1)
    assert list(lookup.word_embeddings) == ["MyStyle"]
    # CLIP's tokenizer lower-cases, and A1111 matches token ids: both spellings use it
    assert PromptEncoder(sd1).token_count("MyStyle")[0] == PromptEncoder(sd1).token_count("mystyle")[0] == 2


# --- (g) the hook leaves nothing behind -----------------------------------------------------------------------------


def test_the_hook_leaves_nothing_behind(sd1, emb_dir):
    before = encode(sd1, ["a photo of a cat"])
    write_pt(emb_dir / "myemb.pt", vectors(3))
    for _ in range(3):
        with_emb = encode(sd1, ["a photo of myemb"])
    assert not torch.equal(with_emb, before[:, :, :])
    assert torch.equal(encode(sd1, ["a photo of a cat"]), before)
    ids = sd1.tokenizers[0]("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(sd1.text_encoders[0](ids).last_hidden_state, before)
    hooks = sd1.text_encoders[0].get_input_embeddings()._forward_hooks.values()
    assert sum(h is textual_inversion._replace_hook for h in hooks) == 1  # registered once
    assert textual_inversion._pending_map() == {}


def test_a_failed_encode_leaves_nothing_behind(sd1, emb_dir, monkeypatch):
    write_pt(emb_dir / "myemb.pt", vectors(3))
    before = encode(sd1, ["a photo of a cat"])
    encoder = PromptEncoder(sd1)

    def broken(slot, ids):
        slot.encoder(ids)
        raise RuntimeError("boom")

    monkeypatch.setattr(encoder, "_encode_chunk", broken)
    with pytest.raises(RuntimeError, match="boom"):
        encoder.encode(["myemb"])
    assert textual_inversion._pending_map() == {}
    assert torch.equal(encode(sd1, ["a photo of a cat"]), before)


def test_replacements_belong_to_the_thread_that_set_them(sd1):
    encoder = sd1.text_encoders[0]
    ids = torch.tensor([[BOS, 0, 0, EOS] + [EOS] * 73])
    with torch.no_grad():
        plain = encoder(ids).last_hidden_state
    fixes = textual_inversion.TokenReplacements(torch.tensor([0, 0]), torch.tensor([1, 2]), vectors(2))
    seen = {}
    with textual_inversion.token_replacements(encoder, fixes), torch.no_grad():
        worker = threading.Thread(target=lambda: seen.update(other=encoder(ids).last_hidden_state))
        worker.start()
        worker.join()
        mine = encoder(ids).last_hidden_state
    assert torch.equal(seen["other"], plain)
    assert not torch.equal(mine, plain)


def test_an_encoder_that_skips_its_token_embedding_is_an_error(sd1):
    fixes = textual_inversion.TokenReplacements(torch.tensor([0]), torch.tensor([1]), vectors(1))
    with pytest.raises(RuntimeError, match="did not run its token embedding"):
        with textual_inversion.token_replacements(sd1.text_encoders[0], fixes):
            pass
    assert textual_inversion._pending_map() == {}


# --- (d) skipped files ----------------------------------------------------------------------------------------------


def test_wrong_width_and_wrong_family_are_skipped_with_a_reason(models, emb_dir, monkeypatch):
    write_pt(emb_dir / "narrow.pt", vectors(2, width=32))
    write_pt(emb_dir / "sd1emb.pt", vectors(2))
    write_sdxl(emb_dir / "xlemb.safetensors", vectors(2), vectors(2, seed=1))

    monkeypatch.setattr(shared, "sd_model", models["sd1"])
    reasons = textual_inversion.skipped_reasons()
    assert set(reasons) == {"narrow", "xlemb"}
    assert "width 32" in reasons["narrow"] and "SD1" in reasons["narrow"]
    assert "SDXL embedding" in reasons["xlemb"] and "SD1" in reasons["xlemb"]
    listing = textual_inversion.api_listing()
    assert list(listing["loaded"]) == ["sd1emb"]
    assert listing["skipped"]["narrow"] == {"step": 10, "sd_checkpoint": "4bdfc29c", "sd_checkpoint_name": "v1-5",
                                            "shape": 32, "vectors": 2}

    monkeypatch.setattr(shared, "sd_model", models["sdxl"])
    reasons = textual_inversion.skipped_reasons()
    assert set(reasons) == {"narrow", "sd1emb"}
    assert "width 64" in reasons["sd1emb"] and "the loaded model is SDXL" in reasons["sd1emb"]
    assert list(textual_inversion.embedding_db.word_embeddings) == ["xlemb"]
    assert textual_inversion.api_listing()["loaded"]["xlemb"]["shape"] == 2 * WIDTH  # A1111: clip_l + clip_g


def test_a1111_reason_wording_for_real_widths(models):
    emb = textual_inversion.Embedding(torch.zeros(1, 768), "x")
    assert textual_inversion.fit_reason(emb, "sdxl", [("clip_l", 768), ("clip_g", 1280)]).startswith(
        "width 768 fits SD1, the loaded model is SDXL")
    assert textual_inversion.fit_reason(emb, "sd1", [("clip_l", 768)]) is None


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-embedding",))


def _pickle_file(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


HOSTILE = {
    "nan.pt": (lambda p: write_pt(p, torch.full((2, WIDTH), float("nan"))), "NaN"),
    "inf.safetensors": (lambda p: save_file({"emb_params": torch.full((1, WIDTH), float("inf"))}, str(p)), "infinite"),
    "ints.pt": (lambda p: write_pt(p, torch.ones(2, WIDTH, dtype=torch.int64)), "not floats"),
    "threed.pt": (lambda p: write_pt(p, torch.zeros(2, 2, WIDTH)), "shape (2, 2, 64)"),
    "novectors.pt": (lambda p: write_pt(p, torch.zeros(0, WIDTH)), "0 vectors"),
    "toomany.pt": (lambda p: write_pt(p, torch.zeros(100, WIDTH)), "100 vectors"),
    "widewidth.safetensors": (lambda p: save_file({"x": torch.zeros(1, 5000)}, str(p)), "width 5000"),
    "string.pt": (lambda p: torch.save({"string_to_param": {"*": "hello"}}, p), "str, not a tensor"),
    "notdict.pt": (lambda p: torch.save({"string_to_param": [1, 2]}, p), "not a dictionary"),
    "twoterms.pt": (lambda p: torch.save({"string_to_param": {"*": vectors(1), "+": vectors(1)}}, p), "2 terms"),
    "list.pt": (lambda p: torch.save([vectors(1)], p), "list, not a dictionary"),
    "manykeys.safetensors": (lambda p: save_file({"a": vectors(1), "b": vectors(1)}, str(p)), "none of"),
    "mismatch.safetensors": (lambda p: write_sdxl(p, vectors(2), vectors(3)), "clip_l has 2 vectors"),
    "runscode.pt": (lambda p: _pickle_file(p, {"string_to_param": {"*": _RunsCode()}}), "refused"),
    "runscodezip.pt": (lambda p: torch.save({"string_to_param": {"*": _RunsCode()}}, p), "refused"),
    "garbage.pt": (lambda p: p.write_bytes(b"not a pickle at all" * 10), "not a PyTorch checkpoint"),
    "truncated.safetensors": (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "not a valid"),
    "liar.safetensors": (lambda p: p.write_bytes(
        (lambda h: len(h).to_bytes(8, "little") + h)(
            json.dumps({"x": {"dtype": "F32", "shape": [10**9, 768], "data_offsets": [0, 4]}}).encode()) + b"\0" * 4),
        "need"),
    "badb64.png": (lambda p: png_text_embedding(p, "x").write_bytes(
        p.read_bytes().replace(base64.b64encode(b"x"), b"@@@@")), "not"),
    "array.png": (lambda p: png_text_embedding(p, "[1, 2, 3]"), "not an object"),
    "ragged.png": (lambda p: png_text_embedding(p, json.dumps({"string_to_param": {"*": {"TORCHTENSOR": [[1.0], [1.0, 2.0]]}}})),
                   "rectangular"),
    "deep.png": (lambda p: png_text_embedding(p, "[" * 5000 + "]" * 5000), "levels deep"),
    "nanjson.png": (lambda p: png_text_embedding(p, '{"string_to_param": {"*": {"TORCHTENSOR": [[NaN, 1.0]]}}}'), "NaN"),
    "notimage.png": (lambda p: p.write_bytes(b"\x89PNG but not really"), "cannot be read"),
}


def test_hostile_files_are_skipped_with_a_reason(sd1, emb_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for filename, (write, _) in HOSTILE.items():
        write(emb_dir / filename)
    write_pt(emb_dir / "good.pt", vectors(2))
    (emb_dir / "empty.pt").write_bytes(b"")  # ignored, as A1111 does

    lookup = textual_inversion.embedding_db.lookup_for(sd1)
    assert list(lookup.word_embeddings) == ["good"]
    for filename, (_, expected) in HOSTILE.items():
        name = filename.rsplit(".", 1)[0]
        assert expected in lookup.reasons.get(name, ""), (filename, lookup.reasons.get(name))
    assert "empty" not in lookup.reasons
    assert not (tmp_path / "pwned-by-embedding").exists()
    assert encode(sd1, ["good"]).shape == (1, 77, WIDTH)


def test_a_file_too_large_is_not_read(sd1, emb_dir, monkeypatch):
    monkeypatch.setattr(textual_inversion, "MAX_FILE_BYTES", 1000)
    write_pt(emb_dir / "big.pt", vectors(20))
    reasons = textual_inversion.embedding_db.lookup_for(sd1).reasons
    assert "far larger than an embedding" in reasons["big"]


def test_a_symlink_loop_is_walked_once(sd1, emb_dir):
    sub = emb_dir / "sub"
    sub.mkdir()
    write_pt(sub / "inner.pt", vectors(1))
    os.symlink(emb_dir, sub / "loop")
    assert list(textual_inversion.embedding_db.lookup_for(sd1).word_embeddings) == ["inner"]


# --- (e) images -----------------------------------------------------------------------------------------------------


def test_png_text_chunk_embedding(sd1, emb_dir):
    vec = vectors(2, seed=12)
    png_text_embedding(emb_dir / "shown.png", a1111_json(vec, name="chunkemb", sd_checkpoint_name="model-x"))
    shared.sd_model = sd1
    try:
        listing = textual_inversion.api_listing()
    finally:
        shared.sd_model = None
    assert listing["loaded"] == {"chunkemb": {"step": 7, "sd_checkpoint": None, "sd_checkpoint_name": "model-x",
                                              "shape": WIDTH, "vectors": 2}}
    expected = encode(reference_model(sd1, [vec]), ["cat dog"])
    torch.testing.assert_close(encode(sd1, ["chunkemb"]), expected, rtol=0, atol=1e-6)


def test_preview_pictures_and_plain_images_are_ignored(sd1, emb_dir):
    write_pt(emb_dir / "myemb.pt", vectors(1))
    Image.new("RGB", (16, 16), (255, 255, 255)).save(emb_dir / "myemb.preview.png")
    Image.new("RGB", (16, 16), (10, 200, 30)).save(emb_dir / "holiday.png")
    # a preview next to its embedding, whose black stripes look like data blocks to the pixel decoder
    striped = np.full((16, 16, 3), 200, dtype=np.uint8)
    striped[:, 3] = striped[:, 9] = 0
    Image.fromarray(striped).save(emb_dir / "myemb.png")
    lookup = textual_inversion.embedding_db.lookup_for(sd1)
    assert list(lookup.word_embeddings) == ["myemb"] and lookup.reasons == {}


def test_the_pixel_format_uses_a1111s_random_stream():
    values = tii.lcg_values(100_100)
    # the start of the stream and a checksum, from A1111's own self-test of image_embedding.py
    assert values[:12].tolist() == [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4]
    assert int(values[100:].astype(np.int64).sum()) == 12731374


def test_pixel_format_round_trip_and_layout():
    vec = torch.from_numpy(np.random.default_rng(0).random((2, 300)))
    data = {"string_to_param": {"*": vec}, "name": "x", "step": 4}
    picture = Image.new("RGB", (40, 30), (100, 120, 140))
    image = tii.insert_image_data_embed(picture, data)
    assert image.size[1] == 30
    pixels = np.asarray(image)
    low_cols = (image.size[0] - 40 - 2) // 2
    assert (pixels[:, low_cols] == 0).all() and (pixels[:, low_cols + 41] == 0).all()  # the black separators
    assert np.array_equal(pixels[:, low_cols + 1:low_cols + 41], np.asarray(picture))
    back = tii.extract_image_data_embed(image)
    assert back["name"] == "x" and back["step"] == 4
    assert torch.equal(back["string_to_param"]["*"], vec)
    # the high nibbles of each data byte are on the right, the low ones on the left
    lower = tii.xor_block(pixels[:, :low_cols] & 0x0F)
    upper = tii.xor_block(pixels[:, low_cols + 42:] & 0x0F)
    assert zlib.decompress(((upper << 4) | lower).tobytes()).startswith(b'{"string_to_param"')


def test_an_image_zip_bomb_is_refused():
    bomb = zlib.compress(b" " * (tii.MAX_JSON_BYTES + 10), 9)
    with pytest.raises(tii.ImageEmbeddingError, match="inflates to more"):
        tii._inflate(bomb)


# --- reloading ------------------------------------------------------------------------------------------------------


def test_files_are_read_again_when_they_change(sd1, emb_dir):
    db = textual_inversion.embedding_db
    assert db.lookup_for(sd1).word_embeddings == {}
    path = write_pt(emb_dir / "changing.pt", vectors(2))
    assert db.lookup_for(sd1).word_embeddings["changing"].vectors == 2
    first = db.lookup_for(sd1)
    assert db.lookup_for(sd1) is first  # nothing changed: nothing read again
    write_pt(path, vectors(4))
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    assert db.lookup_for(sd1).word_embeddings["changing"].vectors == 4
    (emb_dir / "deeper").mkdir()
    write_pt(emb_dir / "deeper" / "nested.pt", vectors(1))
    assert list(db.lookup_for(sd1).word_embeddings) == ["changing", "nested"]
    path.unlink()
    assert list(db.lookup_for(sd1).word_embeddings) == ["nested"]


def test_word_embeddings_follow_the_loaded_model(models, emb_dir, monkeypatch):
    write_pt(emb_dir / "sd1emb.pt", vectors(1))
    write_sdxl(emb_dir / "xlemb.safetensors", vectors(1), vectors(1, seed=1))
    db = textual_inversion.embedding_db
    word_embeddings = db.word_embeddings  # extensions keep this reference

    db.load_textual_inversion_embeddings()
    assert db.word_embeddings == {} and set(db.skipped_embeddings) == {"sd1emb", "xlemb"}
    assert db.skipped_reasons() == {"sd1emb": textual_inversion.NO_MODEL_REASON,
                                    "xlemb": textual_inversion.NO_MODEL_REASON}
    monkeypatch.setattr(shared, "sd_model", models["sd1"])
    db.load_textual_inversion_embeddings()
    assert list(word_embeddings) == ["sd1emb"] and list(db.skipped_embeddings) == ["xlemb"]
    assert db.expected_shape == WIDTH
    monkeypatch.setattr(shared, "sd_model", models["sdxl"])
    db.load_textual_inversion_embeddings()
    assert list(word_embeddings) == ["xlemb"] and list(db.skipped_embeddings) == ["sd1emb"]
    assert db.expected_shape == 2 * WIDTH
    db.load_textual_inversion_embeddings(force_reload=True)
    assert list(word_embeddings) == ["xlemb"]


def test_same_name_in_two_folders_the_one_that_fits_is_used(models, emb_dir):
    (emb_dir / "sd15").mkdir()
    (emb_dir / "xl").mkdir()
    write_pt(emb_dir / "sd15" / "style.pt", vectors(1))
    write_sdxl(emb_dir / "xl" / "style.safetensors", vectors(2), vectors(2, seed=1))
    db = textual_inversion.embedding_db
    assert db.lookup_for(models["sd1"]).word_embeddings["style"].vectors == 1
    xl = db.lookup_for(models["sdxl"])
    assert xl.word_embeddings["style"].vectors == 2 and xl.skipped_embeddings["style"].vectors == 1
    write_pt(emb_dir / "xl" / "zzz-copy.pt", vectors(3), name="ignored")
    (emb_dir / "xl" / "zzz-copy.pt").rename(emb_dir / "xl" / "style.pt")
    sd1 = db.lookup_for(models["sd1"])
    assert sd1.word_embeddings["style"].vectors == 1  # the first file (by path) of a name wins a tie
    # reasons are keyed by name, or by the file's path below the folder once the name is taken
    assert sd1.reasons == {"style": "sd15/style.pt already provides the name 'style'",
                           "xl/style.safetensors": sd1.reasons["xl/style.safetensors"]}
    assert sd1.reasons["xl/style.safetensors"].startswith("an SDXL embedding (clip_l 64, clip_g 64)")


def test_register_embedding_without_a_file(sd1, emb_dir, monkeypatch):
    monkeypatch.setattr(shared, "sd_model", sd1)
    write_pt(emb_dir / "runtime.pt", vectors(1))
    vec = vectors(2, seed=21)
    db = textual_inversion.embedding_db
    db.register_embedding(textual_inversion.Embedding(vec, "runtime"), sd1)
    assert db.word_embeddings["runtime"].vectors == 2  # registering a name replaces the file's, as in A1111
    assert db.skipped_reasons() == {"runtime": "(registered) runtime already provides the name 'runtime'"}
    expected = encode(reference_model(sd1, [vec]), ["cat dog"])
    torch.testing.assert_close(encode(sd1, ["runtime"]), expected, rtol=0, atol=1e-6)
    db.register_embedding_by_name(None, sd1, "runtime")
    assert db.word_embeddings["runtime"].vectors == 1
    with pytest.raises(ValueError, match="2-D"):
        db.register_embedding(textual_inversion.Embedding(torch.zeros(3), "flat"), sd1)


# --- infotext and listing -------------------------------------------------------------------------------------------


def test_used_embeddings_and_ti_hashes(sd1, emb_dir):
    a = write_pt(emb_dir / "alpha.pt", vectors(1))
    b = write_pt(emb_dir / "be,ta.pt", vectors(2))
    write_pt(emb_dir / "unused.pt", vectors(1))
    prompts = ["a (alpha:1.2) photo", "[dog:be,ta:5] in <lora:unused:1>", "plain"]
    used = textual_inversion.used_embeddings(prompts, sd1, steps=20)
    assert list(used) == ["alpha", "be,ta"]
    assert textual_inversion.used_embeddings(["nothing here"], sd1) == {}
    assert textual_inversion.used_embeddings(prompts, None) == {}

    sha_a = hashlib.sha256(a.read_bytes()).hexdigest()
    sha_b = hashlib.sha256(b.read_bytes()).hexdigest()
    assert used["alpha"].hash == sha_a and used["alpha"].shorthash == sha_a[:12]
    assert textual_inversion.ti_hashes_infotext(used) == f"alpha: {sha_a[:12]}, beta: {sha_b[:12]}"
    assert textual_inversion.ti_hashes_infotext({}) == ""


def test_the_encoder_reports_what_it_used(sd1, emb_dir):
    write_pt(emb_dir / "alpha.pt", vectors(1))
    write_pt(emb_dir / "beta.pt", vectors(1))
    encoder = PromptEncoder(sd1)
    prompt_parser.get_multicond_learned_conditioning(encoder.encode, ["[alpha:cat:2] AND dog"], 4)
    assert list(encoder.used_embeddings) == ["alpha"]


def test_no_hash_under_no_hashing(sd1, emb_dir, monkeypatch):
    write_pt(emb_dir / "alpha.pt", vectors(1))
    monkeypatch.setattr(hashes, "hashing_enabled", lambda: False)
    used = textual_inversion.used_embeddings(["alpha"], sd1)
    assert used["alpha"].shorthash == ""
    assert textual_inversion.ti_hashes_infotext(used) == ""


def test_a1111_module_paths():
    import modules.textual_inversion.image_embedding as image_embedding
    import modules.textual_inversion.textual_inversion as by_path

    from modules.textual_inversion import textual_inversion as by_attribute

    assert by_path is by_attribute is textual_inversion
    assert image_embedding is tii
    for name in ("Embedding", "EmbeddingDatabase", "DirWithTextualInversionEmbeddings", "create_embedding_from_data"):
        assert hasattr(by_path, name)
    for name in ("embedding_from_b64", "embedding_to_b64", "extract_image_data_embed", "insert_image_data_embed",
                 "EmbeddingEncoder", "lcg_values", "xor_block", "crop_black"):
        assert hasattr(image_embedding, name)
