"""Prompt text -> text-encoder conditioning, with A1111's semantics.

- Emphasis `(x:1.2)` scales token embeddings; mode "Original" restores the chunk's mean afterwards.
- Prompts are cut into 75-token chunks (BREAK forces a cut, a nearby comma moves the cut back), each chunk
  encoded as BOS + 75 + EOS and the chunks concatenated, so prompts of any length work. Every text in one call
  gets the same number of chunks (empty chunks pad the shorter ones).
- Clip skip applies to SD1's CLIP (penultimate and earlier layers, then the final norm). SD2 always conditions
  on the penultimate layer (its loaded encoder ends there); SDXL on the penultimate layer of both encoders.
- SDXL also returns the pooled embedding of the first chunk; an all-empty negative prompt is zeros (as A1111).
- Textual-inversion embeddings (modules.textual_inversion): the token ids of an embedding's name become one unit
  of placeholder markers, kept in one chunk and weighted like any token; at encode time the markers become token
  id 0 and the hook on the token embedding puts the embedding's vectors in their rows (SDXL: clip_l for the
  first encoder, clip_g for the second). Prompts without an embedding are encoded exactly as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from modules import prompt_parser, textual_inversion
from modules.models.sd_model import StableDiffusionModel
from modules.textual_inversion import Embedding, EmbeddingLookup, TokenReplacements

log = logging.getLogger(__name__)

CHUNK = 75
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
# In chunk lists an embedding vector is PLACEHOLDER_BASE + unit index * CHUNK + vector index: far above any
# token id, so it cannot be mistaken for text, padding (-1) or a comma.
PLACEHOLDER_BASE = 1 << 30
# The id the encoder sees in an embedding vector's place before the hook overwrites its row: A1111's 0 ("!").
# Not EOS, so the pooled output is still taken at the end of the text.
PLACEHOLDER_TOKEN = 0


@dataclass
class EncoderSlot:
    encoder: torch.nn.Module
    tokenizer: object
    pad_id: int
    layer: str  # "last" | "penultimate" | "clip_skip"
    final_norm: bool  # apply the final layer norm to a non-last layer
    pooled: bool  # this encoder provides SDXL's pooled embedding
    ti_key: str = "clip_l"  # the part of an SDXL textual-inversion embedding this encoder takes


def encoder_slots(model: StableDiffusionModel) -> list[EncoderSlot]:
    family = model.spec.family
    tes, toks = model.text_encoders, model.tokenizers
    if family == "sd1":
        return [EncoderSlot(tes[0], toks[0], toks[0].pad_token_id, "clip_skip", True, False, "clip_l")]
    if family == "sd2":
        return [EncoderSlot(tes[0], toks[0], toks[0].pad_token_id, "last", False, False, "clip_h")]
    if family == "sdxl":
        return [
            EncoderSlot(tes[0], toks[0], toks[0].pad_token_id, "penultimate", False, False, "clip_l"),
            EncoderSlot(tes[1], toks[1], toks[1].pad_token_id, "penultimate", False, True, "clip_g"),
        ]
    return [EncoderSlot(tes[0], toks[0], toks[0].pad_token_id, "penultimate", False, True, "clip_g")]


def embedding_lookup(model: StableDiffusionModel) -> EmbeddingLookup:
    """The textual-inversion embeddings usable with `model`; none (and a logged error) if they cannot be listed."""
    try:
        return textual_inversion.embedding_db.lookup_for(model)
    except Exception:  # a broken embeddings folder must not stop generation
        log.exception("textual inversion embeddings could not be loaded")
        return EmbeddingLookup()


class PromptEncoder:
    """Encodes lists of prompt texts for one model; `encode` is the function prompt_parser schedules call.

    The embeddings are listed once, when the encoder is made (one encoder per generation or token count).
    `used_embeddings` collects the embeddings its `encode` calls put in (name -> Embedding), for the infotext.
    """

    def __init__(self, model: StableDiffusionModel, clip_skip: int = 1, emphasis: str = "Original",
                 comma_backtrack: int = 20):
        self.model = model
        self.slots = encoder_slots(model)
        self.clip_skip = max(1, int(clip_skip))
        self.emphasis = emphasis if emphasis in EMPHASIS_MODES else "Original"
        self.comma_backtrack = comma_backtrack
        tok = self.slots[0].tokenizer
        self.bos, self.eos = tok.bos_token_id, tok.eos_token_id
        self.comma = tok.convert_tokens_to_ids(",</w>")
        self.embeddings = embedding_lookup(model)
        self._units: list[Embedding] = []  # placeholder unit index -> embedding
        self._unit_index: dict[int, int] = {}  # id(embedding) -> unit index
        self.used_embeddings: dict[str, Embedding] = {}

    def _tokenize(self, text: str) -> list[int | tuple[int, ...]]:
        """Token ids of a text; an embedding's name becomes a unit of placeholders, one per vector."""
        ids = self.slots[0].tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        if not self.embeddings.ids_lookup:
            return ids
        return [t if isinstance(t, int) else self._placeholders(t) for t in self.embeddings.split_tokens(ids)]

    def _placeholders(self, embedding: Embedding) -> tuple[int, ...]:
        index = self._unit_index.get(id(embedding))
        if index is None:
            index = self._unit_index[id(embedding)] = len(self._units)
            self._units.append(embedding)
        return tuple(PLACEHOLDER_BASE + index * CHUNK + j for j in range(embedding.vectors))

    def _replacements(self, ids: list[list[int]], slot: EncoderSlot) -> TokenReplacements | None:
        """Turn the placeholders in a batch of chunk ids into PLACEHOLDER_TOKEN (in place) and return the rows the
        hook must overwrite with this encoder's part of each embedding; None when there are none."""
        if not self._units:
            return None
        rows, cols, vectors = [], [], []
        for r, row in enumerate(ids):
            for c, token in enumerate(row):
                if token >= PLACEHOLDER_BASE:
                    index, j = divmod(token - PLACEHOLDER_BASE, CHUNK)
                    embedding = self._units[index]
                    part = embedding.vectors_for(slot.ti_key)
                    if part is None:
                        raise RuntimeError(f"embedding {embedding.name!r} has no {slot.ti_key} vectors")
                    rows.append(r)
                    cols.append(c)
                    vectors.append(part[j])
                    row[c] = PLACEHOLDER_TOKEN
                    self.used_embeddings.setdefault(embedding.name, embedding)
        if not rows:
            return None
        device = self.model.device
        return TokenReplacements(torch.tensor(rows, device=device), torch.tensor(cols, device=device),
                                 torch.stack(vectors).to(device))

    def chunks(self, text: str) -> list[tuple[list[int], list[float]]]:
        """75-token (ids, weights) chunks of one prompt, before BOS/EOS."""
        parsed = prompt_parser.parse_prompt_attention(text) if self.emphasis != "None" else [[text, 1.0]]
        tokens = prompt_parser.tokenize_prompt_attention(parsed, self._tokenize)
        if self.emphasis in ("Ignore", "None"):
            tokens = [(t, 1.0 if t is not None else w) for t, w in tokens]
        return prompt_parser.split_into_chunks(tokens, CHUNK, self.comma, self.comma_backtrack, pad_token=-1)

    def token_count(self, text: str, steps: int = 20) -> tuple[int, int]:
        return prompt_parser.count_tokens(text, self._tokenize, steps, comma_token=self.comma,
                                          backtrack=self.comma_backtrack)

    def _chunk_ids(self, body: list[int], pad_id: int) -> list[int]:
        """BOS, the text, EOS right after it, then padding: 77 ids (A1111's layout; -1 marks padding)."""
        length = body.index(-1) if -1 in body else CHUNK
        return [self.bos, *body[:length], self.eos] + [pad_id] * (CHUNK - length)

    @torch.no_grad()
    def _encode_chunk(self, slot: EncoderSlot, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        enc = slot.encoder
        want_hidden = slot.layer == "penultimate" or (slot.layer == "clip_skip" and self.clip_skip > 1)
        out = enc(ids, output_hidden_states=want_hidden)
        if slot.layer == "last" or (slot.layer == "clip_skip" and self.clip_skip == 1):
            z = out.last_hidden_state
        else:
            index = -2 if slot.layer == "penultimate" else -self.clip_skip
            z = out.hidden_states[max(index, -len(out.hidden_states))]
            if slot.final_norm:
                final_norm = enc.final_layer_norm if hasattr(enc, "final_layer_norm") else enc.text_model.final_layer_norm
                z = final_norm(z)
        pooled = getattr(out, "text_embeds", None) if slot.pooled else None
        return z, pooled

    def _apply_emphasis(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.emphasis in ("Ignore", "None") or bool((weights == 1).all()):
            return z
        original_mean = z.mean()
        z = z * weights.unsqueeze(-1).to(z.dtype)
        if self.emphasis == "Original":
            z = z * (original_mean / z.mean())
        return z

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor | dict[str, torch.Tensor]:
        per_text = [self.chunks(t) for t in texts]
        n_chunks = max(len(c) for c in per_text)
        device = self.model.device
        outputs: list[torch.Tensor] = []
        pooled_out: torch.Tensor | None = None
        for slot in self.slots:
            pieces = []
            for position in range(n_chunks):
                ids, weights = [], []
                for chunks in per_text:
                    body, w = chunks[position] if position < len(chunks) else ([-1] * CHUNK, [1.0] * CHUNK)
                    ids.append(self._chunk_ids(body, slot.pad_id))
                    weights.append([1.0, *w, 1.0])
                fixes = self._replacements(ids, slot)
                ids_t = torch.tensor(ids, device=device)
                with textual_inversion.token_replacements(slot.encoder, fixes):
                    z, pooled = self._encode_chunk(slot, ids_t)
                pieces.append(self._apply_emphasis(z, torch.tensor(weights, device=device)))
                if pooled is not None and position == 0:
                    pooled_out = pooled
            outputs.append(torch.cat(pieces, dim=1))
        cond = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
        if not self.model.is_sdxl:
            return cond
        if getattr(texts, "is_negative_prompt", False) and all(t == "" for t in texts):
            cond, pooled_out = torch.zeros_like(cond), torch.zeros_like(pooled_out)
        return {"crossattn": cond, "vector": pooled_out}
