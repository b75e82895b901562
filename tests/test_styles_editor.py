"""The 🖌️ styles editor's server side (modules/ui/toprow.py over modules/ui/styles_store.py): Save creates or
updates a style in its own file, Delete removes it, and what a page sends is checked before it goes into a CSV."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from modules import shared
from modules.styles import StyleDatabase
from modules.ui import styles_store, toprow

HEADER = "name,prompt,negative_prompt\r\n"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StyleDatabase:
    (tmp_path / "styles.csv").write_text(HEADER + "oil,\"oil painting, {prompt}\",lowres\r\nsharp,sharp focus,\r\n",
                                         encoding="utf-8-sig", newline="")
    database = StyleDatabase(tmp_path / "styles.csv")
    monkeypatch.setattr(styles_store, "database", lambda: database)
    return database


def _choices(update: object) -> list[str]:
    return [value for _, value in update.choices]  # type: ignore[attr-defined]


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8-sig")  # as written: the csv module's \r\n line ends


def _file(db: StyleDatabase) -> str:
    return _read(Path(db.default_path))


def test_save_creates_a_style_and_lists_it(db: StyleDatabase) -> None:
    styles, selection, message = toprow.save_style("  watercolor ", "watercolor, {prompt}", "photo")
    message = html.unescape(message)
    assert "Saved style 'watercolor' to styles.csv" in message
    assert _choices(styles) == ["oil", "sharp", "watercolor"]
    assert selection.value == "watercolor"  # type: ignore[attr-defined]
    assert _file(db).endswith("watercolor,\"watercolor, {prompt}\",photo\r\n")
    assert StyleDatabase(db.default_path).styles["watercolor"].prompt == "watercolor, {prompt}"


def test_save_updates_only_that_style(db: StyleDatabase) -> None:
    before = _file(db)
    toprow.save_style("oil", "thick oil paint, {prompt}", "")
    after = _file(db)
    assert after != before
    assert after == HEADER + "oil,\"thick oil paint, {prompt}\",\r\nsharp,sharp focus,\r\n"
    assert toprow.select_style("oil") == ("thick oil paint, {prompt}", "")


def test_delete_removes_the_style_from_the_file_and_the_choices(db: StyleDatabase) -> None:
    styles, selection, message = toprow.delete_style("oil")
    message = html.unescape(message)
    assert "Deleted style 'oil' from styles.csv" in message
    assert _choices(styles) == ["sharp"] and _choices(selection) == ["sharp"]
    assert _file(db) == HEADER + "sharp,sharp focus,\r\n"
    assert styles_store.names() == ["sharp"]


def test_a_cancelled_delete_changes_nothing(db: StyleDatabase) -> None:
    before = _file(db)
    assert all(isinstance(part, type(toprow.gr.skip())) for part in toprow.delete_style(None))
    assert _file(db) == before


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_name_is_refused_with_a_message(db: StyleDatabase, name: str) -> None:
    before = _file(db)
    for result in (toprow.save_style(name, "x", ""), toprow.delete_style(name)):
        assert "Type a name for the style first." in result[2] and "class='error'" in result[2]
    assert _file(db) == before


def test_deleting_a_style_that_is_gone_says_so(db: StyleDatabase) -> None:
    toprow.delete_style("oil")
    message = html.unescape(toprow.delete_style("oil")[2])
    assert "There is no style 'oil' (already deleted?)." in message and "class='error'" in message


@pytest.mark.parametrize(("name", "prompt", "reason"), [
    ("two\nlines", "x", "must be one line"),
    ("x" * (styles_store.MAX_NAME_CHARS + 1), "x", "at most 200 characters"),
    ("#comment", "x", "cannot be used as a style name"),
    ("long", "y" * 51, "more than the limit 50 (setting api_max_prompt_chars)"),
    ("bad", "\ud800", "lone surrogate"),
])
def test_hostile_input_is_refused_and_not_written(db: StyleDatabase, monkeypatch: pytest.MonkeyPatch,
                                                  name: str, prompt: str, reason: str) -> None:
    monkeypatch.setattr(shared.opts, "api_max_prompt_chars", 50, raising=False)
    before = _file(db)
    assert reason in toprow.save_style(name, prompt, "")[2]
    assert _file(db) == before


def test_a_style_in_the_second_file_is_updated_and_deleted_there(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    main, extra = tmp_path / "styles.csv", tmp_path / "extra.csv"
    main.write_text(HEADER + "a,A,\r\n", encoding="utf-8-sig", newline="")
    extra.write_text(HEADER + "b,B,\r\n", encoding="utf-8-sig", newline="")
    db = StyleDatabase([main, extra])
    monkeypatch.setattr(styles_store, "database", lambda: db)

    assert "to extra.csv" in toprow.save_style("b", "B2", "nb")[2]
    assert _read(extra) == HEADER + "b,B2,nb\r\n"
    assert _read(main) == HEADER + "a,A,\r\n"

    assert "from extra.csv" in toprow.delete_style("b")[2]  # its last style: the file is written empty
    assert _read(extra) == HEADER
    assert "b" not in StyleDatabase([main, extra]).styles
