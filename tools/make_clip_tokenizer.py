"""Build the offline CLIP tokenizer folders in ``configs/tokenizers/`` from the open_clip_torch wheel.

The project never fetches tokenizers from a model hub. OpenAI's CLIP BPE table ships inside the PyPI package
``open_clip_torch`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``); this tool derives from it exactly the
vocabulary CLIP's own tokenizer builds, and writes it in the layout ``transformers.CLIPTokenizer`` loads.

Usage::

    python tools/make_clip_tokenizer.py [WHEEL] [--out configs/tokenizers]

Without WHEEL the wheel is looked up locally (see ``find_local_wheel``) and otherwise fetched with
``pip download`` into a temporary folder. The output is deterministic: the same wheel gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

OPEN_CLIP_VERSION = "3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps this many merges: the vocabulary is 49408 = 256 bytes + 256 byte</w> + merges + 2 specials.
NUM_MERGES = 49152 - 256 - 2
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "configs" / "tokenizers"

# Folder name -> pad token. SD1 and SDXL's first encoder pad with the end token; OpenCLIP (SD2, SDXL's second
# encoder) pads with token 0, which is "!" in this vocabulary.
FOLDERS: dict[str, str] = {
    "clip-vit-large-patch14": EOS,
    "open-clip": "!",
}
# transformers registers every named special token as an "added token" that is cut out of the text before BPE.
# For "!" that would turn "wow!" into [wow, pad] instead of OpenCLIP's [wow, "!</w>"] (id 256), so the open-clip
# folder encodes special-token text with plain BPE. Cost: a literal "<|endoftext|>" typed in a prompt is split
# into pieces there instead of becoming id 49407 (the start/end/pad ids the tokenizer adds itself are unaffected).
SPLIT_SPECIAL_TOKENS: dict[str, bool] = {
    "clip-vit-large-patch14": False,
    "open-clip": True,
}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable character table, in CLIP's order (printable bytes first)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            # Bytes without a printable glyph map past U+00FF, in byte order.
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_bpe_text(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return gzip.decompress(zf.read(BPE_MEMBER)).decode("utf-8")


def derive_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """The vocabulary and merge list exactly as CLIP's SimpleTokenizer builds them."""
    merges = bpe_text.split("\n")[1 : NUM_MERGES + 1]  # line 0 is the file's header
    if len(merges) != NUM_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ValueError("unexpected BPE file layout")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in derived vocabulary")
    return vocab, merges


def _special(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def tokenizer_files(
    vocab: dict[str, int], merges: list[str], pad_token: str, split_special_tokens: bool = False
) -> dict[str, str]:
    """File name -> text for one tokenizer folder."""
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    # Only the two real special tokens are "added": marking "!" special would split it out of words like "hi!".
    decoder = {str(vocab[tok]): _special(tok) for tok in (BOS, EOS)}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": split_special_tokens,
        **specials,
        "added_tokens_decoder": decoder,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, indent=0) + "\n",
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(specials, ensure_ascii=False, indent=2) + "\n",
    }


def write_tokenizers(wheel: Path, out: Path) -> list[Path]:
    vocab, merges = derive_vocab_and_merges(read_bpe_text(wheel))
    written = []
    for folder, pad in FOLDERS.items():
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, text in tokenizer_files(vocab, merges, pad, SPLIT_SPECIAL_TOKENS[folder]).items():
            path = target / name
            path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation
            written.append(path)
    return written


def _wheel_name(version: str) -> str:
    return f"open_clip_torch-{version}-py3-none-any.whl"


def _pip_config() -> dict[str, str]:
    """pip's effective settings (``key='value'`` lines); reading them never touches the network."""
    try:
        text = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key.rsplit(".", 1)[-1], "")
            found[key.rsplit(".", 1)[-1]] += " " + value.strip().strip("'\"")
    return found


def _local_dir(location: str) -> Path | None:
    if location.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    if "://" in location:
        return None  # a remote index: looking there would be a download
    return Path(location)


def find_local_wheel(version: str = OPEN_CLIP_VERSION) -> Path | None:
    """The wheel if it is already on this machine: $OPEN_CLIP_WHEEL, or pip's local find-links / file:// indexes.

    Never downloads; used by the tests to decide whether the regeneration check can run.
    """
    env = os.environ.get("OPEN_CLIP_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    name = _wheel_name(version)
    cfg = _pip_config()
    links = (os.environ.get("PIP_FIND_LINKS", "") + " " + cfg.get("find-links", "")).split()
    for link in links:
        folder = _local_dir(link)
        if folder is not None and (folder / name).is_file():
            return folder / name
    indexes = (cfg.get("index-url", "") + " " + cfg.get("extra-index-url", "")).split()
    for index in indexes:
        folder = _local_dir(index)
        page = folder / "open-clip-torch" / "index.html" if folder else None
        if page is None or not page.is_file():
            continue
        for href in re.findall(r'href="([^"#]+)', page.read_text(encoding="utf-8", errors="replace")):
            if href.rsplit("/", 1)[-1] == name:
                candidate = (page.parent / urllib.request.url2pathname(href)).resolve()
                if candidate.is_file():
                    return candidate
    return None


def download_wheel(dest: Path, version: str = OPEN_CLIP_VERSION) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", f"open_clip_torch=={version}", "-d", str(dest)],
        check=True,
    )
    return dest / _wheel_name(version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", nargs="?", type=Path, help="open_clip_torch wheel (default: find or download)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: configs/tokenizers)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or find_local_wheel() or download_wheel(Path(tmp))
        for path in write_tokenizers(wheel, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
