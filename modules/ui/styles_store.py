"""The styles database the UI reads and writes (styles.csv in the data dir, or the --styles-file files)."""

from __future__ import annotations

import os

from modules import paths, shared
from modules.styles import DIVIDER_PATH, PromptStyle, StyleDatabase


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


def file_name() -> str:
    return os.path.basename(str(database().default_path))


def save(name: str, prompt: str, negative_prompt: str) -> str:
    """Add or replace a style and write its file (atomically). Raises ValueError with a readable reason."""
    name = (name or "").strip()
    if not name:
        raise ValueError("Type a name for the style first.")
    if name.startswith("#") or name == "None":
        raise ValueError(f"{name!r} cannot be used as a style name.")
    if not (prompt or "").strip() and not (negative_prompt or "").strip():
        raise ValueError("Both prompts are empty: there is nothing to save.")
    db = database()
    existing = db.styles.get(name)
    path = existing.path if existing is not None and existing.path != DIVIDER_PATH else str(db.default_path)
    db.styles[name] = PromptStyle(name, prompt or "", negative_prompt or "", path)
    db.save_styles()
    return name
