"""Infotext ("generation parameters"): write it, parse it, and the paste-field registry extensions fill.

The text layout is A1111's, byte for byte, because Civitai, image browsers and every A1111 extension read it:

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>      (only when non-empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ..., Version: v1.10.1

The old module name `modules.generation_parameters_copypaste` is an alias of this module (same object).
No gradio and no torch here: the UI layer wires components to `paste_fields`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from modules import shared

# Extensions still import the pre-1.8 name; both names must give this very module object.
sys.modules.setdefault("modules.generation_parameters_copypaste", sys.modules[__name__])

# Keys A1111's create_infotext always writes first, in this order (None values are left out).
INFOTEXT_KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
# Written after the fixed keys and the extra generation params.
INFOTEXT_TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

# A1111's pattern for one `key: value` pair of the parameters line. Kept for extensions that import it, and as
# the definition `find_params` follows; not used here because `re_param.findall` is quadratic on hostile lines
# (a long run of key characters with no colon is rescanned from every start: 80 KB took 26 s, holding the GIL).
re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
# Where re_param's key can begin: a word character with at least one more key character after it (its run).
_re_key = re.compile(r"\w[\w \-/]+")
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
_re_weight = re.compile(r":\s*([+-]?[.\d]+)\s*\)")  # the ":1.2)" that closes a weighted group

# Schedule types A1111 knows (label, internal name). Used to split legacy combined sampler names such as
# "DPM++ 2M Karras" that infotexts from before v1.9 carry.
KNOWN_SCHEDULERS: tuple[tuple[str, str], ...] = (
    ("Automatic", "automatic"),
    ("Uniform", "uniform"),
    ("Karras", "karras"),
    ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"),
    ("SGM Uniform", "sgm_uniform"),
    ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"),
    ("Simple", "simple"),
    ("Normal", "normal"),
    ("DDIM", "ddim"),
    ("Beta", "beta"),
)


def _shared_opt(name: str, default: Any) -> Any:
    """Read an option from modules.shared.opts; the default when it has no such option."""
    try:
        return getattr(shared.opts, name)
    except (AttributeError, KeyError):
        return default


# ---------------------------------------------------------------------------------------------------------------
# Writing


def quote(text: Any) -> Any:
    """JSON-quote a value that contains ',', ':' or a newline (the separators of the parameter line).

    Like A1111, other values come back unchanged (not even converted to str)."""
    s = str(text)
    if "," not in s and "\n" not in s and ":" not in s:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo `quote`: a value in double quotes is JSON-decoded; anything else (or bad JSON) is kept as is."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def _resolve_value(value: Any, index: int, call_kwargs: Mapping[str, Any]) -> Any:
    # extra_generation_params may hold a per-image list or a callable (A1111's hires prompt uses one)
    try:
        if isinstance(value, list):
            return value[index]
        if callable(value):
            return value(**call_kwargs)
    except Exception:
        return None
    return value


def build_infotext(
    prompt: str,
    negative_prompt: str | None,
    params: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    version: str | None = None,
    user: str | None = None,
    *,
    index: int = 0,
    call_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Build the infotext exactly as A1111's processing.create_infotext lays it out.

    `params` holds the fixed keys (any order; written in INFOTEXT_KEY_ORDER, unknown keys after them),
    `extra` is p.extra_generation_params (insertion order kept; a key that is also a fixed key keeps the
    fixed position, as in A1111's dict literal), then Version and User.

    Values are written with str(), never normalised. That is also what A1111 does, so the caller decides
    the look: A1111's UI hands the CFG slider's value over as 7 and writes `CFG scale: 7` (the reference
    example), while its API hands over the float 7.0 and writes `CFG scale: 7.0`. Pass what the request had.
    Lists are indexed by `index` (per-image values); callables are called with `call_kwargs`.
    """
    merged: dict[str, Any] = dict.fromkeys(INFOTEXT_KEY_ORDER)
    merged.update(params)
    if extra:
        merged.update(extra)
    for key, value in zip(INFOTEXT_TRAILING_KEYS, (version, user), strict=True):
        merged[key] = value if value is not None else merged.get(key)

    kwargs = dict(call_kwargs or {})
    kwargs.setdefault("index", index)
    parts = []
    for key, raw in merged.items():
        value = _resolve_value(raw, index, kwargs)
        if value is None:
            continue
        parts.append(key if key == value else f"{key}: {quote(value)}")

    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt or ''}{negative_text}\n{', '.join(parts)}".strip()


# ---------------------------------------------------------------------------------------------------------------
# Parsing

MAX_INFOTEXT_CHARS = 64 * 1024
"""Longest infotext taken from outside (the API's `infotext` field, an image's parameters text), in characters.

A1111 writes a few thousand (a long prompt, LoRA hashes, ADetailer and ControlNet entries); a longer text chunk
is not generation parameters. The parser is linear anyway; the bound keeps one request's parse, which holds the
GIL (txt2img parses on the event loop), to milliseconds."""


def infotext_too_long(text: str) -> bool:
    return len(text) > MAX_INFOTEXT_CHARS


def too_long_message(length: int) -> str:
    """Why an infotext of `length` characters was not read (for API errors and the PNG Info page)."""
    return f"{length:,} characters; an infotext is read only up to {MAX_INFOTEXT_CHARS:,}"


def find_params(line: str) -> list[tuple[str, str]]:
    """The (key, value) pairs of a parameters line: exactly `re_param.findall(line)`, in linear time.

    findall retries the pattern from every position after a failure, rescanning the same run of key characters
    each time. Here the pattern is tried only where a key can begin (a word character and one more key
    character), and after a failure the rest of that run is skipped: a start inside it reaches the same end
    with no colon after it, or (spaces up to the end) the same key as the next search finds."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while (key := _re_key.search(line, pos)) is not None:
        found = re_param.match(line, key.start())  # costs the length of this key and value, no more
        if found is None:
            pos = key.end()
        else:
            pairs.append(found.groups())
            pos = found.end()
    return pairs


def split_sampler_scheduler(name: str) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'); a name without a known scheduler suffix -> (name, None).

    The longest suffix wins, so 'Euler SGM Uniform' is SGM Uniform rather than Uniform."""
    options = [(label, label) for label, _ in KNOWN_SCHEDULERS] + [(ident, label) for label, ident in KNOWN_SCHEDULERS]
    for suffix, label in sorted(options, key=lambda x: len(x[0]), reverse=True):
        if name.endswith(" " + suffix) and len(name) > len(suffix) + 1:
            return name[: -(len(suffix) + 1)], label
    return name, None


_SQUARE = 1 / 1.1  # the multiplier of "[...]"
# The prompt as the weighting rules see it: a bracket, a ":1.2)" that may close a "(", or a piece of text (plain
# characters and backslash escapes; a ":" on its own). Text never holds a bracket or a ":", so the pieces do
# not depend on which brackets are open: a ":1.2)" with no "(" open is text, as each of its characters would be.
_re_emphasis_token = re.compile(r"[()\[\]]|:\s*[+-]?[.\d]+\s*\)|(?:[^()\[\]:\\]++|\\.)++|[:\\]", re.DOTALL)


def _run_weights(multipliers: array, parents: array, run_nodes: array, run_depths: array) -> Iterator[float]:
    """The weight of each run of text: the multipliers of its chain of "(", then 1/1.1 per open "[".

    The "(" chain is multiplied outermost first, as before; the "[" factor is one power taken from a table, so
    a run costs O(1) however deeply it is nested. That power can differ from multiplying one by one in the
    last bits only, far inside isclose's tolerance."""
    chain = array("d", multipliers)  # chain[n]: product of the multipliers from the outermost "(" down to n
    for node, parent in enumerate(parents):
        if parent >= 0:
            chain[node] = chain[parent] * multipliers[node]
    square = [1.0]
    for _ in range(max(run_depths, default=0)):
        square.append(square[-1] * _SQUARE)
    for node, depth in zip(run_nodes, run_depths, strict=True):
        yield (chain[node] if node >= 0 else 1.0) * square[depth]


def _prompt_uses_emphasis(text: str) -> bool:
    """True when some text of the prompt gets an attention weight other than 1 ((x), [x], (x:1.2)).

    Follows the weighting rules of A1111's attention syntax: ( multiplies by 1.1, [ divides by 1.1, (x:w)
    sets w, a backslash escapes, an unclosed bracket weights everything after it, BREAK is not text.
    Each "(" is recorded once with the "(" around it, and each run of text as (innermost "(", number of open
    "["), so nesting costs nothing per run: a long or deeply nested prompt costs one pass."""
    multipliers = array("d")  # per "(" seen: 1.1, or the w its ":w)" set
    parents = array("q")  # per "(" seen: the "(" open around it, -1 for none
    round_open: list[int] = []  # indexes of the open "("
    square_depth = 0
    run_nodes, run_depths = array("q"), array("q")  # per run of text inside brackets
    in_text = False
    for token in _re_emphasis_token.findall(re.sub(r"\bBREAK\b", " ", text)):
        first = token[0]
        if first == "(":
            parents.append(round_open[-1] if round_open else -1)
            multipliers.append(1.1)
            round_open.append(len(multipliers) - 1)
        elif first == "[":
            square_depth += 1
        elif first == ")" and round_open:
            round_open.pop()
        elif first == "]" and square_depth:
            square_depth -= 1
        elif first == ":" and len(token) > 1 and round_open:  # ":w)" sets the weight of the "(" it closes
            try:
                multipliers[round_open[-1]] = float(_re_weight.match(token).group(1))  # type: ignore[union-attr]
            except ValueError:
                pass
            round_open.pop()
        else:
            if not in_text and (round_open or square_depth):
                run_nodes.append(round_open[-1] if round_open else -1)
                run_depths.append(square_depth)
            in_text = True
            continue
        in_text = False
    return any(not math.isclose(w, 1.0) for w in _run_weights(multipliers, parents, run_nodes, run_depths))


def _old_hires_fix_first_pass_dimensions(width: int, height: int) -> tuple[int, int]:
    # pre-1.0 hires fix chose a first pass of about 512x512 pixels, rounded up to multiples of 64
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def restore_old_hires_fix_params(res: dict[str, Any]) -> None:
    """Convert the legacy 'First pass size' key into Size + Hires resize, as A1111 does."""
    firstpass_width = res.get("First pass size-1")
    firstpass_height = res.get("First pass size-2")

    if _shared_opt("use_old_hires_fix_width_height", False):
        hires_width = int(res.get("Hires resize-1", 0))
        hires_height = int(res.get("Hires resize-2", 0))
        if hires_width and hires_height:
            res["Size-1"] = hires_width
            res["Size-2"] = hires_height
            return

    if firstpass_width is None or firstpass_height is None:
        return

    firstpass_width, firstpass_height = int(firstpass_width), int(firstpass_height)
    width = int(res.get("Size-1", 512))
    height = int(res.get("Size-2", 512))
    if firstpass_width == 0 or firstpass_height == 0:
        firstpass_width, firstpass_height = _old_hires_fix_first_pass_dimensions(width, height)

    res["Size-1"] = firstpass_width
    res["Size-2"] = firstpass_height
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


def _parse_version(text: str | None):
    if text is None:
        return None
    try:
        from packaging import version
    except ImportError:
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    try:
        return version.parse(text)
    except Exception:
        return None


def backcompat(res: dict[str, Any]) -> None:
    """Turn on compatibility flags for infotexts written by older A1111 versions (infotext_versions)."""
    if not _shared_opt("auto_backcompat", True):
        return
    ver = _parse_version(res.get("Version"))
    if ver is None:
        return
    v160, v170_tsnr, v180 = _parse_version("1.6.0"), _parse_version("v1.7.0-225"), _parse_version("1.8.0")
    if ver < v160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < v160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < v170_tsnr:
        res["Downcast alphas_cumprod"] = True
    if ver < v180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


StylesExtractor = Callable[[str, str], tuple[list[str], str, str]]


def _apply_styles(res: dict[str, Any], prompt: str, negative: str, extract: StylesExtractor) -> tuple[str, str]:
    """Take known styles out of the prompts; the option infotext_styles says whether to keep them as a list."""
    mode = _shared_opt("infotext_styles", "Apply if any")
    if mode == "Ignore":
        return prompt, negative
    found, prompt_no_styles, negative_no_styles = extract(prompt, negative)
    same_hr_styles = True
    if "Hires prompt" in res or "Hires negative prompt" in res:
        hr_prompt, hr_negative = res.get("Hires prompt", prompt), res.get("Hires negative prompt", negative)
        hr_found, hr_prompt_no_styles, hr_negative_no_styles = extract(hr_prompt, hr_negative)
        same_hr_styles = found == hr_found
        if same_hr_styles:
            # a hires prompt equal to the first pass one is written as "" (= use the same prompt)
            res["Hires prompt"] = "" if hr_prompt_no_styles == prompt_no_styles else hr_prompt_no_styles
            res["Hires negative prompt"] = "" if hr_negative_no_styles == negative_no_styles else hr_negative_no_styles
    if not same_hr_styles:
        return prompt, negative  # styles differ between passes: keep the text, it is the only faithful form
    if mode == "Apply" or (mode == "Apply if any" and found):
        res["Styles array"] = found
    return prompt_no_styles, negative_no_styles


# Filled in when the infotext lacks the key: the value the setting had when it was not written.
_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_LATE_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def _join_lines(lines: list[str]) -> str:
    # A1111 appends line by line and adds no newline while the text is still empty: leading blank lines go
    first = next((i for i, line in enumerate(lines) if line), len(lines))
    return "\n".join(lines[first:])


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    """(prompt, negative prompt) from the lines before the parameters line, as A1111 splits them: from the
    first "Negative prompt:" line on, lines are the negative prompt (a later label is dropped too)."""
    label = "Negative prompt:"
    stripped = [line.strip() for line in lines]
    first = next((i for i, line in enumerate(stripped) if line.startswith(label)), len(stripped))
    negative = [line[len(label):].strip() if line.startswith(label) else line for line in stripped[first:]]
    return _join_lines(stripped[:first]), _join_lines(negative)


def parse_generation_parameters(
    x: str,
    skip_fields: list[str] | None = None,
    extract_styles: StylesExtractor | None = None,
) -> dict[str, Any]:
    """Parse an infotext into a dict, as A1111's parse_generation_parameters does.

    Values stay strings as written (also the `WxH` halves: 'Size-1' -> '512'); only the filled-in defaults
    are ints/bools, as in A1111. `extract_styles(prompt, negative) -> (styles, prompt, negative)` is the
    styles hook (the prompt-styles module provides it); `skip_fields` defaults to the option
    `infotext_skip_pasting`.
    """
    if skip_fields is None:
        skip_fields = list(_shared_opt("infotext_skip_pasting", []) or [])

    res: dict[str, Any] = {}
    *lines, lastline = x.strip().split("\n")
    params = find_params(lastline)
    if len(params) < 3:  # A1111: fewer than three pairs and the last line is prompt text
        lines.append(lastline)
        params = []
    prompt, negative_prompt = _split_prompts(lines)

    for k, v in params:
        if not v:
            continue  # A1111 drops an empty value (its parser fails on it), so defaults below still apply
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v

    if extract_styles is not None:
        prompt, negative_prompt = _apply_styles(res, prompt, negative_prompt, extract_styles)

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    if "Clip skip" not in res:
        res["Clip skip"] = "1"  # a missing Clip skip means the default, 1

    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0

    # Infotexts from before v1.9 name the schedule inside the sampler ("DPM++ 2M Karras").
    for sampler_key, schedule_key in (("Sampler", "Schedule type"), ("Hires sampler", "Hires schedule type")):
        if isinstance(res.get(sampler_key), str) and schedule_key not in res:
            sampler, schedule = split_sampler_scheduler(res[sampler_key])
            if schedule is not None:
                res[sampler_key], res[schedule_key] = sampler, schedule

    for key, value in _DEFAULTS:
        res.setdefault(key, value)

    restore_old_hires_fix_params(res)

    for key, value in _LATE_DEFAULTS:
        res.setdefault(key, value)

    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False

    if "Emphasis" not in res and (_prompt_uses_emphasis(prompt) or _prompt_uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"

    if "Refiner switch by sampling steps" not in res:
        res["Refiner switch by sampling steps"] = False

    backcompat(res)

    for key in skip_fields:
        res.pop(key, None)

    return res


# ---------------------------------------------------------------------------------------------------------------
# Infotext keys that are settings: they go to "Override settings" when pasted.

# (infotext key, setting name). Settings declared with OptionInfo(..., infotext=...) are added to these.
infotext_to_setting_name_mapping: list[tuple[str, str]] = [
    ("Clip skip", "CLIP_stop_at_last_layers"),
    ("Model hash", "sd_model_checkpoint"),
    ("VAE", "sd_vae"),
    ("RNG", "randn_source"),
    ("ENSD", "eta_noise_seed_delta"),
    ("Emphasis", "emphasis"),
    ("Conditional mask weight", "inpainting_mask_weight"),
    ("Noise multiplier", "initial_noise_multiplier"),
    ("Token merging ratio", "token_merging_ratio"),
    ("Token merging ratio hr", "token_merging_ratio_hr"),
    ("Eta", "eta_ancestral"),
    ("Eta DDIM", "eta_ddim"),
    ("Sigma churn", "s_churn"),
    ("Sigma tmin", "s_tmin"),
    ("Sigma tmax", "s_tmax"),
    ("Sigma noise", "s_noise"),
    ("Schedule min sigma", "sigma_min"),
    ("Schedule max sigma", "sigma_max"),
    ("Schedule rho", "rho"),
    ("FP8 weight", "fp8_storage"),
    ("Cache FP16 weight for LoRA", "cache_fp16_weight"),
    ("VAE Encoder", "sd_vae_encode_method"),
    ("VAE Decoder", "sd_vae_decode_method"),
]
"""Only pairs whose setting exists in shared.opts are used; extensions may append pairs."""


def _setting_mapping() -> list[tuple[str, str]]:
    try:
        labels: Mapping[str, Any] = shared.opts.data_labels
    except AttributeError:
        return []
    pairs = [(info.infotext, key) for key, info in labels.items() if getattr(info, "infotext", None)]
    pairs += [(k, s) for k, s in infotext_to_setting_name_mapping if s in labels]
    return list(dict.fromkeys(pairs))


def _cast_setting(setting_name: str, value: Any) -> Any:
    # A value that does not cast ("Clip skip: abc") stays as written: it differs from the setting, so the paste
    # lists it, and the check of the job's override_settings refuses it by name instead of the paste failing.
    try:
        return shared.opts.cast_value(setting_name, value)
    except (AttributeError, ValueError):
        return value


def create_override_settings_dict(text_pairs: Iterable[str]) -> dict[str, Any]:
    """['Clip skip: 2', 'ENSD: 31337'] -> {'CLIP_stop_at_last_layers': 2, 'eta_noise_seed_delta': 31337}."""
    params = {}
    for pair in text_pairs:
        k, _, v = pair.partition(":")
        params[k] = v.strip()

    res = {}
    for param_name, setting_name in _setting_mapping():
        value = params.get(param_name)
        if value is not None:
            res[setting_name] = _cast_setting(setting_name, value)
    return res


def get_override_settings(params: Mapping[str, Any], *, skip_fields: Iterable[str] | None = None) -> list[tuple]:
    """(infotext key, setting name, value) for every setting the infotext sets to a non-current value."""
    skip = set(skip_fields or ())
    opts = shared.opts
    res = []
    for param_name, setting_name in _setting_mapping():
        if param_name in skip:
            continue
        v = params.get(param_name)
        if v is None:
            continue
        if setting_name == "sd_model_checkpoint" and getattr(opts, "disable_weights_auto_swap", False):
            continue
        v = _cast_setting(setting_name, v)
        if v == getattr(opts, setting_name, None):
            continue
        res.append((param_name, setting_name, v))
    return res


# ---------------------------------------------------------------------------------------------------------------
# Paste-field registry (plain data; the UI layer connects the components)


class ParamBinding:
    """A "send to <tab>" button and where its data comes from (A1111's constructor, kept as is)."""

    def __init__(
        self,
        paste_button: Any,
        tabname: str,
        source_text_component: Any = None,
        source_image_component: Any = None,
        source_tabname: str | None = None,
        override_settings_component: Any = None,
        paste_field_names: list[str] | None = None,
    ) -> None:
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


class PasteField(tuple):
    """(component, target): target is an infotext key, or a callable params -> value. Unpacks as a pair."""

    component: Any
    label: str | None
    function: Callable[[dict], Any] | None
    api: str | None

    def __new__(cls, component: Any, target: str | Callable[[dict], Any], api: str | None = None):
        return super().__new__(cls, (component, target))

    def __init__(self, component: Any, target: str | Callable[[dict], Any], api: str | None = None) -> None:
        super().__init__()
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None
        self.api = api


paste_fields: dict[str, dict] = {}
registered_param_bindings: list[ParamBinding] = []


def reset() -> None:
    paste_fields.clear()
    registered_param_bindings.clear()


def add_paste_fields(tabname: str, init_img: Any, fields: list | None, override_settings_component: Any = None) -> None:
    """Register a tab's paste fields; plain (component, target) pairs become PasteField."""
    if fields:
        for i, field in enumerate(fields):
            if not isinstance(field, PasteField):
                fields[i] = PasteField(*field)
    paste_fields[tabname] = {
        "init_img": init_img,
        "fields": fields,
        "override_settings_component": override_settings_component,
    }


def register_paste_params_button(binding: ParamBinding) -> None:
    registered_param_bindings.append(binding)


def bind_buttons(buttons: Mapping[str, Any], send_image: Any, send_generate_info: Any) -> None:
    """Old API kept for extensions: prefer register_paste_params_button."""
    for tabname, button in buttons.items():
        from_tab = isinstance(send_generate_info, str)
        register_paste_params_button(
            ParamBinding(
                paste_button=button,
                tabname=tabname,
                source_text_component=None if from_tab else send_generate_info,
                source_image_component=send_image,
                source_tabname=send_generate_info if from_tab else None,
            )
        )
