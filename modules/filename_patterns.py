"""Output file and folder names: A1111's `[tag]` patterns and the sanitising that keeps names safe.

Every tag value goes through `sanitize_filename_part` (or is a number), and `FilenameGenerator.apply` also
strips path separators from whatever a tag returns, so no prompt can create a sub-folder or climb out of
the output folder. modules.images re-exports these names (A1111 keeps them there).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import string
import sys
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from modules import shared

# --filenames-max-length; the launcher may set this from cmd_opts.
max_filename_part_length: int = 128

# Characters Windows forbids (and '/' everywhere), plus '#' which breaks URLs of served files (A1111 does too).
invalid_filename_chars = '#<>:"/\\|?*'
invalid_filename_prefix = " ."  # no leading space, no hidden file, no '..'
invalid_filename_postfix = " ."  # Windows drops trailing dots and spaces
# Bidi overrides can make "gpj.exe" look like "exe.jpg" in a file manager.
_bidi_controls = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)], None)
_windows_reserved = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}

re_nonletters = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
re_pattern = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
re_pattern_arg = re.compile(r"(.*)<([^>]*)>$")


class _Skip:
    """A tag value meaning: write nothing, and drop the literal text just before the tag too."""


NOTHING_AND_SKIP_PREVIOUS_TEXT = _Skip()


def shared_opt(name: str, default: Any, settings: Any = None) -> Any:
    """An option value: from `settings` (mapping or object) if it has it, then modules.shared.opts, then default."""
    if settings is not None:
        if isinstance(settings, Mapping):
            if name in settings:
                return settings[name]
        else:
            try:
                return getattr(settings, name)
            except AttributeError:
                pass
    try:
        return getattr(shared.opts, name)
    except (AttributeError, KeyError):
        return default


def _clean_chars(text: str) -> str:
    text = text.translate(_bidi_controls)
    text = "".join("_" if unicodedata.category(c) == "Cc" else c for c in text)
    return text.translate({ord(x): "_" for x in invalid_filename_chars})


def _avoid_reserved(text: str) -> str:
    # "con", "nul.txt", "COM1 .png" are device names on Windows whatever follows the first dot: "nul_.txt"
    stem, dot, rest = text.partition(".")
    if stem.rstrip(" ").upper() in _windows_reserved:
        return f"{stem}_{dot}{rest}"
    return text


def sanitize_filename_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """Make `text` safe as (part of) one file or folder name; None stays None (A1111: the tag is left as is).

    Replaces `<>:"/\\|?*#` and control characters with '_', removes bidi overrides, strips leading spaces and
    dots (no hidden files, no '..') and trailing ones, cuts to `max_filename_part_length` characters, and
    never returns an empty string ('_' instead) nor a Windows device name ('con' -> 'con_')."""
    if text is None:
        return None
    text = str(text)
    if replace_spaces:
        text = text.replace(" ", "_")
    text = _clean_chars(text)
    text = text.lstrip(invalid_filename_prefix)[:max_filename_part_length]
    text = text.rstrip(invalid_filename_postfix)
    return _avoid_reserved(text) or "_"


def clean_path_component(text: str, max_bytes: int = 255) -> str:
    """A whole file or folder name (pattern result): same cleaning as a part, cut to `max_bytes` of UTF-8."""
    text = _clean_chars(text).lstrip(invalid_filename_prefix)
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return _avoid_reserved(text.rstrip(invalid_filename_postfix)) or "_"


def _no_separators(value: str) -> str:
    # last line of defence: whatever a tag returns, it cannot add a path level
    return _clean_chars(value) if any(c in value for c in "/\\") or any(ord(c) < 32 for c in value) else value


def _scheduler_label(sampler_name: str, scheduler: str | None) -> str:
    """'Automatic' resolves to the sampler's own default schedule when the sampler registry knows it."""
    scheduler = scheduler or "Automatic"
    if scheduler == "Automatic":
        from modules import sd_samplers  # here: the sampler registry imports the engine

        config = sd_samplers.find_sampler_config(sampler_name)
        if config is not None:
            scheduler = config.options.get("scheduler", "Automatic")
    return scheduler.capitalize()  # A1111's look: 'karras' -> 'Karras', 'SGM Uniform' -> 'Sgm uniform'


def _sampler_scheduler(p: Any, with_sampler: bool) -> Any:
    if not (hasattr(p, "scheduler") and hasattr(p, "sampler_name")):
        return NOTHING_AND_SKIP_PREVIOUS_TEXT
    label = _scheduler_label(p.sampler_name, p.scheduler)
    text = f"{p.sampler_name} {label}" if with_sampler else label
    return sanitize_filename_part(text, replace_spaces=False)


class FilenameGenerator:
    """Expands `[tag]` / `[tag<arg>]` patterns from a processing-like object `p` (A1111 field names).

    A tag whose value is None, or whose lookup fails (p lacks the field), is left in the name as text,
    exactly like an unknown tag; that is A1111's behaviour."""

    replacements: dict[str, Callable[..., Any]] = {
        "basename": lambda self: self.basename or "img",
        "seed": lambda self: self.seed if self.seed is not None else "",
        "seed_first": lambda self: self.seed if self.p.batch_size == 1 else self.p.all_seeds[0],
        "seed_last": lambda self: NOTHING_AND_SKIP_PREVIOUS_TEXT if self.p.batch_size == 1 else self.p.all_seeds[-1],
        "steps": lambda self: self.p and self.p.steps,
        "cfg": lambda self: self.p and self.p.cfg_scale,
        "width": lambda self: self.image.width if self.image is not None else self.p.width,
        "height": lambda self: self.image.height if self.image is not None else self.p.height,
        "styles": lambda self: (
            self.p
            and sanitize_filename_part(
                ", ".join([s for s in self.p.styles if s != "None"]) or "None", replace_spaces=False
            )
        ),
        "sampler": lambda self: self.p and sanitize_filename_part(self.p.sampler_name, replace_spaces=False),
        "sampler_scheduler": lambda self: self.p and _sampler_scheduler(self.p, True),
        "scheduler": lambda self: self.p and _sampler_scheduler(self.p, False),
        "model_hash": lambda self: self.model_hash(),
        "model_name": lambda self: sanitize_filename_part(self.model_name(), replace_spaces=False),
        "date": lambda self: datetime.datetime.now().strftime("%Y-%m-%d"),
        "datetime": lambda self, *args: self.datetime(*args),  # [datetime], [datetime<fmt>], [datetime<fmt><tz>]
        "job_timestamp": lambda self: self.job_timestamp(),
        "prompt_hash": lambda self, *args: self.string_hash(self.prompt, *args),
        "negative_prompt_hash": lambda self, *args: self.string_hash(self.p.negative_prompt, *args),
        # the space keeps "a"+"bc" and "ab"+"c" apart
        "full_prompt_hash": lambda self, *args: self.string_hash(f"{self.p.prompt} {self.p.negative_prompt}", *args),
        "prompt": lambda self: sanitize_filename_part(self.prompt),
        "prompt_no_styles": lambda self: self.prompt_no_style(),
        "prompt_spaces": lambda self: sanitize_filename_part(self.prompt, replace_spaces=False),
        "prompt_words": lambda self: self.prompt_words(),
        "batch_number": lambda self: (
            NOTHING_AND_SKIP_PREVIOUS_TEXT if self.p.batch_size == 1 or self.zip else self.p.batch_index + 1
        ),
        "batch_size": lambda self: self.p.batch_size,
        "generation_number": lambda self: (
            NOTHING_AND_SKIP_PREVIOUS_TEXT
            if (self.p.n_iter == 1 and self.p.batch_size == 1) or self.zip
            else self.p.iteration * self.p.batch_size + self.p.batch_index + 1
        ),
        "hasprompt": lambda self, *args: self.hasprompt(*args),  # [hasprompt<word|default><word2>...]
        "clip_skip": lambda self: self.setting("CLIP_stop_at_last_layers", "clip_skip", 1),
        "randn_source": lambda self: self.setting("randn_source", None, "GPU"),
        "denoising": lambda self: (
            self.p.denoising_strength if self.p and self.p.denoising_strength else NOTHING_AND_SKIP_PREVIOUS_TEXT
        ),
        "user": lambda self: self.p.user,
        "vae_filename": lambda self: self.vae_filename(),
        "none": lambda self: "",  # lets a pattern be just the counter
        "image_hash": lambda self, *args: self.image_hash(*args),  # [image_hash<length>], full hash by default
    }
    default_time_format = "%Y%m%d%H%M%S"

    def __init__(
        self,
        p: Any,
        seed: Any,
        prompt: str | None,
        image: Any,
        zip: bool = False,
        basename: str = "",
        settings: Any = None,
    ) -> None:
        self.p = p
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.zip = zip
        self.basename = basename
        self.settings = settings

    # -- values that fall back to process-wide state when p lacks them

    def setting(self, option: str, p_field: str | None, default: Any) -> Any:
        overrides = getattr(self.p, "override_settings", None) or {}
        if option in overrides:
            return overrides[option]
        if p_field and getattr(self.p, p_field, None) is not None:
            return getattr(self.p, p_field)
        return shared_opt(option, default, self.settings)

    def model_hash(self) -> Any:
        if hasattr(self.p, "sd_model_hash"):
            return self.p.sd_model_hash
        return getattr(getattr(shared, "sd_model", None), "sd_model_hash", None)

    def model_name(self) -> Any:
        if getattr(self.p, "sd_model_name", None):
            return self.p.sd_model_name
        info = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
        return getattr(info, "name_for_extra", None) or getattr(info, "model_name", None)

    def job_timestamp(self) -> Any:
        if hasattr(self.p, "job_timestamp"):
            return self.p.job_timestamp
        state_ts = getattr(getattr(shared, "state", None), "job_timestamp", None)
        return state_ts or datetime.datetime.now().strftime(self.default_time_format)

    def vae_filename(self) -> str:
        """The loaded VAE's file name up to its first dot ('NoneType' when none is loaded, as A1111 writes)."""
        name = getattr(self.p, "sd_vae_name", None)
        if not name:
            try:
                from modules import sd_vae  # A1111's VAE switcher module; absent until one is written

                name = sd_vae.loaded_vae_file
            except (ImportError, AttributeError):
                name = None
        if not name:
            return "NoneType"
        parts = os.path.basename(str(name)).split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]

    # -- prompt-derived tags

    def hasprompt(self, *args: str) -> str | None:
        if self.p is None or self.prompt is None:
            return None
        lower = self.prompt.lower()
        out = ""
        for arg in args:
            if arg == "":
                continue
            expected, _, default = arg.partition("|")
            if expected.lower() in lower:
                out += expected.lower()
            else:
                out += default
        return sanitize_filename_part(out)

    def prompt_no_style(self) -> str | None:
        if self.p is None or self.prompt is None:
            return None
        prompt = self.prompt
        try:
            style_prompts = shared.prompt_styles.get_style_prompts(self.p.styles)
        except AttributeError:
            style_prompts = []
        for style in style_prompts:
            if not style:
                continue
            for part in style.split("{prompt}"):
                prompt = prompt.replace(part, "").replace(", ,", ",").strip().strip(",")
            prompt = prompt.replace(style, "").strip().strip(",").strip()
        return sanitize_filename_part(prompt, replace_spaces=False)

    def prompt_words(self) -> str | None:
        words = [w for w in re_nonletters.split(self.prompt or "") if w] or ["empty"]
        max_words = shared_opt("directories_max_prompt_words", 8, self.settings)
        return sanitize_filename_part(" ".join(words[:max_words]), replace_spaces=False)

    def datetime(self, *args: str) -> str | None:
        time_format = args[0] if args and args[0] != "" else self.default_time_format
        zone = None
        if len(args) > 1:
            try:
                from zoneinfo import ZoneInfo

                zone = ZoneInfo(args[1])
            except Exception:
                zone = None  # unknown or malformed zone name: local time, as A1111
        now = datetime.datetime.now().astimezone(zone)
        try:
            formatted = now.strftime(time_format)
        except (ValueError, TypeError):
            formatted = now.strftime(self.default_time_format)
        return sanitize_filename_part(formatted, replace_spaces=False)

    def image_hash(self, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[0:length]

    def string_hash(self, text: str, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else 8
        return hashlib.sha256(text.encode()).hexdigest()[0:length]

    # -- expansion

    def apply(self, x: str) -> str:
        res = ""
        for m in re_pattern.finditer(x):
            text, pattern = m.groups()
            if pattern is None:
                res += text
                continue

            name, args = pattern, []
            while (am := re_pattern_arg.match(name)) is not None:
                name, arg = am.groups()
                args.insert(0, arg)

            fun = self.replacements.get(name.lower())
            replacement = None
            if fun is not None:
                try:
                    replacement = fun(self, *args)
                except Exception as e:
                    print(f"Error adding [{pattern}] to filename: {e!r}", file=sys.stderr)
            if replacement is NOTHING_AND_SKIP_PREVIOUS_TEXT:
                continue
            if replacement is not None:
                res += text + _no_separators(str(replacement))
                continue
            res += f"{text}[{pattern}]"
        return res
