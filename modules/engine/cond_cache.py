"""The last prompt's and the last negative prompt's conditioning, kept between jobs (A1111's `cached_c` and
`cached_uc` in processing.py's `get_conds_with_caching`): regenerating with the same prompts and a new seed does
not run the text encoders again.

One entry per kind (positive, negative) and per slot, process-wide, behind a lock (jobs run on several threads).
A1111 keeps the hires pass apart (`cached_hr_c`); here the caller names the slot (first pass, img2img / hires
pass, refiner), so a job's passes do not push each other out.

The key holds everything the encoder's output depends on, so a stale result cannot come back:
- the prompt list, negative or not, width and height, the steps the prompt schedules are cut for;
- the model object (held weakly, compared by identity, so a new model at a freed address cannot match), its text
  encoders and tokenizers, family, device and dtypes;
- the weights' values: the model patcher's `version` (LoRA and other patches write in place) and
  `storage_version`, every text-encoder parameter's own in-place version counter (writes that bypass the
  patcher), and the buffers' values;
- the encoder's clip skip, emphasis mode and comma backtrack, the textual-inversion embeddings it can see (their
  names' token ids and a digest of their vectors);
- every setting (`shared.opts.data`) and the command line (`shared.cmd_opts`), hashed: any change invalidates.

Nothing is cached when the encode raised, when the key moved while it ran (another thread patched the weights or
changed a setting), when a text encoder is in training mode (dropout is random), or when a forward hook of unknown
kind sits on a text encoder (an extension may change the output per job). Nothing in the prompt text the encoder
gets is random: wildcards and the like are resolved by scripts before, and reach the key as the final text.
Values go in and come out as deep copies, so a caller or a denoise hook writing into its conditioning in place
cannot change what the next job gets. Extensions that patch the encoding functions themselves should call
`clear()` when their behaviour changes, or set `enabled = False`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from modules import shared, textual_inversion
from modules.textual_inversion import Embedding, EmbeddingLookup

T = TypeVar("T")

enabled = True  # False: every call encodes (tests compare against this; an extension may switch it off)

_lock = threading.Lock()
_digest_lock = threading.Lock()  # the embeddings' digests below


@dataclass
class _Entry:
    key: tuple
    model: weakref.ref
    value: Any
    used_embeddings: dict[str, Embedding]


_entries: dict[tuple[str, str], _Entry] = {}  # (slot, "positive" | "negative") -> the last encode there


def clear() -> None:
    with _lock:
        _entries.clear()


# --- the key --------------------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    # default=repr: a value JSON cannot write still counts (an object's repr changes with the object)
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def _settings_digest() -> str:
    opts = dict(getattr(getattr(shared, "opts", None), "data", None) or {})  # a copy: other threads may write
    return _digest([opts, vars(shared.cmd_opts) if shared.cmd_opts is not None else None])


def _tensor_state(t: torch.Tensor) -> tuple:
    # `_version` counts in-place writes through the tensor itself (`weight += ...`, `copy_`)
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no counter
        version = -1
    return id(t), version, t.dtype, tuple(t.shape)


SMALL_BUFFER = 1 << 16  # elements: buffers up to this size count by their values


def _buffer_state(name: str, t: torch.Tensor) -> tuple:
    """Moving a module between devices (--medvram does, every job) gives its buffers new tensors (its parameters
    keep theirs); CLIP's one buffer, position_ids, is tiny, so buffers count by their values, not identity."""
    if t.numel() > SMALL_BUFFER:
        return name, *_tensor_state(t)
    data = t.detach().to("cpu").contiguous()
    return name, data.dtype, tuple(data.shape), hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest()


# Embedding -> (the state its digest was made from, the digest); weak, so dropped embeddings are forgotten
_embedding_digests: weakref.WeakKeyDictionary[Embedding, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _embedding_parts(embedding: Embedding) -> list[tuple[str, torch.Tensor]]:
    vec = embedding.vec
    if isinstance(vec, dict):
        return sorted(vec.items())
    return [("", vec)]


def _embedding_digest(embedding: Embedding) -> str:
    parts = _embedding_parts(embedding)
    state = (embedding.name, embedding.vectors, tuple((k, _tensor_state(t)) for k, t in parts))
    known = _embedding_digests.get(embedding)
    if known is not None and known[0] == state:
        return known[1]
    h = hashlib.sha1(f"{embedding.name}\0{embedding.vectors}".encode())
    for key, tensor in parts:
        data = tensor.detach().to("cpu").contiguous()
        h.update(f"\0{key}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    digest = h.hexdigest()
    _embedding_digests[embedding] = (state, digest)
    return digest


def _embeddings_digest(lookup: EmbeddingLookup) -> str:
    """What the encoder can put in for a name: every name's token ids, in match order, with its vectors."""
    with _digest_lock:
        entries = [(first, [(list(ids), _embedding_digest(emb)) for ids, emb in matches])
                   for first, matches in sorted(lookup.ids_lookup.items())]
    return _digest(entries)


def _known_hook(hook: Any) -> bool:
    """Forward hooks that leave a job's output to its input: textual inversion's (it puts in the vectors the
    prompt asks for) and transformers' own output capture (hidden states for clip skip; it returns nothing)."""
    return hook is textual_inversion._replace_hook or getattr(hook, "__module__", None) == _TRANSFORMERS_CAPTURE


_TRANSFORMERS_CAPTURE = "transformers.utils.output_capturing"


def _offload_hook(module: torch.nn.Module) -> bool:
    """--medvram/--lowvram's accelerate hook (it replaces `forward`): it moves weights, their values stay."""
    from modules.models import offload

    return offload.has_offload_hook(module)


def _modules_state(modules: Iterable[torch.nn.Module]) -> tuple | None:
    """The text encoders' tensors' in-place versions; None when a foreign hook or a replaced forward may change
    the output from one job to the next."""
    if getattr(torch.nn.modules.module, "_global_forward_hooks", None) or \
            getattr(torch.nn.modules.module, "_global_forward_pre_hooks", None):
        return None
    versions = []
    for root in modules:
        if root.training:
            return None
        for module in root.modules():
            if module._forward_pre_hooks or ("forward" in vars(module) and not _offload_hook(module)):
                return None
            if not all(_known_hook(hook) for hook in module._forward_hooks.values()):
                return None
        versions.extend(_tensor_state(tensor) for tensor in root.parameters())
        versions.extend(_buffer_state(name, tensor) for name, tensor in root.named_buffers())
    return tuple(versions)


def encoder_key(model: Any, encoder: Any, steps: int, width: int | None, height: int | None) -> tuple | None:
    """Everything but the prompts that the encoder's output depends on; None: do not cache this job."""
    if not enabled:
        return None
    modules_state = _modules_state(model.text_encoders)
    if modules_state is None:
        return None
    patcher = getattr(model, "patcher", None)
    return (
        id(model), repr(model.spec), str(model.device),
        tuple(id(te) for te in model.text_encoders), tuple(id(tok) for tok in model.tokenizers),
        getattr(patcher, "version", None), getattr(patcher, "storage_version", None), id(patcher),
        modules_state,
        type(encoder), encoder.clip_skip, encoder.emphasis, encoder.comma_backtrack,
        _embeddings_digest(encoder.embeddings),
        _settings_digest(),
        int(steps), width, height,
    )


# --- the cache ------------------------------------------------------------------------------------------------------


class PassConditioning:
    """The cache as one pass of a job sees it (one model, one encoder): the key is taken once, up front."""

    def __init__(self, slot: str, model: Any, encoder: Any, steps: int, width: int | None, height: int | None):
        self.slot, self.model, self.encoder = slot, model, encoder
        self._key_args = (steps, width, height)
        self.key = encoder_key(model, encoder, *self._key_args)

    def positive(self, prompts: Iterable[str], encode: Callable[[], T]) -> T:
        return self._get(False, prompts, encode)

    def negative(self, prompts: Iterable[str], encode: Callable[[], T]) -> T:
        return self._get(True, prompts, encode)

    def _get(self, negative: bool, prompts: Iterable[str], encode: Callable[[], T]) -> T:
        """`encode()`, or a copy of what it returned for the same key last time in this slot. The embeddings the
        encoder put in are kept with the value and given back to it on a hit: the job reports the same ones."""
        if not enabled or self.key is None:
            return encode()
        encoder, model = self.encoder, self.model
        full_key = (*self.key, negative, tuple(prompts))
        where = (self.slot, "negative" if negative else "positive")
        with _lock:
            entry = _entries.get(where)
            hit = entry is not None and entry.key == full_key and entry.model() is model
            if hit:
                value = copy.deepcopy(entry.value)  # the caller may write into it; the cache keeps its own
                for name, embedding in entry.used_embeddings.items():
                    encoder.used_embeddings.setdefault(name, embedding)
        if hit:
            return value
        # what this encode alone puts in: collected apart, then merged as the encoder's setdefault would
        collected, encoder.used_embeddings = encoder.used_embeddings, {}
        try:
            value = encode()  # outside the lock: another job's encode need not wait; an exception stores nothing
        finally:
            used, encoder.used_embeddings = encoder.used_embeddings, collected
            for name, embedding in used.items():
                collected.setdefault(name, embedding)
        # weights, embeddings or settings that changed while it ran (another thread) leave a value of no one key
        if encoder_key(model, encoder, *self._key_args) == self.key:
            with _lock:
                _entries[where] = _Entry(full_key, weakref.ref(model), copy.deepcopy(value), used)
        return value


def held() -> list[tuple[str, str]]:
    """The (slot, kind) entries held now (for tests and diagnostics)."""
    with _lock:
        return sorted(_entries)
