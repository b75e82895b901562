"""A1111 prompt syntax: emphasis weights, prompt editing and alternation, AND composition, BREAK and chunking.

The public names and return shapes follow A1111's `modules/prompt_parser.py`, because extensions import them.
Parsing stays light (no torch at import); torch is imported only where conditioning tensors are stacked.
"""

from __future__ import annotations

import math
import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import lark

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: "[a:b:when]", "[a:when]", "[a::when]", "[a|b|c]"
# ---------------------------------------------------------------------------------------------------------------------

# The grammar accepts any text built from these pieces; stray brackets and colons at the top level are kept as
# literal text so that an unbalanced prompt still parses. Emphasis groups keep their brackets (the `!`), because
# weights are applied later by parse_prompt_attention on each scheduled text. A bare "|" outside brackets makes
# the parse fail, and then the prompt is used unscheduled, as in A1111.
_SCHEDULE_GRAMMAR = r"""
start: (text | STRAY+)*
text: (weighted | edit | alternate | PLAIN | WS)*
!weighted: "(" text ")" | "(" text ":" text ")" | "[" text "]"
edit: "[" (text ":")? text ":" WS? NUMBER WS? "]"
alternate: "[" text ("|" text)+ "]"
STRAY: /[\[\]():]/
PLAIN: /(?:[^\\\[\]():|]|\\.)+/
WS: /\s+/
%import common.SIGNED_NUMBER -> NUMBER
"""

schedule_parser = lark.Lark(_SCHEDULE_GRAMMAR)

PromptSchedule = list[list[Any]]  # [[end_at_step, text], ...], sorted by step


def _edit_end_step(number: str, steps: int, use_old_scheduling: bool, int_offset: int, flt_offset: float) -> int:
    """The last step (1-based) at which the "before" text of an edit is used."""
    value = float(number)
    if use_old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in number:  # a fraction of the steps; with hires, 1.x is a fraction of the second pass
        value = (value - flt_offset) * steps
    else:  # a step number; with hires it counts from the start of the first pass
        value = value - int_offset
    # clamp before int() so an absurd exponent ("1e999") cannot overflow
    return int(max(-1.0, min(float(steps), value)))


def _collect_steps(tree: lark.Tree, steps: int, when: dict[int, int], **timing: Any) -> list[int]:
    """Every step at which the text can change; fills `when` (edit node id -> end step) on the way."""
    result = {steps}
    for node in tree.iter_subtrees():
        if node.data == "edit":
            number = next(c for c in node.children if isinstance(c, lark.Token) and c.type == "NUMBER")
            end = _edit_end_step(str(number), steps, **timing)
            when[id(node)] = end
            if end >= 1:
                result.add(end)
        elif node.data == "alternate":
            result.update(range(1, steps + 1))
    return sorted(result)


def _render(node: lark.Tree | lark.Token, step: int, when: dict[int, int]) -> str:
    """The text of the parse tree at one step."""
    if isinstance(node, lark.Token):
        return node.value
    texts = [c for c in node.children if isinstance(c, lark.Tree)]
    if node.data == "edit":
        before, after = texts if len(texts) == 2 else (None, texts[0])
        chosen = before if step <= when[id(node)] else after
        return "" if chosen is None else _render(chosen, step, when)
    if node.data == "alternate":
        return _render(texts[(step - 1) % len(texts)], step, when)
    return "".join(_render(child, step, when) for child in node.children)


def get_learned_conditioning_prompt_schedules(
    prompts: Sequence[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[PromptSchedule]:
    """For each prompt, the list of [end_at_step, text] pairs its editing and alternation syntax produce.

    An integer `when` is a step; a number written with a "." is a fraction of the steps. With `hires_steps`, the
    schedule is for the hires pass: 1.x is a fraction of it and integers count from the start of the first pass.
    `use_old_scheduling` restores A1111's pre-1.6 rule (any value below 1 is a fraction).

    >>> get_learned_conditioning_prompt_schedules(["a [b:c:10] d"], 20)
    [[[10, 'a b d'], [20, 'a c d']]]
    """
    if hires_steps is None or use_old_scheduling:
        timing = {"use_old_scheduling": use_old_scheduling, "int_offset": 0, "flt_offset": 0.0}
        steps = base_steps
    else:
        timing = {"use_old_scheduling": False, "int_offset": base_steps, "flt_offset": 1.0}
        steps = hires_steps

    def schedule_for(prompt: str) -> PromptSchedule:
        try:
            tree = schedule_parser.parse(prompt)
        except lark.exceptions.LarkError:
            return [[steps, prompt]]
        when: dict[int, int] = {}
        return [[step, _render(tree, step, when)] for step in _collect_steps(tree, steps, when, **timing)]

    by_prompt = {prompt: schedule_for(prompt) for prompt in set(prompts)}
    return [by_prompt[prompt] for prompt in prompts]


def schedule_index_at_step(schedule: Sequence[Sequence[Any]], current_step: int) -> int:
    """Index of the entry in force at `current_step` (the sampler's 0-based step counter, as A1111 passes it).

    An entry applies while current_step <= its end step, so with [[10, a], [20, b]] steps 0..10 use `a`.
    Past the last end step the last entry stays in force (A1111 falls back to the first one there).
    """
    for index, entry in enumerate(schedule):
        if current_step <= entry[0]:
            return index
    return len(schedule) - 1


def prompt_at_step(schedule: PromptSchedule, current_step: int) -> str:
    """The text of a prompt schedule at `current_step` (see schedule_index_at_step)."""
    return schedule[schedule_index_at_step(schedule, current_step)][1]


# ---------------------------------------------------------------------------------------------------------------------
# Conditioning schedules
# ---------------------------------------------------------------------------------------------------------------------

MAX_NESTING = 100  # the parsers recurse per bracket level; (x) at depth 100 already weighs 1.1**100


def bracket_depth(text: str) -> int:
    """How deeply (), [] and {} nest in a prompt, escapes respected: checked before parsing a hostile prompt."""
    depth = deepest = 0
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(depth - 1, 0)
    return deepest


ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts for the text encoder, carrying what SDXL's conditioner also needs (size, negative or not)."""

    def __init__(
        self,
        prompts: Iterable[str],
        is_negative_prompt: bool = False,
        width: int | None = None,
        height: int | None = None,
        copy_from: Any = None,
    ) -> None:
        super().__init__(prompts)
        source = self if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(source, "is_negative_prompt", False)
        self.width = width or getattr(source, "width", None)
        self.height = height or getattr(source, "height", None)


EncodeFn = Callable[[SdConditioning], Any]  # texts -> tensor [B, T, C] or dict of tensors with batch dim first


def _encoder_of(model: Any) -> EncodeFn:
    # A1111 passes the model object; a bare function is simpler for tests and our own code
    if hasattr(model, "get_learned_conditioning"):
        return model.get_learned_conditioning
    return model


def _select(conds: Any, index: int) -> Any:
    if isinstance(conds, dict):
        return {key: value[index] for key, value in conds.items()}
    return conds[index]


def get_learned_conditioning(
    model_encode_fn: EncodeFn | Any,
    prompts: Sequence[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[ScheduledPromptConditioning]]:
    """Encode every prompt's schedule: one list of ScheduledPromptConditioning(end_at_step, cond) per prompt.

    Each distinct prompt is encoded with one call holding its distinct scheduled texts. Texts are not shared
    between prompts, because the encoder pads a batch to its longest text, so batching changes the result.
    """
    encode = _encoder_of(model_encode_fn)
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    cache: dict[str, list[ScheduledPromptConditioning]] = {}
    result = []
    for prompt, schedule in zip(prompts, schedules, strict=True):
        if prompt not in cache:
            texts = list(dict.fromkeys(text for _, text in schedule))
            conds = encode(SdConditioning(texts, copy_from=prompts))
            by_text = {text: _select(conds, i) for i, text in enumerate(texts)}
            cache[prompt] = [ScheduledPromptConditioning(end, by_text[text]) for end, text in schedule]
        result.append(cache[prompt])
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Composition: "a AND b:0.8"
# ---------------------------------------------------------------------------------------------------------------------

re_AND = re.compile(r"\bAND\b")
# a sub-prompt's text (leading space kept, trailing space dropped) and an optional ":weight" at its end
re_weight = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def get_multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], SdConditioning, dict[str, int]]:
    """Split prompts on AND. Returns, per prompt, (index into the flat list, weight) pairs; the flat list of
    distinct sub-prompt texts; and the text -> index map."""
    res_indexes: list[list[tuple[int, float]]] = []
    prompt_flat_list = SdConditioning([], copy_from=prompts)
    prompt_indexes: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for subprompt in re_AND.split(prompt):
            match = re_weight.search(subprompt)
            text, weight = match.groups() if match else (subprompt, None)
            if text not in prompt_indexes:
                prompt_indexes[text] = len(prompt_flat_list)
                prompt_flat_list.append(text)
            indexes.append((prompt_indexes[text], float(weight) if weight is not None else 1.0))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


class ComposableScheduledPromptConditioning:
    """One AND sub-prompt: its conditioning schedule and its weight."""

    def __init__(self, schedules: list[ScheduledPromptConditioning], weight: float = 1.0) -> None:
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    """Per batch item, the list of its AND sub-prompts."""

    def __init__(self, shape: tuple, batch: list[list[ComposableScheduledPromptConditioning]]) -> None:
        self.shape = shape  # samplers read the batch size from here
        self.batch = batch


def get_multicond_learned_conditioning(
    model_encode_fn: EncodeFn | Any,
    prompts: Sequence[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> MulticondLearnedConditioning:
    """Like get_learned_conditioning, for prompts that may use AND (composable diffusion)."""
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model_encode_fn, flat, steps, hires_steps, use_old_scheduling)
    batch = [
        [ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes] for indexes in res_indexes
    ]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    """SDXL conditioning ({"crossattn": ..., "vector": ...}) that also answers `.shape`, as code expects of a tensor."""

    def __init__(self, x: dict, shape: Any = None) -> None:
        super().__init__(x)

    @property
    def shape(self) -> Any:
        return self["crossattn"].shape


def stack_conds(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack conds into a batch. Prompts longer than 75 tokens give more token rows; shorter ones are padded by
    repeating their last row, as A1111 does, so they can be stacked."""
    import torch

    rows = max(t.shape[0] for t in tensors)
    padded = [
        t if t.shape[0] == rows else torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])]) for t in tensors
    ]
    return torch.stack(padded)


def _stack_any(conds: list[Any]) -> Any:
    if isinstance(conds[0], dict):
        return DictWithShape({key: stack_conds([c[key] for c in conds]) for key in conds[0]})
    first = conds[0]
    return stack_conds(conds).to(device=first.device, dtype=first.dtype)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step: int) -> Any:
    """The batch of conds in force at `current_step`: a tensor [B, T, C], or a DictWithShape for SDXL."""
    return _stack_any([schedule[schedule_index_at_step(schedule, current_step)].cond for schedule in c])


def reconstruct_multicond_batch(
    c: MulticondLearnedConditioning, current_step: int
) -> tuple[list[list[tuple[int, float]]], Any]:
    """All sub-prompt conds in force at `current_step`, stacked, and per batch item its (row, weight) pairs."""
    conds = []
    conds_list = []
    for composable_prompts in c.batch:
        items = []
        for composable in composable_prompts:
            items.append((len(conds), composable.weight))
            conds.append(composable.schedules[schedule_index_at_step(composable.schedules, current_step)].cond)
        conds_list.append(items)
    return conds_list, _stack_any(conds)


# ---------------------------------------------------------------------------------------------------------------------
# Emphasis: "(x)", "(x:1.3)", "[x]", escapes, BREAK
# ---------------------------------------------------------------------------------------------------------------------

re_attention = re.compile(
    r"""
      \\[()\[\]\\]             # escaped bracket or backslash: a literal character
    | \\                       # any other backslash is dropped
    | \(
    | \[
    | :\s*([+-]?[.\d]+)\s*\)   # an explicit weight closing a round bracket
    | \)
    | ]
    | [^\\()\[\]:]+            # plain text
    | :
    """,
    re.X,
)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


def _parse_weight(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:  # "1.2.3" matches the pattern; A1111 crashes there, we keep it as text
        return None


def parse_prompt_attention(text: str) -> list[list[Any]]:
    """Split a prompt into [text, weight] pairs.

    (abc) multiplies by 1.1, (abc:3.12) by 3.12, [abc] divides by 1.1; nesting multiplies; an unclosed bracket
    applies to the rest of the prompt. \\( \\) \\[ \\] \\\\ are literal characters. BREAK becomes ["BREAK", -1].
    Neighbours with equal weights are merged.

    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    res: list[list[Any]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for item in res[start:]:
            item[1] *= multiplier

    for match in re_attention.finditer(text):
        piece = match.group(0)
        weight = _parse_weight(match.group(1))
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), weight)
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_BRACKET_MULTIPLIER)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for i, part in enumerate(re_break.split(piece)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    # unclosed brackets apply to the rest; round first, then square, so the float products match A1111's
    for start in round_brackets:
        multiply_range(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_brackets:
        multiply_range(start, SQUARE_BRACKET_MULTIPLIER)

    if not res:
        return [["", 1.0]]

    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged


# ---------------------------------------------------------------------------------------------------------------------
# Tokens and 75-token chunks
# ---------------------------------------------------------------------------------------------------------------------

CHUNK_LENGTH = 75
CLIP_COMMA_TOKEN = 267  # ",</w>" in the CLIP BPE vocab (SD1, SD2, SDXL)
CLIP_END_TOKEN = 49407  # "<|endoftext|>": end of text, and the padding inside a chunk

# (token id, weight); the id may also be a sequence of ids that must stay in one chunk (a textual-inversion
# embedding's placeholder vectors), or None for BREAK
TokenWithWeight = tuple[int | Sequence[int] | None, float]
PromptChunkTokens = tuple[list[int], list[float]]

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def tokenize_prompt_attention(
    parsed: Iterable[Sequence[Any]], tokenize_fn: Callable[[str], list[int]]
) -> list[TokenWithWeight]:
    """Turn parse_prompt_attention output into (token, weight) pairs; `tokenize_fn` adds no BOS/EOS."""
    tokens: list[TokenWithWeight] = []
    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            tokens.append((None, -1.0))
        else:
            tokens.extend((token, weight) for token in tokenize_fn(text))
    return tokens


def _split(
    tokens_with_weights: Iterable[TokenWithWeight],
    chunk_length: int,
    comma_token: int | None,
    backtrack: int,
    pad_token: int,
) -> tuple[list[PromptChunkTokens], int]:
    chunks: list[PromptChunkTokens] = []
    ids: list[int] = []
    weights: list[float] = []
    token_count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal ids, weights, token_count, last_comma
        token_count += len(ids) if is_last else chunk_length  # padding of the last chunk is not counted
        padding = chunk_length - len(ids)
        chunks.append((ids + [pad_token] * padding, weights + [1.0] * padding))
        ids, weights, last_comma = [], [], -1

    for token, weight in tokens_with_weights:
        if token is None:  # BREAK
            close()
            continue
        unit = [token] if isinstance(token, int) else list(token)
        if len(unit) > chunk_length:
            raise ValueError(f"a unit of {len(unit)} tokens does not fit in a {chunk_length}-token chunk")

        if isinstance(token, int) and token == comma_token:
            last_comma = len(ids)
        elif backtrack and len(ids) == chunk_length and last_comma != -1 and len(ids) - last_comma <= backtrack:
            # the chunk is full and a comma is near: move the words after that comma into the next chunk
            cut = last_comma + 1
            moved_ids, moved_weights = ids[cut:], weights[cut:]
            ids, weights = ids[:cut], weights[:cut]
            close()
            ids, weights = moved_ids, moved_weights

        if len(ids) == chunk_length or len(ids) + len(unit) > chunk_length:
            close()
        ids.extend(unit)
        weights.extend([weight] * len(unit))

    if ids or not chunks:
        close(is_last=True)
    return chunks, token_count


def split_into_chunks(
    tokens_with_weights: Iterable[TokenWithWeight],
    chunk_length: int = CHUNK_LENGTH,
    comma_token: int | None = CLIP_COMMA_TOKEN,
    backtrack: int = 20,
    pad_token: int = CLIP_END_TOKEN,
) -> list[PromptChunkTokens]:
    """Split (token, weight) pairs into chunks of exactly `chunk_length` (ids, weights), before BOS/EOS are added.

    BREAK (a None token) starts a new chunk. When a chunk fills up and a comma is within the last `backtrack`
    tokens, the words after that comma move to the next chunk (A1111's option comma_padding_backtrack; 0 turns
    it off). Chunks are padded with `pad_token` at weight 1.0. An empty prompt gives one padded chunk.
    """
    return _split(tokens_with_weights, chunk_length, comma_token, backtrack, pad_token)[0]


def count_tokens(
    text: str,
    tokenize_fn: Callable[[str], list[int]],
    steps: int = 20,
    *,
    is_positive: bool = True,
    chunk_length: int = CHUNK_LENGTH,
    comma_token: int | None = CLIP_COMMA_TOKEN,
    backtrack: int = 20,
    parse_attention: bool = True,
) -> tuple[int, int]:
    """(token_count, max_length) for the UI's token counter, as A1111 computes them.

    Extra-network tags (<lora:...>) are removed, a positive prompt is split on AND, every scheduled text is
    tokenized, and the longest one counts. max_length is that count rounded up to whole chunks (75, 150, ...).
    `parse_attention=False` mirrors A1111's emphasis mode "None" (brackets and BREAK are plain text).
    """
    text = re_extra_net.sub("", text)
    try:
        flat = get_multicond_prompt_list([text])[1] if is_positive else [text]
        schedules = get_learned_conditioning_prompt_schedules(flat, steps)
    except Exception:  # the counter must never break typing; count the raw text instead
        schedules = [[[steps, text]]]

    texts = list(dict.fromkeys(entry[1] for schedule in schedules for entry in schedule))
    token_count = 0
    for prompt in texts:
        parsed = parse_prompt_attention(prompt) if parse_attention else [[prompt, 1.0]]
        tokens = tokenize_prompt_attention(parsed, tokenize_fn)
        token_count = max(token_count, _split(tokens, chunk_length, comma_token, backtrack, CLIP_END_TOKEN)[1])
    return token_count, math.ceil(max(token_count, 1) / chunk_length) * chunk_length
