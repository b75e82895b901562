"""The CLIP tokenizer folders shipped in configs/tokenizers load offline and behave like CLIP's tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKENIZERS = ROOT / "configs" / "tokenizers"
FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# folder -> pad id: CLIP-L pads with the end token, OpenCLIP with token 0 ("!")
PAD_IDS = {"clip-vit-large-patch14": 49407, "open-clip": 0}


def _tool():
    spec = importlib.util.spec_from_file_location("make_clip_tokenizer", ROOT / "tools" / "make_clip_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=list(PAD_IDS))
def tokenizer(request) -> tuple[str, CLIPTokenizer]:
    return request.param, CLIPTokenizer.from_pretrained(str(TOKENIZERS / request.param), local_files_only=True)


def test_folders_hold_the_files():
    for folder in PAD_IDS:
        for name in FILES:
            assert (TOKENIZERS / folder / name).is_file(), f"{folder}/{name}"
        assert (TOKENIZERS / folder / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_encodes_like_clip(tokenizer):
    _, tok = tokenizer
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)


def test_pads_to_77(tokenizer):
    folder, tok = tokenizer
    ids = tok("a photo of a cat", padding="max_length", max_length=77)["input_ids"]
    assert len(ids) == 77
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert set(ids[7:]) == {PAD_IDS[folder]}
    assert tok.pad_token_id == PAD_IDS[folder]


def test_exclamation_mark_is_ordinary_text(tokenizer):
    # OpenCLIP's pad token is "!", yet in a prompt "!" must stay CLIP's "!</w>" (256), not become padding.
    _, tok = tokenizer
    assert tok("wow!")["input_ids"] == [49406, 2781, 256, 49407]


def test_vocabulary_ends_with_the_special_tokens(tokenizer):
    _, tok = tokenizer
    vocab = tok.get_vocab()
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_tool_regenerates_identical_files(tmp_path):
    tool = _tool()
    wheel = tool.find_local_wheel()  # never downloads
    if wheel is None:
        pytest.skip("open_clip_torch wheel not available locally (set OPEN_CLIP_WHEEL to its path)")
    tool.write_tokenizers(wheel, tmp_path)
    for folder in PAD_IDS:
        for name in FILES:
            assert (tmp_path / folder / name).read_bytes() == (TOKENIZERS / folder / name).read_bytes(), name
