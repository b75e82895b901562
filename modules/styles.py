"""Prompt styles from A1111's `styles.csv` (columns name,prompt,negative_prompt), possibly from several files.

A style's text either holds a `{prompt}` placeholder that the user's prompt replaces, or it is appended with ", ".
Infotext pasting runs this backwards (extract_styles_from_prompt) to recover which styles made a prompt.

styles.csv is often opened in a spreadsheet, which runs a cell starting with = + - @ (or tab, CR) as a
formula: `=HYPERLINK(...)` in a shared style could leak data or run commands. So such cells are written with
a leading `'` (OWASP's advice for CSV injection) and that `'` is removed again on reading, so a round trip
gives back the same text. A cell that already starts with `'`s followed by one of those characters gets one
more `'`, so a prompt really starting with `'=` survives too. Other cells (most prompts, and every
negative prompt that does not start with "-") are written exactly as they are. A1111 itself would show the
added `'` as part of the prompt, where it does no harm.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path

from modules import atomic_files

log = logging.getLogger(__name__)

DIVIDER_PATH = "do_not_save"  # the path of the separator entries shown between files in the styles dropdown


class PromptStyle(typing.NamedTuple):
    name: str
    prompt: str | None
    negative_prompt: str | None
    path: str | None = None


def merge_prompts(style_prompt: str | None, prompt: str) -> str:
    """Put `prompt` into one style's text."""
    style_prompt = style_prompt or ""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, styles: Iterable[str | None]) -> str:
    """Apply style texts (not names) in order."""
    for style in styles:
        prompt = merge_prompts(style, prompt)
    return prompt


def extract_style_text_from_prompt(style_text: str | None, prompt: str) -> tuple[bool, str]:
    """Undo merge_prompts for one style text: (True, the prompt without it) or (False, the prompt unchanged).

    "masterpiece" and "1girl, masterpiece" -> (True, "1girl");
    "masterpiece, {prompt}" and "masterpiece, 1girl" -> (True, "1girl").
    """
    stripped_prompt = prompt.strip()
    stripped_style = (style_text or "").strip()

    if "{prompt}" in stripped_style:
        parts = stripped_style.split("{prompt}")
        if len(parts) != 2:  # several placeholders: the original prompt cannot be recovered
            return False, prompt
        left, right = parts
        if stripped_prompt.startswith(left) and stripped_prompt.endswith(right):
            return True, stripped_prompt[len(left) : len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[: len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest

    return False, prompt


def extract_original_prompts(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    """If both of the style's texts are found in the prompts, (True, prompt, negative) with them removed."""
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt

    found, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not found:
        return False, prompt, negative_prompt
    found, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not found:
        return False, prompt, negative_prompt
    return True, positive, negative


def _is_pattern(path: str | Path) -> bool:
    name = os.path.basename(str(path))
    return "*" in name or "?" in name


def _expand(pattern: str | Path) -> list[Path]:
    folder, name = os.path.split(str(pattern))
    return sorted(Path(folder or ".").glob(name))


# What a spreadsheet would take for the start of a formula, after any number of escaping quotes.
_FORMULA_START = re.compile(r"'*[=+\-@\t\r]")


def escape_cell(text: str) -> str:
    """`text` made safe for spreadsheets: one `'` more in front when it starts like a formula."""
    return "'" + text if _FORMULA_START.match(text) else text


def unescape_cell(text: str) -> str:
    """Undo escape_cell: the one added `'` goes."""
    return text[1:] if text.startswith("'") and _FORMULA_START.match(text) else text


def _read_rows(path: Path) -> Iterable[dict[str | None, typing.Any]]:
    with open(path, encoding="utf-8-sig", newline="") as file:
        for row in csv.DictReader(file, skipinitialspace=True):
            yield {key: unescape_cell(value) if isinstance(value, str) else value for key, value in row.items()}


class StyleDatabase:
    """All styles from the given files (or glob patterns such as `styles*.csv`), keyed by name."""

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        self.no_style = PromptStyle("None", "", "", None)
        self.styles: dict[str, PromptStyle] = {}
        self.paths: list[str | Path] = [paths] if isinstance(paths, str | Path) else list(paths)
        self.all_styles_files: list[Path] = []
        self.prompt_fields = [field for field in PromptStyle._fields if field != "path"]

        first = self.paths[0]
        if _is_pattern(first):
            # new styles go to the first file the pattern matches, else to styles.csv next to it
            matches = _expand(first)
            self.default_path = matches[0] if matches else Path(os.path.dirname(str(first)), "styles.csv")
            self.paths.insert(0, self.default_path)
        else:
            self.default_path = Path(first)

        self.reload()

    def reload(self) -> None:
        """Read every styles file again."""
        self.styles.clear()

        files: list[Path] = []
        for pattern in self.paths:
            files.extend(_expand(pattern) if _is_pattern(pattern) else [Path(pattern)])
        self.all_styles_files = list(dict.fromkeys(files))

        for styles_file in self.all_styles_files:
            if len(files) > 1:
                # a separator entry in the dropdown, e.g. "--------------- STYLES ---------------"
                divider = f" {styles_file.stem.upper()} ".center(40, "-")
                self.styles[divider] = PromptStyle(divider, None, None, DIVIDER_PATH)
            if styles_file.is_file():
                self.load_from_csv(styles_file)

    def load_from_csv(self, path: str | Path) -> None:
        """Add the styles in one file. Rows without a name or prompt are skipped with a warning."""
        path = Path(path)
        try:
            for line, row in enumerate(_read_rows(path), start=2):
                self._add_row(path, line, row)
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            log.warning("Error loading styles from %s: %s", path, e)

    def _add_row(self, path: Path, line: int, row: dict[str | None, typing.Any]) -> None:
        name = row.get("name")
        prompt = row.get("prompt", row.get("text"))  # "text" is the column name of old files
        if name is not None and name.startswith("#"):
            return  # a comment row
        if not name or prompt is None:
            log.warning("Skipping style on line %d of %s: it needs a name and a prompt column", line, path)
            return
        if None in row:
            log.warning("Style %r on line %d of %s has extra columns (an unquoted comma?)", name, line, path)
        self.styles[name] = PromptStyle(name, prompt, row.get("negative_prompt") or "", str(path))

    def get_style_paths(self) -> set[str]:
        """Every file that styles are saved to; styles without a file are given the default one."""
        for style in list(self.styles.values()):
            if not style.path:
                self.styles[style.name] = style._replace(path=str(self.default_path))

        paths = {str(self.default_path)} | {style.path for style in self.styles.values() if style.path}
        paths.discard(DIVIDER_PATH)
        return paths

    def get_style_prompts(self, styles: Iterable[str]) -> list[str | None]:
        return [self.styles.get(name, self.no_style).prompt for name in styles]

    def get_negative_style_prompts(self, styles: Iterable[str]) -> list[str | None]:
        return [self.styles.get(name, self.no_style).negative_prompt for name in styles]

    def apply_styles_to_prompt(self, prompt: str, styles: Iterable[str]) -> str:
        """Apply the named styles' prompts in order; unknown names are ignored."""
        return apply_styles_to_prompt(prompt, self.get_style_prompts(styles))

    def apply_negative_styles_to_prompt(self, prompt: str, styles: Iterable[str]) -> str:
        return apply_styles_to_prompt(prompt, self.get_negative_style_prompts(styles))

    def save_styles(self, path: str | None = None, also: Iterable[str] = ()) -> None:
        """Write each file's styles back, and the files in `also` (e.g. one whose last style was deleted). `path`
        is ignored (kept for A1111 callers).

        Each file is written to a temporary name and renamed over the old one, so a crash never leaves a
        half-written file; the previous version is kept as `<file>.bak`.
        """
        for style_path in self.get_style_paths() | set(also):
            rows = [
                {field: escape_cell(getattr(style, field) or "") for field in self.prompt_fields}
                for style in self.styles.values()
                if style.path == style_path
            ]
            _write_atomic(Path(style_path), self.prompt_fields, rows)

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """Find the styles that produced these prompts (used when pasting infotext).

        Returns the style names in the order they were applied, and the prompts with the styles' text removed.
        """
        extracted: list[str] = []
        candidates = list(self.styles.values())
        while True:
            for style in candidates:
                found, new_prompt, new_negative = extract_original_prompts(style, prompt, negative_prompt)
                if found:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    extracted.append(style.name)
                    break
            else:
                break
        # the last style applied is the outermost, so it was found first
        return list(reversed(extracted)), prompt, negative_prompt


def _write_atomic(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.copy2(path, path.with_name(path.name + ".bak"))
    text = io.StringIO(newline="")  # the csv module writes its own \r\n line ends
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    # utf-8-sig like A1111, so spreadsheet programs open the file with the right encoding
    atomic_files.atomic_write_text(path, text.getvalue(), encoding="utf-8-sig")
