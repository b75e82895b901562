"""A1111 prompt syntax: emphasis weights, prompt editing and alternation, AND composition, BREAK and chunking.

The public names and return shapes follow A1111's `modules/prompt_parser.py`, because extensions import them.
Parsing stays light (no torch at import); torch is imported only where conditioning tensors are stacked.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: "[a:b:when]", "[a:when]", "[a::when]", "[a|b|c]"
# ---------------------------------------------------------------------------------------------------------------------

# A1111 parses this syntax with an ambiguous lark Earley grammar, whose cost grows faster than the square of the
# prompt's length. This one-pass scanner builds the same trees. What that grammar accepts:
# - inside brackets everything nests: "(" x ")", "(" x ":" x ")" and "[" x "]" stay text (their weights come
#   later, from parse_prompt_attention on each scheduled text); "[" [x ":"] x ":" NUMBER "]" is an edit and
#   "[" x ("|" x)+ "]" an alternation;
# - at the top level, a bracket or ":" that opens or closes no such group is literal text;
# - "\" escapes the next character (a newline excepted). A "|" outside an alternation, or a "\" that escapes
#   nothing, fails the parse, and the prompt is used unscheduled.
# So a group is either well formed, and so is every group inside it, or literal, and so is every group around it.
# A well-formed group is always applied. (Next to stray brackets, as in "[a:1]((", the grammar also allows
# reading the group's own brackets as stray ones; which reading A1111 picks there depends on the order of a
# Python set, so on PYTHONHASHSEED with the lark 1.1.2 it pins. Applying the group is one of its outcomes.)

PromptSchedule = list[list[Any]]  # [[end_at_step, text], ...], sorted by step

_SPECIAL = re.compile(r"[\\\[\]():|]")
# lark's SIGNED_NUMBER (ASCII digits only) between optional whitespace: the `when` of an edit
_EDIT_WHEN = re.compile(r"\s*([+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+))\s*")


@dataclass(slots=True)
class _Span:
    """prompt[start:end], with the edits and alternations directly inside it, in order."""

    start: int
    end: int
    choices: list[_Choice] = field(default_factory=list)
    # Made on first use, for a span whose choices hold no other choice ("flat"): the text between its choices
    # (len(choices) + 1 pieces); its choices get the text of each branch.
    flat: bool | None = None
    gaps: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    """An edit (branches: before, after) or an alternation (one branch per option), brackets included."""

    start: int
    end: int
    branches: list[_Span]
    when: str | None  # the edit's number as written; None for an alternation
    last_step: int = 0  # of the edit's "before" text, for the schedule being made
    texts: list[str] = field(default_factory=list)  # of the branches, when none holds a choice (see _Span.gaps)


@dataclass(slots=True)
class _Group:
    """A bracket still open while scanning, with the separators directly inside it."""

    opener: str
    start: int
    colons: list[int] = field(default_factory=list)
    pipes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Parsed:
    root: _Span
    choices: list[_Choice]  # all of them, nested ones too


class _Unparsable(Exception):
    """A1111's grammar rejects the prompt; it is used as it is."""


Bounds = list[tuple[int, int]]


def _split_into_branches(bounds: Bounds, inner: list[_Choice]) -> list[_Span]:
    """Spans for the (start, end) bounds, each with the choices that lie inside it."""
    branches = [_Span(start, end) for start, end in bounds]
    index = 0
    for choice in inner:
        while choice.start >= branches[index].end:
            index += 1
        branches[index].choices.append(choice)
    return branches


def _square_shape(prompt: str, group: _Group, end: int) -> tuple[Bounds, str | None] | None:
    """Branch bounds and `when` of the choice a "[...]" group is; ([], None) for "[x]" (text); None if invalid."""
    colons, pipes, first = group.colons, group.pipes, group.start + 1
    if not colons and not pipes:
        return [], None
    if pipes and not colons:
        cuts = [first - 1, *pipes, end]
        return [(cuts[k] + 1, cuts[k + 1]) for k in range(len(cuts) - 1)], None
    number = _EDIT_WHEN.fullmatch(prompt, colons[-1] + 1, end) if len(colons) <= 2 and not pipes else None
    if number is None:
        return None
    if len(colons) == 2:  # [before:after:when]
        return [(first, colons[0]), (colons[0] + 1, colons[1])], number[1]
    return [(first, first), (first, colons[0])], number[1]  # [after:when]: nothing before


def _shape(prompt: str, group: _Group, closer: str, end: int) -> tuple[Bounds, str | None] | None:
    """What the group closed by `closer` at `end` is (see _square_shape); None when it cannot be a group."""
    if closer == "]":
        return _square_shape(prompt, group, end) if group.opener == "[" else None
    return ([], None) if group.opener == "(" and not group.pipes and len(group.colons) <= 1 else None


def _make_literal(groups: list[_Group]) -> None:
    """The open groups cannot close: their brackets are text, which A1111's grammar allows only without a "|"."""
    if any(group.pipes for group in groups):
        raise _Unparsable
    groups.clear()


def _parse_schedule(prompt: str) -> _Parsed:
    """One pass over the special characters, with a stack of open brackets (no recursion)."""
    groups: list[_Group] = []
    found: list[_Choice] = []  # choices not inside another one (yet)
    every: list[_Choice] = []
    escaped = -1  # index of the character the last backslash escapes
    for match in _SPECIAL.finditer(prompt):
        i, ch = match.start(), match.group()
        if i == escaped:
            continue
        if ch == "\\":
            if prompt[i + 1 : i + 2] in ("", "\n"):
                raise _Unparsable
            escaped = i + 1
        elif ch in "([":
            groups.append(_Group(ch, i))
        elif ch in ":|":
            if groups:
                (groups[-1].colons if ch == ":" else groups[-1].pipes).append(i)
            elif ch == "|":
                raise _Unparsable
        elif groups:  # a closing bracket; without open groups it is text
            shape = _shape(prompt, groups[-1], ch, i)
            if shape is None:  # every open group contains this one, so none can close
                _make_literal(groups)
            elif shape[0]:  # an edit or alternation: it takes in the choices found since its "["
                _add_choice(groups.pop(), i, shape, found, every)
            else:
                groups.pop()
    _make_literal(groups)
    return _Parsed(_Span(0, len(prompt), found), every)


def _add_choice(group: _Group, end: int, shape: tuple[Bounds, str | None], found: list[_Choice],
                every: list[_Choice]) -> None:
    cut = len(found)
    while cut and found[cut - 1].start > group.start:
        cut -= 1
    choice = _Choice(group.start, end + 1, _split_into_branches(shape[0], found[cut:]), shape[1])
    del found[cut:]
    found.append(choice)
    every.append(choice)


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


def _is_flat(prompt: str, span: _Span) -> bool:
    """Whether no choice in `span` holds another; the first time, fills span.gaps and the choices' texts."""
    if span.flat is None:
        span.flat = not any(branch.choices for choice in span.choices for branch in choice.branches)
        if span.flat:
            position = span.start
            for choice in span.choices:
                span.gaps.append(prompt[position : choice.start])
                choice.texts = [prompt[branch.start : branch.end] for branch in choice.branches]
                position = choice.end
            span.gaps.append(prompt[position : span.end])
    return span.flat


def _render_flat(span: _Span, step: int) -> str:
    """The text of a flat span at `step`, built with C-speed slices: thousands of choices are common."""
    parts = [""] * (2 * len(span.choices) + 1)
    parts[0::2] = span.gaps
    parts[1::2] = [  # the branch in force: as in _render, inlined (this loop is the hot one)
        c.texts[(step - 1) % len(c.texts) if c.when is None else int(step > c.last_step)] for c in span.choices
    ]
    return "".join(parts)


def _render(prompt: str, root: _Span, step: int) -> str:
    """The text of `root` at `step`, each choice replaced by its branch in force then (iterative: any nesting)."""
    if _is_flat(prompt, root):
        return _render_flat(root, step)
    out: list[str] = []
    stack: list[tuple[int, int, Iterator[_Choice]]] = [(root.start, root.end, iter(root.choices))]
    while stack:
        position, end, choices = stack.pop()
        for choice in choices:
            out.append(prompt[position : choice.start])
            position = choice.end
            if choice.when is None:
                branch = choice.branches[(step - 1) % len(choice.branches)]
            else:
                branch = choice.branches[0] if step <= choice.last_step else choice.branches[1]
            if not branch.choices:
                out.append(prompt[branch.start : branch.end])
            elif _is_flat(prompt, branch):
                out.append(_render_flat(branch, step))
            else:  # render the branch, then come back for the rest
                stack.append((position, end, choices))
                stack.append((branch.start, branch.end, iter(branch.choices)))
                break
        else:
            out.append(prompt[position:end])
    return "".join(out)


def _alternation_period(parsed: _Parsed, steps: int) -> int:
    """A period of the alternations (lcm of their lengths), or 0 where it is not shorter than the schedule."""
    period = 1
    for choice in parsed.choices:
        if choice.when is None:
            period = math.lcm(period, len(choice.branches))
            if period >= steps:
                return 0
    return period


def _schedule(prompt: str, parsed: _Parsed, steps: int, timing: dict[str, Any]) -> PromptSchedule:
    edits = [choice for choice in parsed.choices if choice.when is not None]
    for edit in edits:
        edit.last_step = _edit_end_step(edit.when, steps, **timing)
    switch_points = sorted({edit.last_step for edit in edits})
    result = {steps} | {point for point in switch_points if point >= 1}
    if len(edits) < len(parsed.choices):  # an alternation changes the text at every step
        result.update(range(1, steps + 1))
    # The text at a step depends only on which edits have switched and on the step modulo the alternations'
    # period, so each distinct text is rendered once (and shared) however many steps there are.
    period = _alternation_period(parsed, steps)
    texts: dict[tuple[int, int], str] = {}
    schedule = []
    for step in sorted(result):
        key = (bisect.bisect_left(switch_points, step), step % period if period else step)
        if key not in texts:
            texts[key] = _render(prompt, parsed.root, step)
        schedule.append([step, texts[key]])
    return schedule


def get_learned_conditioning_prompt_schedules(
    prompts: Sequence[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[PromptSchedule]:
    """For each prompt, the list of [end_at_step, text] pairs its editing and alternation syntax produce.

    An integer `when` is a step; a number written with a "." is a fraction of the steps. With `hires_steps`, the
    schedule is for the hires pass: 1.x is a fraction of it and integers count from the start of the first pass.
    `use_old_scheduling` restores A1111's pre-1.6 rule (any value below 1 is a fraction). Time and memory are
    linear in the prompt's length (times the number of distinct texts).

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
            parsed = _parse_schedule(prompt)
        except _Unparsable:
            return [[steps, prompt]]
        if not parsed.choices:
            return [[steps, prompt]]
        return _schedule(prompt, parsed, steps, timing)

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

# Requests nesting deeper are refused (bracket_depth); parse_prompt_attention reads brackets beyond it as text,
# which bounds its work (each bracket multiplies the weights of the text it holds). (x) at depth 100 already
# weighs 1.1**100.
MAX_NESTING = 100

_OPENER_OF = {")": "(", "]": "[", "}": "{"}


def bracket_depth(text: str) -> int:
    """The most brackets open at once in a prompt, escapes respected: checked before a prompt is accepted.

    A bracket stays open until a closing one of its own kind (as emphasis counts them), so stray closing
    brackets of another kind, as in "(]" * 200, do not hide the depth.
    """
    open_count = {"(": 0, "[": 0, "{": 0}
    depth = deepest = 0
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in open_count:
            open_count[ch] += 1
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _OPENER_OF and open_count[_OPENER_OF[ch]]:
            open_count[_OPENER_OF[ch]] -= 1
            depth -= 1
    return deepest


_SURROGATE = re.compile("[\ud800-\udfff]")


def prompt_text_problem(text: str) -> str | None:
    """Why no tokenizer can take this text, or None. JSON can carry a lone surrogate ("\\ud800"), which is not a
    character (a valid pair arrives as one character); a tokenizer fails on it with an unhelpful TypeError."""
    match = _SURROGATE.search(text)
    if match is None:
        return None
    return f"lone surrogate U+{ord(match.group()):04X} at character {match.start()}: not valid Unicode text"


def check_prompt_text(text: str, field: str = "prompt") -> None:
    """ValueError "field: why" for text no tokenizer can take (see prompt_text_problem)."""
    problem = prompt_text_problem(text)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")


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
    field_name = "negative_prompt" if getattr(prompts, "is_negative_prompt", False) else "prompt"
    for prompt in prompts:  # a clear refusal here, whichever door the prompt came through
        check_prompt_text(prompt, field_name)
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
# a sub-prompt's text (leading space kept, trailing space dropped) and an optional ":weight" at its end.
# A1111's pattern, kept for extensions; _split_weight gives the same result without its quadratic backtracking
# over long runs of spaces.
re_weight = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)
_WEIGHT = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")


def _split_weight(subprompt: str) -> tuple[str, str | None]:
    """(text, weight or None): what re_weight matches. Only the last ":" can start a weight running to the end."""
    text = subprompt.rstrip()
    colon = text.rfind(":")
    if colon >= 0 and _WEIGHT.fullmatch(text[colon + 1 :].lstrip()):
        return text[:colon].rstrip(), text[colon + 1 :].lstrip()
    return text, None


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
            text, weight = _split_weight(subprompt)
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

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)  # A1111's; _split_on_break is the same split, in linear time
_BREAK_WORD = re.compile(r"\bBREAK\b")

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


def _parse_weight(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:  # "1.2.3" matches the pattern; A1111 crashes there, we keep it as text
        return None


def _split_on_break(text: str) -> list[str]:
    """re_break.split(text): the whitespace around each BREAK goes with it."""
    parts = _BREAK_WORD.split(text)
    for i in range(len(parts)):
        if i > 0:
            parts[i] = parts[i].lstrip()
        if i < len(parts) - 1:
            parts[i] = parts[i].rstrip()
    return parts


class _Weights:
    """The pieces of a prompt and their weights, as A1111 computes them, in time linear in the prompt.

    A1111 multiplies the weight of every piece after an open bracket when the bracket closes. Pieces added with
    no bracket in between always get the same multiplications, so they share one weight (a cell), and a BREAK
    marker's weight is minus its cell's: IEEE products of the same factors in the same order are equal, so the
    floats are A1111's to the last bit.
    """

    def __init__(self) -> None:
        self.pieces: list[tuple[str, int, int]] = []  # text, cell, sign
        self.cells: list[float | int] = []  # int 1 until multiplied, so an untouched BREAK stays -1 as in A1111
        self.round: list[int] = []  # for each open bracket, the first cell after it
        self.square: list[int] = []
        self.cell_open = False  # the last cell may take more pieces

    def add(self, text: str, sign: int = 1) -> None:
        if not self.cell_open:
            self.cells.append(1)
            self.cell_open = True
        self.pieces.append((text, len(self.cells) - 1, sign))

    def open(self, brackets: list[int]) -> bool:
        if len(self.round) + len(self.square) >= MAX_NESTING:
            return False  # deeper brackets are text (see MAX_NESTING)
        brackets.append(len(self.cells))
        self.cell_open = False
        return True

    def close(self, start: int, multiplier: float) -> None:
        cells = self.cells
        cells[start:] = [weight * multiplier for weight in cells[start:]]
        self.cell_open = False

    def result(self) -> list[list[Any]]:
        # unclosed brackets apply to the rest; round first, then square, so the float products match A1111's
        for start in self.round:
            self.close(start, ROUND_BRACKET_MULTIPLIER)
        for start in self.square:
            self.close(start, SQUARE_BRACKET_MULTIPLIER)
        merged: list[list[Any]] = []
        for text, cell, sign in self.pieces:
            weight = float(self.cells[cell]) if sign > 0 else -self.cells[cell]
            if merged and merged[-1][1] == weight:
                merged[-1][0] += text
            else:
                merged.append([text, weight])
        return merged or [["", 1.0]]


def parse_prompt_attention(text: str) -> list[list[Any]]:
    """Split a prompt into [text, weight] pairs.

    (abc) multiplies by 1.1, (abc:3.12) by 3.12, [abc] divides by 1.1; nesting multiplies; an unclosed bracket
    applies to the rest of the prompt. \\( \\) \\[ \\] \\\\ are literal characters. BREAK becomes ["BREAK", -1].
    Neighbours with equal weights are merged. Brackets opened beyond MAX_NESTING are text.

    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    weights = _Weights()
    for match in re_attention.finditer(text):
        piece = match.group(0)
        weight = _parse_weight(match.group(1))
        if piece.startswith("\\"):
            weights.add(piece[1:])
        elif piece == "(" and weights.open(weights.round):
            pass
        elif piece == "[" and weights.open(weights.square):
            pass
        elif weight is not None and weights.round:
            weights.close(weights.round.pop(), weight)
        elif piece == ")" and weights.round:
            weights.close(weights.round.pop(), ROUND_BRACKET_MULTIPLIER)
        elif piece == "]" and weights.square:
            weights.close(weights.square.pop(), SQUARE_BRACKET_MULTIPLIER)
        elif "BREAK" not in piece:
            weights.add(piece)
        else:
            for i, part in enumerate(_split_on_break(piece)):
                if i > 0:
                    weights.add("BREAK", -1)
                weights.add(part)
    return weights.result()


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


COUNT_TOKENS_BUDGET = 100_000  # characters the token counter tokenizes per call (see count_tokens)


def _without_extra_networks(text: str) -> str:
    """re_extra_net.sub("", text). Every tag ends with ">", so the tail after the last one is left out of the
    search, where "<x:" repeated without a ">" made the regex retry to the end from each "<"."""
    end = text.rfind(">") + 1
    return re_extra_net.sub("", text[:end]) + text[end:]


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
    The counter runs on every keystroke, so it tokenizes the distinct texts longest first and stops once
    COUNT_TOKENS_BUDGET characters are done: only a prompt whose schedule has more text than that (an
    alternation over many steps of a very long prompt) can be counted short.
    """
    text = _without_extra_networks(text)
    try:
        flat = get_multicond_prompt_list([text])[1] if is_positive else [text]
        schedules = get_learned_conditioning_prompt_schedules(flat, steps)
    except Exception:  # the counter must never break typing; count the raw text instead
        schedules = [[[steps, text]]]

    texts = sorted(dict.fromkeys(entry[1] for schedule in schedules for entry in schedule), key=len, reverse=True)
    token_count = done = 0
    for prompt in texts:
        if done and done + len(prompt) > COUNT_TOKENS_BUDGET:
            break
        done += len(prompt)
        parsed = parse_prompt_attention(prompt) if parse_attention else [[prompt, 1.0]]
        tokens = tokenize_prompt_attention(parsed, tokenize_fn)
        token_count = max(token_count, _split(tokens, chunk_length, comma_token, backtrack, CLIP_END_TOKEN)[1])
    return token_count, math.ceil(max(token_count, 1) / chunk_length) * chunk_length
