"""The Extra Networks panel without a browser: Lora and Textual Inversion pages listed from temp folders, card
HTML escaping, the preview route, the edit dialog's save, dimming by model family, sort and folder filter, and
the page script's toggle logic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import fastapi
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from modules import shared, ui_extra_networks
from modules.networks import files
from modules.ui import (
    extra_networks,
    extra_networks_cards,
    extra_networks_editor,
    extra_networks_pages,
    extra_networks_routes,
)
from modules.ui.extra_networks_pages import LoraPage, TextualInversionPage, format_weight

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "<img src=x onerror=alert(1)>\"'"


def write_lora(path: Path, **metadata: str) -> Path:
    """A tiny LoRA file with kohya-style metadata (ss_output_name, ss_base_model_version, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2)}
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def write_preview(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    Image.new("RGB", (8, 8), color).save(path)
    return path


@pytest.fixture
def lora_dir(tmp_path, monkeypatch):
    """An empty models/Lora (and no LyCORIS folder), the pages registered, no model loaded, default settings."""
    root = tmp_path / "models" / "Lora"
    root.mkdir(parents=True)
    monkeypatch.setattr(shared.cmd_opts, "lora_dir", str(root))
    monkeypatch.setattr(shared.cmd_opts, "lyco_dir_backcompat", str(tmp_path / "models" / "LyCORIS"))
    monkeypatch.setattr(shared, "sd_model", None)
    monkeypatch.setattr(ui_extra_networks, "extra_pages", [])
    monkeypatch.setattr(extra_networks, "_cards", {})
    saved = dict(shared.opts.data)
    extra_networks_pages.register_default_pages()
    yield root
    shared.opts.data.clear()
    shared.opts.data.update(saved)
    files.available_networks.clear()
    files.available_network_aliases.clear()


def lora_page() -> LoraPage:
    page = ui_extra_networks.find_page("lora")
    assert isinstance(page, LoraPage)
    return page


def cards_by_name(page, rescan: bool = True) -> dict[str, extra_networks_cards.Card]:
    return {c.name: c for c in extra_networks.read_cards(page, rescan=rescan)}


def test_lora_files_become_cards_with_alias_weight_activation_and_negative_text(lora_dir):
    write_lora(lora_dir / "film.safetensors", ss_output_name="filmgrain", ss_base_model_version="sd_v1")
    write_lora(lora_dir / "plain.safetensors")
    (lora_dir / "film.json").write_text(json.dumps({"preferred weight": 0.6, "activation text": "grainy film",
                                                    "negative text": "clean", "description": "35mm look"}))
    write_preview(lora_dir / "film.preview.png")

    cards = cards_by_name(lora_page())
    assert set(cards) == {"film", "plain"}
    film, plain = cards["film"], cards["plain"]
    assert film.prompt == "<lora:filmgrain:0.6> grainy film"
    assert film.negative_prompt == "clean" and film.description == "35mm look"
    assert film.preview_url.startswith("sd_extra_networks/preview?page=lora&item=film&mtime=")
    assert plain.prompt == "<lora:plain:1>" and plain.negative_prompt == "" and plain.preview_url is None
    assert not film.allow_negative

    # no preferred weight: the setting's default multiplier
    shared.opts.data["extra_networks_default_multiplier"] = 0.75
    assert cards_by_name(lora_page(), rescan=False)["plain"].prompt == "<lora:plain:0.75>"
    # the setting that inserts file names instead of aliases
    shared.opts.data["lora_preferred_name"] = "Filename"
    assert cards_by_name(lora_page(), rescan=False)["film"].prompt.startswith("<lora:film:0.6>")


def test_weights_are_written_as_prompts_show_them():
    assert [format_weight(w) for w in (1.0, 0.6, 0.75, -0.5, 1e-7, 2.0)] == ["1", "0.6", "0.75", "-0.5", "0", "2"]


def test_refresh_button_rescans_the_folder(lora_dir):
    page = lora_page()
    assert cards_by_name(page) == {}
    write_lora(lora_dir / "new one.safetensors")
    assert list(cards_by_name(page, rescan=False)) == []  # listing alone does not rescan
    assert list(cards_by_name(page, rescan=True)) == ["new one"]


def test_hostile_names_and_descriptions_are_escaped(lora_dir):
    name = "<img src=x onerror=alert(1)>\"'"
    write_lora(lora_dir / f"{name}.safetensors", ss_output_name=f"{name}<script>alert(2)</script>")
    (lora_dir / f"{name}.json").write_text(json.dumps({"description": "<script>alert(3)</script> & more",
                                                       "activation text": "\"><svg onload=alert(4)>"}))
    write_preview(lora_dir / f"{name}.png")
    page = lora_page()
    cards = extra_networks.read_cards(page, rescan=True)
    html_text = extra_networks_cards.view("txt2img", page, cards, "", "All", "Name", "Ascending")
    for raw in ("<img src=x", "<script>", "<svg", "onerror=alert(1)>\""):
        assert raw not in html_text
    assert "&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;" in html_text
    assert "&lt;script&gt;alert(3)&lt;/script&gt; &amp; more" in html_text
    # the preview URL carries the name only as an encoded query value
    assert "item=%3Cimg+src%3Dx" in html_text
    # the editor's title is escaped too
    assert "<img" not in extra_networks_editor.open_values(page, name)[0]


def test_preview_route_serves_only_pictures_inside_the_page_folders(lora_dir, tmp_path, monkeypatch):
    write_lora(lora_dir / "sub" / "good.safetensors")
    picture = write_preview(lora_dir / "sub" / "good.preview.png")
    write_lora(lora_dir / "linked.safetensors")
    secret = write_preview(tmp_path / "secret.png", (1, 2, 3))
    os.symlink(secret, lora_dir / "linked.preview.png")  # a link inside the folder to a picture outside
    page = lora_page()
    extra_networks.read_cards(page, rescan=True)
    client = TestClient(fastapi.FastAPI(routes=extra_networks_routes.routes(lambda request: True)))

    response = client.get("/sd_extra_networks/preview", params={"page": "lora", "item": "good"})
    assert response.status_code == 200 and response.content == picture.read_bytes()
    assert response.headers["content-type"] == "image/png"

    def status(**params: str) -> int:
        return client.get("/sd_extra_networks/preview", params=params).status_code

    assert status(page="lora", item="linked") == 403
    for item in ("../../secret", str(secret), "sub/good", "good.preview.png", "", "\x00"):
        assert status(page="lora", item=item) == 404
    assert status(page="../lora", item="good") == 404
    assert status(page="nothing", item="good") == 404
    assert client.get("/sd_extra_networks/thumb", params={"filename": str(secret)}).status_code == 404

    # an item whose preview (say from an extension page) lies outside its folders, or is not a picture
    page.items["good"]["preview"] = str(secret)
    assert status(page="lora", item="good") == 403
    script = lora_dir / "x.svg"
    script.write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    page.items["good"]["preview"] = str(script)
    assert status(page="lora", item="good") == 403

    locked = TestClient(fastapi.FastAPI(routes=extra_networks_routes.routes(lambda request: False)))
    assert locked.get("/sd_extra_networks/preview", params={"page": "lora", "item": "good"}).status_code == 401


def test_edit_dialog_saves_good_values_and_refuses_bad_ones_with_the_reason(lora_dir):
    lora = write_lora(lora_dir / "style.safetensors", ss_base_model_version="sd_v1")
    page = lora_page()
    extra_networks.read_cards(page, rescan=True)
    fields = list(page.editable_fields)
    assert fields == ["description", "activation text", "preferred weight", "negative text", "sd version", "notes"]

    opened = extra_networks_editor.open_values(page, "style")
    assert opened[1:1 + len(fields)] == ["", "", 0.0, "", "Unknown", ""]
    good = ["Soft watercolor", "watercolor", 0.8, "photo", "SDXL", "from a friend"]
    assert extra_networks_editor.save_values(page, "style", good) is None
    on_disk = json.loads(lora.with_suffix(".json").read_text())
    assert on_disk == {"description": "Soft watercolor", "activation text": "watercolor", "preferred weight": 0.8,
                       "negative text": "photo", "sd version": "SDXL", "notes": "from a friend"}
    assert extra_networks_editor.open_values(page, "style")[1:1 + len(fields)] == good
    card = cards_by_name(page, rescan=False)["style"]
    assert card.prompt == "<lora:style:0.8> watercolor" and card.description == "Soft watercolor"

    before = lora.with_suffix(".json").read_text()
    bad_weight = extra_networks_editor.save_values(page, "style", ["x", "", 500, "", "SD1", ""])
    assert bad_weight is not None and "preferred weight" in bad_weight and "between -100 and 100" in bad_weight
    bad_version = extra_networks_editor.save_values(page, "style", ["x", "", 1, "", "SD9", ""])
    assert bad_version is not None and "sd version" in bad_version
    too_long = extra_networks_editor.save_values(page, "style", ["x" * 20_001, "", 1, "", "SD1", ""])
    assert too_long is not None and "description" in too_long
    assert lora.with_suffix(".json").read_text() == before  # nothing written on refusal

    # an emptied weight box means "the default multiplier"
    assert extra_networks_editor.save_values(page, "style", ["", "", None, "", "Unknown", ""]) is None
    assert json.loads(lora.with_suffix(".json").read_text())["preferred weight"] == 0.0

    gone = extra_networks_editor.save_values(page, "missing", ["", "", 0, "", "Unknown", ""])
    assert gone is not None and "refresh" in gone
    assert "refresh" in extra_networks_editor.open_values(page, "missing")[-2]


def test_cards_for_another_model_family_are_dimmed(lora_dir, monkeypatch):
    write_lora(lora_dir / "for_sd1.safetensors", ss_base_model_version="sd_v1")
    write_lora(lora_dir / "for_xl.safetensors", ss_base_model_version="sdxl_base_v1-0")
    write_lora(lora_dir / "unknown.safetensors")
    write_lora(lora_dir / "marked.safetensors")
    (lora_dir / "marked.json").write_text(json.dumps({"sd version": "SD1"}))  # the sidecar's choice wins
    page = lora_page()

    def dimmed() -> set[str]:
        return {c.name for c in extra_networks.read_cards(page, rescan=True) if c.dimmed}

    assert dimmed() == set()  # no model loaded
    monkeypatch.setattr(shared, "sd_model", SimpleNamespace(is_sdxl=True, is_sd2=False, is_sd1=False))
    assert dimmed() == {"for_sd1", "marked"}
    cards = extra_networks.read_cards(page)
    html_text = extra_networks_cards.view("txt2img", page, cards, "", "All", "Name", "Ascending")
    assert '<div class="card dimmed" data-name="for_sd1"' in html_text
    assert "made for SD1; the loaded model is SDXL" in html_text
    assert '<div class="card" data-name="for_xl"' in html_text
    monkeypatch.setattr(shared, "sd_model", SimpleNamespace(is_sdxl=False, is_sd2=False, is_sd1=True))
    assert dimmed() == {"for_xl"}
    shared.opts.data["lora_show_all"] = True
    assert dimmed() == set()


def test_search_sort_and_folder_filter(lora_dir):
    for index, rel in enumerate(["b.safetensors", "chars/a.safetensors", "chars/anime/c10.safetensors",
                                 "chars/anime/c9.safetensors", "styles/d.safetensors"]):
        path = write_lora(lora_dir / rel)
        os.utime(path, (1_000_000 + index * 10, 1_000_000 + (5 - index) * 10))  # modified: reverse order
    (lora_dir / "styles" / "d.json").write_text(json.dumps({"description": "Ink Wash painting"}))
    page = lora_page()
    cards = extra_networks.read_cards(page, rescan=True)

    assert extra_networks_cards.folder_choices(cards) == ["All", "chars", "chars/anime", "styles"]

    def names(search: str = "", folder: str = "All", sort: str = "Name", order: str = "Ascending") -> list[str]:
        chosen = extra_networks_cards.filter_cards(cards, search, folder)
        return [c.name for c in extra_networks_cards.sort_cards(chosen, sort, order)]

    assert names() == ["a", "b", "c9", "c10", "d"]  # natural order: c9 before c10
    assert names(order="Descending") == ["d", "c10", "c9", "b", "a"]
    assert names(sort="Date Modified") == ["d", "c9", "c10", "a", "b"]
    assert names(sort="Date Modified", order="Descending") == ["b", "a", "c10", "c9", "d"]
    assert names(sort="Path")[:2] == ["b", "a"]  # b sits at the top of the folder, before chars/
    assert sorted(names(sort="Date Created")) == ["a", "b", "c10", "c9", "d"]  # the file system's times
    assert names(folder="chars") == ["a", "c9", "c10"]  # the folder and below it
    assert names(folder="chars/anime") == ["c9", "c10"]
    assert names(folder="styles") == ["d"]
    assert names(search="INK wash") == ["d"]  # description, any case, every word
    assert names(search="anime") == ["c9", "c10"]  # the folder is searchable
    assert names(search="c1", folder="chars") == ["c10"]
    assert names(search="nothing") == []
    html_text = extra_networks_cards.view("txt2img", page, cards, "nothing", "All", "Name", "Ascending")
    assert "No card matches" in html_text and 'data-total="5" data-shown="0"' in html_text
    empty = extra_networks_cards.view("txt2img", page, [], "", "All", "Name", "Ascending")
    assert "put files into Lora" in empty


class FakeEmbedding:
    def __init__(self, name: str, filename: str, shape: int = 768):
        self.name, self.filename, self.shape, self.vectors = name, filename, shape, 1


class FakeEmbeddingDb:
    def __init__(self, folder: Path):
        self.folder = folder
        self.word_embeddings: dict[str, FakeEmbedding] = {}
        self.skipped_embeddings: dict[str, FakeEmbedding] = {}
        self.loads: list[bool] = []

    def skipped_reasons(self) -> dict[str, str]:
        return {name: "needs an SDXL model" for name in self.skipped_embeddings}

    def load_textual_inversion_embeddings(self, force_reload: bool = False) -> None:
        self.loads.append(force_reload)
        self.word_embeddings = {p.stem: FakeEmbedding(p.stem, str(p)) for p in sorted(self.folder.glob("*.pt"))}
        self.skipped_embeddings = {p.stem: FakeEmbedding(p.stem, str(p), 1280)
                                   for p in sorted(self.folder.glob("*.bin"))}


def test_textual_inversion_page_lists_embeddings_and_dims_skipped_ones(lora_dir, tmp_path, monkeypatch):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    monkeypatch.setattr(shared.cmd_opts, "embeddings_dir", str(folder))
    (folder / "bad-hands.pt").write_bytes(b"x")
    (folder / "xl-only.bin").write_bytes(b"x")
    write_preview(folder / "bad-hands.preview.png")
    db = FakeEmbeddingDb(folder)
    monkeypatch.setattr(extra_networks_pages, "embedding_db", lambda: db)
    page = ui_extra_networks.find_page("textual_inversion")
    assert isinstance(page, TextualInversionPage) and page.title == "Textual Inversion"

    cards = cards_by_name(page, rescan=False)
    assert db.loads == [False]  # a look at the page reads new or changed files only
    assert set(cards) == {"bad-hands", "xl-only"}
    assert cards["bad-hands"].prompt == "bad-hands" and cards["bad-hands"].allow_negative
    assert not cards["bad-hands"].dimmed and cards["xl-only"].dimmed
    assert cards["xl-only"].dimmed_reason == "needs an SDXL model"
    assert cards["bad-hands"].preview_url is not None

    (folder / "new.pt").write_bytes(b"x")
    assert "new" in cards_by_name(page, rescan=True) and True in db.loads[1:]  # refresh: everything again

    # description and notes are what the dialog edits for embeddings
    assert page.editable_fields == ("description", "notes")
    assert extra_networks_editor.save_values(page, "bad-hands", ["fixes hands", "v2"]) is None
    assert json.loads((folder / "bad-hands.json").read_text()) == {"description": "fixes hands", "notes": "v2"}
    assert cards_by_name(page, rescan=False)["bad-hands"].description == "fixes hands"
    client = TestClient(fastapi.FastAPI(routes=extra_networks_routes.routes(lambda request: True)))
    ok = client.get("/sd_extra_networks/preview", params={"page": "textual_inversion", "item": "bad-hands"})
    assert ok.status_code == 200


def test_textual_inversion_page_is_empty_without_a_database(lora_dir, monkeypatch):
    monkeypatch.setattr(extra_networks_pages, "embedding_db", lambda: None)
    page = ui_extra_networks.find_page("textual_inversion")
    assert extra_networks.read_cards(page, rescan=True) == []


def test_an_extension_page_with_a1111_items(lora_dir, tmp_path, monkeypatch):
    folder = tmp_path / "ext-models"
    folder.mkdir()
    model = folder / "thing.bin"
    model.write_bytes(b"x")
    write_preview(folder / "thing.png")
    outside = write_preview(tmp_path / "outside.png")

    class Page(ui_extra_networks.ExtraNetworksPage):
        def __init__(self):
            super().__init__("My Things")

        def allowed_directories_for_previews(self):
            return [str(folder)]

        def list_items(self):
            q = ui_extra_networks.quote_js
            yield {"name": "thing", "filename": str(model), "description": "a thing",
                   "prompt": q("<thing:thing:") + " + opts.extra_networks_default_multiplier + " + q(">"),
                   "search_terms": ["thing"]}
            yield {"name": "evil", "filename": str(model), "prompt": "alert(1)", "preview": self.link_preview(str(outside)),
                   "search_terms": [self.search_terms_from_path(str(model))]}
            yield {"no name": True}

    page = Page()
    ui_extra_networks.register_page(page)
    ui_extra_networks.register_page(Page())  # registered again (scripts reloaded): replaces the first
    assert [p.extra_networks_tabname for p in ui_extra_networks.extra_pages] == [
        "textual_inversion", "lora", "my_things"]
    page = ui_extra_networks.extra_pages[-1]
    shared.opts.data["extra_networks_default_multiplier"] = 1.5
    cards = cards_by_name(page, rescan=True)
    assert set(cards) == {"thing", "evil"}
    assert cards["thing"].prompt == "<thing:thing:1.5>"
    assert cards["evil"].prompt == ""  # anything but quoted text and opts.X is never evaluated
    assert "/thing.bin" in cards["evil"].search_text
    client = TestClient(fastapi.FastAPI(routes=extra_networks_routes.routes(lambda request: True)))
    assert client.get("/sd_extra_networks/preview", params={"page": "my_things", "item": "thing"}).status_code == 200
    assert client.get("/sd_extra_networks/preview", params={"page": "my_things", "item": "evil"}).status_code == 403


def test_js_text_reads_only_literals_and_settings():
    shared.opts.data["extra_networks_default_multiplier"] = 1.0
    q = ui_extra_networks.quote_js
    assert extra_networks_cards.js_text(q("a \"b\" <c>")) == 'a "b" <c>'
    assert extra_networks_cards.js_text(q("<lora:x:") + " + opts.extra_networks_default_multiplier + " + q(">")) \
        == "<lora:x:1>"
    for bad in ("alert(1)", q("a") + " + window.x", q("a") + " + ", "`x`", None, 3):
        assert extra_networks_cards.js_text(bad) == ""


def test_the_panel_is_built_beside_generation_in_both_tabs(lora_dir):
    import gradio as gr

    write_lora(lora_dir / "one.safetensors")
    with gr.Blocks() as demo:
        for tab in ("txt2img", "img2img"):
            with extra_networks.generation_tabs(tab):
                gr.Textbox(elem_id=f"{tab}_inside_generation")
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for tab in ("txt2img", "img2img"):
        for part in ("extra_tabs", "generation_tab", "lora", "textual_inversion", "lora_extra_search",
                     "lora_extra_sort", "lora_extra_sort_dir", "lora_extra_refresh", "lora_extra_folder",
                     "lora_cards_html", "lora_edit_user_metadata", "lora_edit_user_metadata_name",
                     "lora_edit_user_metadata_button", "lora_edit_user_metadata_save",
                     "lora_edit_user_metadata_preferred_weight", "lora_edit_user_metadata_sd_version",
                     "textual_inversion_edit_user_metadata_notes"):
            assert f"{tab}_{part}" in ids, part
    assert "txt2img_textual_inversion_edit_user_metadata_sd_version" not in ids  # embeddings: description, notes


NODE_TOGGLE = r"""
const listeners = {};
global.document = { addEventListener: (type, fn) => { listeners[type] = fn; } };
global.window = {};
global.Element = class {};
require(process.argv[1]);
const { removeTag, removePlain } = window.extraNetworksToggle;
const cases = JSON.parse(process.argv[2]);
console.log(JSON.stringify(cases.map(([fn, value, text]) => (fn === "tag" ? removeTag : removePlain)(value, text, " "))));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_removes_what_a_second_click_would_add():
    cases = [
        ["tag", "a cat <lora:film:0.6> grainy film", "<lora:film:1> grainy film"],  # any weight, with activation
        ["tag", "<lora:film:0.6> a cat", "<lora:film:1>"],
        ["tag", "a cat <lora:filmic:1>", "<lora:film:1>"],  # another network stays
        ["tag", "a <lora:film:1> b <lora:film:0.2>", "<lora:film:1>"],  # every copy goes
        ["tag", "a cat", "<lora:film:1>"],
        ["plain", "a cat, bad-hands, dog", "bad-hands"],
        ["plain", "bad-hands-v2 cat", "bad-hands"],  # a longer name is another embedding
        ["plain", "cat bad-hands", "bad-hands"],
        ["plain", "bad-hands, cat", "bad-hands"],
        ["plain", "cat, bad-hands", "bad-hands"],
        ["plain", "", "bad-hands"],
    ]
    script = REPO / "javascript" / "extra_networks.js"
    out = subprocess.run(["node", "-e", NODE_TOGGLE, str(script), json.dumps(cases)], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert json.loads(out) == ["a cat", "a cat", None, "a b", None, "a cat, dog", None, "cat", "cat", "cat",
                               None]
