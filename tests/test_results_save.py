"""The results panel's 💾 Save and 🗃️ Zip (modules/results_save.py, modules/ui/results.py) without a browser."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from modules import paths, results_save
from modules.ui import results

INFO = ("a red fox\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x48, "
        "Model hash: abc123, Model: tiny")


def picture(path: Path, seed: int) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFO.format(seed=seed))
    Image.new("RGB", (64, 48), (seed % 256, 10, 10)).save(path, pnginfo=info)
    return str(path)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A data dir whose outputs/ holds two pictures, the gallery's value for them, and settings."""
    monkeypatch.setattr(paths, "data_path", str(tmp_path))
    out = tmp_path / "outputs" / "txt2img-images"
    out.mkdir(parents=True)
    gallery = [(picture(out / "00000-11.png", 11), None), (picture(out / "00001-22.png", 22), None)]
    settings = {"outdir_save": "log/images", "save_selected_only": True, "samples_filename_pattern": "[seed]",
                "save_images_add_number": True, "use_save_to_dirs_for_ui": False, "save_txt": False}
    info_json = json.dumps({"infotexts": [INFO.format(seed=11), INFO.format(seed=22)]})
    return tmp_path, gallery, settings, info_json


def save(setup, index=0, make_zip=False, gallery=None, **changes):
    tmp_path, default_gallery, settings, info_json = setup
    roots = [str(tmp_path / "outputs")]
    return results_save.save_files(info_json, default_gallery if gallery is None else gallery, index, make_zip,
                                   settings={**settings, **changes}, roots=roots)


def log_rows(tmp_path: Path) -> list[list[str]]:
    with open(tmp_path / "log" / "images" / "log.csv", encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_save_copies_only_the_selected_picture_with_its_infotext_and_a_log_row(setup):
    tmp_path = setup[0]
    saved = save(setup, index=1)
    assert len(saved.files) == 1 and not saved.refused and saved.zip_file is None
    name = Path(saved.files[0])
    assert name.parent == tmp_path / "log" / "images" and name.name == "00000-22.png"
    with Image.open(name) as im:
        assert im.info["parameters"] == INFO.format(seed=22)  # the picture keeps its infotext
    rows = log_rows(tmp_path)
    assert rows[0] == results_save.LOG_FIELDS
    assert rows[1:] == [["a red fox", "22", "64", "48", "Euler a", "7", "4", "00000-22.png", "blurry", "tiny",
                         "abc123"]]


def test_save_all_when_save_selected_only_is_off_appends_one_row_each(setup):
    tmp_path = setup[0]
    save(setup, index=1)
    saved = save(setup, index=1, save_selected_only=False)
    assert [Path(f).name for f in saved.files] == ["00001-11.png", "00002-22.png"]
    rows = log_rows(tmp_path)
    assert rows.count(results_save.LOG_FIELDS) == 1  # the header once, on the new file only
    assert [r[7] for r in rows[1:]] == ["00000-22.png", "00001-11.png", "00002-22.png"]


def test_an_out_of_range_index_saves_the_first_picture(setup):
    assert Path(save(setup, index=9).files[0]).name == "00000-11.png"


def test_a_log_with_other_columns_is_set_aside_not_overwritten(setup):
    tmp_path = setup[0]
    folder = tmp_path / "log" / "images"
    folder.mkdir(parents=True)
    (folder / "log.csv").write_text("prompt,seed\nold,1\n", encoding="utf-8")
    save(setup)
    save(setup)  # same header now: appended, nothing else renamed
    aside = [p for p in folder.glob("log-*.csv")]
    assert len(aside) == 1 and aside[0].read_text(encoding="utf-8") == "prompt,seed\nold,1\n"
    rows = log_rows(tmp_path)
    assert rows[0] == results_save.LOG_FIELDS and len(rows) == 3


def test_zip_holds_the_saved_pictures(setup):
    saved = save(setup, make_zip=True, save_selected_only=False)
    assert saved.zip_file is not None and Path(saved.zip_file).name == "00000-11.zip"
    with zipfile.ZipFile(saved.zip_file) as z:
        assert z.namelist() == ["00000-11.png", "00001-22.png"]
        assert z.read("00001-22.png") == Path(saved.files[1]).read_bytes()


def test_a_file_outside_the_outputs_is_refused_by_name(setup, tmp_path):
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    foreign = picture(secret / "private.png", 5)
    link = tmp_path / "outputs" / "link.png"
    link.symlink_to(foreign)  # a link inside the outputs that points out of them
    saved = save(setup, gallery=[(foreign, None), (str(link), None), ("/etc/passwd", None)],
                 save_selected_only=False)
    assert saved.files == [] and saved.refused == ["private.png", "link.png", "passwd"]
    assert not (tmp_path / "log" / "images" / "log.csv").exists()


def test_the_button_handler_says_where_files_went_and_refuses_visibly(setup, monkeypatch):
    tmp_path, gallery, settings, info_json = setup
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-cache"))
    monkeypatch.setattr(results_save, "allowed_roots", lambda s=None: [str(tmp_path / "outputs")])
    monkeypatch.setattr(results_save.shared, "opts", type("Opts", (), settings)())
    files, log = results.save_clicked(info_json, gallery, 0, True)
    assert "Saved: <code>log/images/00000-11.zip, log/images/00000-11.png</code>" in log
    offered = [f["path"] for f in files.value]  # the download comes from gradio's cache, zip first
    assert len(offered) == 2 and all(p.startswith(str(tmp_path / "gradio-cache")) for p in offered)
    assert offered[0].endswith("00000-11.zip") and zipfile.is_zipfile(offered[0])

    _, log = results.save_clicked(info_json, [("/etc/<b>passwd", None)], 0, False)
    assert "class='error'" in log and "&lt;b&gt;passwd" in log and "Saved" not in log

    files, log = results.save_clicked(info_json, [], 0, False)
    assert "Nothing to save" in log and files.visible is False
