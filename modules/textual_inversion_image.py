"""Textual-inversion embeddings stored inside images, in A1111's two formats (its `image_embedding.py`).

1. Text chunk: a PNG text chunk `sd-ti-embedding` holding base64 of JSON, in which every tensor is written as
   `{"TORCHTENSOR": nested lists}`.
2. Pixels: the same JSON, zlib-compressed, split into low and high nibbles, each laid out as an RGB block of the
   image's height (low block left, high block right, a black column between each block and the picture). Each
   block's low nibbles are XOR-ed with a fixed LCG stream; the high nibbles carry a decorative dot pattern.

Decoding treats the image as hostile: sizes are capped before any pixel is read, decompression and JSON are
bounded, and tensors are rebuilt only from rectangular lists of numbers. Failures raise `ImageEmbeddingError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

TEXT_CHUNK = "sd-ti-embedding"
MAX_IMAGE_PIXELS = 40_000_000  # an embedding picture is ~512x600; this only stops absurd files early
MAX_BLOCK_ELEMENTS = 8_000_000  # nibbles per data block: ~4 MB of compressed JSON, far above 75 SDXL vectors
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_JSON_DEPTH = 16  # a real one nests 5 deep ({"string_to_param": {"*": {"TORCHTENSOR": [[...]]}}})

# A1111's LCG (Numerical Recipes constants, seed 0); every output is `state % 255`.
_LCG_A, _LCG_C, _LCG_MASK = 1664525, 1013904223, 2**32 - 1
_LCG_BLOCK = 4096


class ImageEmbeddingError(ValueError):
    """The image claims to hold an embedding that cannot be read."""


# --- JSON with tensors --------------------------------------------------------------------------------------


class EmbeddingEncoder(json.JSONEncoder):
    """A1111's JSON encoder: a tensor becomes {"TORCHTENSOR": nested lists}."""

    def default(self, o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.detach().cpu().numpy().tolist()}
        return super().default(o)


def _tensor_from_lists(d: dict[str, Any]) -> Any:
    """object_hook: {"TORCHTENSOR": lists} -> tensor, only from rectangular lists of numbers."""
    if "TORCHTENSOR" not in d:
        return d
    try:
        array = np.asarray(d["TORCHTENSOR"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ImageEmbeddingError(f"a tensor in the embedding JSON is not a rectangular list of numbers ({e})") from e
    return torch.from_numpy(array)


def _json_depth(text: bytes) -> int:
    from modules.models.checkpoint_files import json_nesting_depth

    return json_nesting_depth(text)


def decode_embedding_json(raw: bytes | str) -> dict[str, Any]:
    """JSON bytes -> dict with tensors, bounded in size and depth (json.loads recurses once per level)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > MAX_JSON_BYTES:
        raise ImageEmbeddingError(f"the embedding JSON is {len(data)} bytes, more than {MAX_JSON_BYTES}")
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise ImageEmbeddingError(f"the embedding JSON nests more than {MAX_JSON_DEPTH} levels deep")
    try:
        result = json.loads(data, object_hook=_tensor_from_lists)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ImageEmbeddingError(f"the embedding data is not JSON ({e!s:.200})") from e
    if not isinstance(result, dict):
        raise ImageEmbeddingError(f"the embedding JSON holds a {type(result).__name__}, not an object")
    return result


def embedding_to_b64(data: Mapping[str, Any]) -> bytes:
    """A1111's text-chunk value for an embedding's data (tensors included)."""
    return base64.b64encode(json.dumps(data, cls=EmbeddingEncoder).encode())


def embedding_from_b64(data: str | bytes) -> dict[str, Any]:
    """The embedding data of a `sd-ti-embedding` text chunk."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ImageEmbeddingError(f"the {TEXT_CHUNK} text is not base64 ({e})") from e
    return decode_embedding_json(raw)


# --- the pixel format ---------------------------------------------------------------------------------------

_lcg_cache = np.zeros(0, dtype=np.uint64)


def _lcg_states(n: int) -> np.ndarray:
    """The first n LCG states (uint64 holding 32-bit values), vectorised by jumping _LCG_BLOCK states at a time."""
    global _lcg_cache
    if len(_lcg_cache) >= n:
        return _lcg_cache[:n]
    first = np.empty(_LCG_BLOCK, dtype=np.uint64)
    state = 0
    for i in range(_LCG_BLOCK):
        state = (_LCG_A * state + _LCG_C) & _LCG_MASK
        first[i] = state
    # s[i + B] = A_B * s[i] + C_B (mod 2^32); products of two 32-bit numbers plus one fit in uint64
    jump_a, jump_c = 1, 0
    for _ in range(_LCG_BLOCK):
        jump_a, jump_c = (_LCG_A * jump_a) & _LCG_MASK, (_LCG_A * jump_c + _LCG_C) & _LCG_MASK
    blocks = [first]
    while len(blocks) * _LCG_BLOCK < n:
        blocks.append((np.uint64(jump_a) * blocks[-1] + np.uint64(jump_c)) & np.uint64(_LCG_MASK))
    _lcg_cache = np.concatenate(blocks)
    return _lcg_cache[:n]


def lcg_values(n: int) -> np.ndarray:
    """The first n outputs of A1111's `lcg()` generator (each `state % 255`), as uint8."""
    return (_lcg_states(n) % np.uint64(255)).astype(np.uint8)


def xor_block(block: np.ndarray) -> np.ndarray:
    """XOR a block's low nibbles with the LCG stream (in C order); the same call undoes it."""
    if block.size > MAX_BLOCK_ELEMENTS:
        raise ImageEmbeddingError(f"an embedding data block of {block.size} values is larger than any real one")
    noise = lcg_values(block.size).reshape(block.shape) & 0x0F
    return np.bitwise_xor(block.astype(np.uint8), noise)


def style_block(block: np.ndarray, sequence: np.ndarray) -> np.ndarray:
    """A1111's decoration: a grid of grey dots (shades from `sequence`) in the high nibbles."""
    height, width = block.shape[0], block.shape[1]
    im = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(im)
    i = 0
    for x in range(-6, width, 8):
        for yi, y in enumerate(range(-6, height, 8)):
            offset = 4 if yi % 2 == 0 else 0
            shade = int(sequence[i % len(sequence)])
            i += 1
            draw.ellipse((x + offset, y, x + 6 + offset, y + 6), fill=(shade, shade, shade))
    return block ^ (np.asarray(im, dtype=np.uint8) & 0xF0)


def _nibble_block(values: np.ndarray, height: int, size: int) -> np.ndarray:
    return np.resize(values, size).reshape((height, -1, 3))


def _edge_style(data: Mapping[str, Any]) -> np.ndarray:
    """Dot shades from the first vector (A1111 reads string_to_param; an SDXL dict uses its first tensor)."""
    params = data.get("string_to_param")
    tensors = list(params.values()) if isinstance(params, Mapping) else [v for v in data.values()
                                                                       if isinstance(v, torch.Tensor)]
    first = np.abs(tensors[0].detach().cpu().float().numpy().reshape(-1)[:1024]) if tensors else np.ones(1)
    peak = float(first.max()) or 1.0
    return (first / peak * 255).astype(np.uint8)


def insert_image_data_embed(image: Image.Image, data: Mapping[str, Any]) -> Image.Image:
    """A1111's pixel format: the picture with the embedding's data blocks on its left and right."""
    compressed = zlib.compress(json.dumps(data, cls=EmbeddingEncoder).encode(), level=9)
    values = np.frombuffer(compressed, np.uint8)
    height = image.size[1]
    size = len(values) + (height - len(values) % height)  # A1111's rounding, kept so files are byte-identical
    size += height * 3 - size % (height * 3)
    style = _edge_style(data)
    low = xor_block(style_block(_nibble_block(values & 0x0F, height, size), style))
    high = xor_block(style_block(_nibble_block(values >> 4, height, size), style[::-1]))
    im_low, im_high = Image.fromarray(low, mode="RGB"), Image.fromarray(high, mode="RGB")
    out = Image.new("RGB", (image.size[0] + im_low.size[0] + im_high.size[0] + 2, height), (0, 0, 0))
    out.paste(im_low, (0, 0))
    out.paste(image.convert("RGB"), (im_low.size[0] + 1, 0))
    out.paste(im_high, (im_low.size[0] + 1 + image.size[0] + 1, 0))
    return out


def crop_black(img: np.ndarray, tol: int = 0) -> np.ndarray:
    """Crop to the box of pixels whose every channel is above `tol` (the whole image when there are none)."""
    mask = (img > tol).all(2)
    cols, rows = mask.any(0), mask.any(1)
    col_start, col_end = cols.argmax(), mask.shape[1] - cols[::-1].argmax()
    row_start, row_end = rows.argmax(), mask.shape[0] - rows[::-1].argmax()
    return img[row_start:row_end, col_start:col_end]


def _inflate(data: bytes) -> bytes:
    """zlib data, bounded; bytes after the end of the stream are ignored (A1111 pads by repeating the data)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_JSON_BYTES)
    except zlib.error as e:
        raise ImageEmbeddingError(f"the hidden data is not zlib-compressed ({e})") from e
    if inflater.unconsumed_tail:
        raise ImageEmbeddingError(f"the hidden data inflates to more than {MAX_JSON_BYTES} bytes")
    if not inflater.eof:
        raise ImageEmbeddingError("the hidden data is cut short")
    return out


def check_image_size(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageEmbeddingError(f"{width}x{height} is far larger than an embedding image")


def extract_image_data_embed(image: Image.Image) -> dict[str, Any] | None:
    """The embedding hidden in the pixels; None when the image has no data blocks (a plain picture)."""
    check_image_size(image)
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    nibbles = crop_black(pixels) & 0x0F
    black_cols = np.flatnonzero(nibbles.sum(axis=(0, 2)) == 0)
    if len(black_cols) < 2:
        return None
    lower = xor_block(nibbles[:, : black_cols.min(), :])
    upper = xor_block(nibbles[:, black_cols.max() + 1 :, :])
    if lower.shape != upper.shape:
        raise ImageEmbeddingError(f"the data blocks differ in size ({lower.shape[1]} and {upper.shape[1]} columns)")
    return decode_embedding_json(_inflate(((upper << 4) | lower).tobytes()))
