"""The styles database the UI reads and writes (styles.csv in the data dir, or the --styles-file files).

💾 (save the prompts as a style) and the 🖌️ styles editor both go through `save` and `delete`, which check what
a page sends before it is written into a CSV file: a name is one line of at most MAX_NAME_CHARS characters,
prompts are no longer than the api_max_prompt_chars setting, and all of it is valid Unicode."""

from __future__ import annotations

import os
import re
import threading

from modules import paths, prompt_parser, shared
from modules.styles import DIVIDER_PATH, PromptStyle, StyleDatabase

MAX_NAME_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_lock = threading.Lock()  # two pages saving at once must not interleave their changes and writes


def database() -> StyleDatabase:
    """`shared.prompt_styles`, created here when the engine has not made one (styles.csv in the data dir)."""
    db = getattr(shared, "prompt_styles", None)
    if db is None:
        files = list(getattr(shared.cmd_opts, "styles_file", None) or []) or [paths.data_file("styles.csv")]
        db = StyleDatabase(files)
        shared.prompt_styles = db
    return db


def names() -> list[str]:
    return [name for name, style in database().styles.items() if style.path != DIVIDER_PATH]


def file_name(path: str | None = None) -> str:
    return os.path.basename(path or str(database().default_path))


def find(name: str | None) -> PromptStyle | None:
    """The style called `name` (not a divider), or None."""
    style = database().styles.get((name or "").strip())
    return style if style is not None and style.path != DIVIDER_PATH else None


def check_name(name: str | None) -> str:
    """`name` stripped, or ValueError saying why it cannot name a style."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Type a name for the style first.")
    if name.startswith("#") or name == "None":
        raise ValueError(f"{name!r} cannot be used as a style name.")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"A style name can be at most {MAX_NAME_CHARS} characters long.")
    if _CONTROL.search(name):
        raise ValueError("A style name must be one line, without control characters.")
    problem = prompt_parser.prompt_text_problem(name)
    if problem is not None:
        raise ValueError(f"Style name: {problem}")
    return name


def _check_text(label: str, text: str) -> None:
    most = int(getattr(shared.opts, "api_max_prompt_chars", 20000))
    if len(text) > most:
        raise ValueError(f"{label}: {len(text)} characters is more than the limit {most} (setting "
                         "api_max_prompt_chars).")
    problem = prompt_parser.prompt_text_problem(text)
    if problem is not None:
        raise ValueError(f"{label}: {problem}")


def save(name: str, prompt: str, negative_prompt: str) -> str:
    """Add or replace a style and write its file (atomically); a replaced style stays in the file it came from.
    Returns the name. Raises ValueError with a readable reason."""
    name = check_name(name)
    prompt, negative_prompt = prompt or "", negative_prompt or ""
    if not prompt.strip() and not negative_prompt.strip():
        raise ValueError("Both prompts are empty: there is nothing to save.")
    _check_text("Prompt", prompt)
    _check_text("Negative prompt", negative_prompt)
    with _lock:
        db = database()
        existing = find(name)
        path = existing.path if existing is not None and existing.path else str(db.default_path)
        db.styles[name] = PromptStyle(name, prompt, negative_prompt, path)
        db.save_styles()
    return name


def delete(name: str) -> str:
    """Remove a style and rewrite its file (atomically). Returns the file's name; ValueError if there is none."""
    name = check_name(name)
    with _lock:
        db = database()
        style = find(name)
        if style is None:
            raise ValueError(f"There is no style {name!r} (already deleted?).")
        del db.styles[name]
        path = style.path or str(db.default_path)
        db.save_styles(also=[path])  # also when it was the file's last style
    return file_name(path)
