"""The Extra Networks panel in the real page: the Lora tab beside Generation with its cards (preview, dimmed card
for another model family), search, folder filter, a click that inserts and a second click that removes the tag,
the edit dialog writing the sidecar (a bad value refused in the dialog), refresh finding a new file; the Textual
Inversion tab with an embedding that does not fit the model dimmed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lora_files import kohya_lora
from PIL import Image
from safetensors.torch import save_file
from tiny_models import TEXT_HIDDEN, build_family

from .helpers import Server, gallery_png, make_data_dir, opened_page, press_generate, set_number, small_run

TENSORS = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4),
           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2)}


def write_lora(path, tensors=None, **metadata: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors or TENSORS, str(path), metadata=metadata or None)


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, playwright_browser):
    data_dir = make_data_dir(tmp_path_factory.mktemp("extra-networks"))
    lora = data_dir / "models" / "Lora"
    # a LoRA on layers of the tiny model make_data_dir writes (sd1, seed 3): generating with it changes the picture
    write_lora(lora / "film.safetensors", kohya_lora(build_family("sd1", seed=3), seed=1),
               ss_output_name="filmgrain", ss_base_model_version="sd_v1")
    (lora / "film.json").write_text(json.dumps({"preferred weight": 0.6, "activation text": "red dog",
                                                "description": "35mm look"}))
    Image.new("RGB", (16, 16), (200, 40, 40)).save(lora / "film.preview.png")
    write_lora(lora / "styles" / "ink.safetensors")
    write_lora(lora / "xl.safetensors", ss_base_model_version="sdxl_base_v1-0")  # the tiny model is SD1
    embeddings = data_dir / "embeddings"
    embeddings.mkdir()
    save_file({"emb_params": torch.randn(1, TEXT_HIDDEN)}, str(embeddings / "fits.safetensors"))
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, str(embeddings / "xlonly.safetensors"))
    srv = Server(data_dir, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def lora_page(playwright_browser, lora_server):
    yield from opened_page(playwright_browser, lora_server.url)


def open_lora_tab(pg, tab: str = "txt2img"):
    pg.click(f"#{tab}_lora-button")
    pg.wait_for_selector(f"#{tab}_lora_cards .card[data-name='film']")
    return pg.locator(f"#{tab}_lora_cards")


def text_box(pg, elem_id: str):
    return pg.locator(f"#{elem_id} textarea, #{elem_id} input").first


def card_names(cards) -> list[str]:
    return cards.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.name)")


def test_lora_cards_beside_generation_search_and_click_to_insert_and_remove(lora_page):
    pg = lora_page
    assert pg.locator("#txt2img_extra_tabs #txt2img_generation_tab-button").is_visible()
    cards = open_lora_tab(pg)
    assert sorted(card_names(cards)) == ["film", "ink", "xl"]
    assert not pg.locator("#txt2img_settings").is_visible()  # the generation settings are in their own tab

    film = cards.locator(".card[data-name='film']")
    assert film.locator(".description").inner_text() == "35mm look"
    preview = film.locator("img.preview")
    preview.wait_for()
    pg.wait_for_function("img => img.complete && img.naturalWidth === 16", arg=preview.element_handle())
    assert "dimmed" in cards.locator(".card[data-name='xl']").get_attribute("class")
    assert "dimmed" not in film.get_attribute("class")

    text_box(pg, "txt2img_lora_extra_search").fill("ink")
    pg.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .card').length === 1")
    assert card_names(cards) == ["ink"]
    text_box(pg, "txt2img_lora_extra_search").fill("")
    pg.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .card').length === 3")

    # the folder filter offers the sub-folder of models/Lora
    pg.locator("#txt2img_lora_extra_folder input").click()
    pg.locator("[role=option]:has-text('styles')").click()
    pg.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .card').length === 1")
    assert card_names(cards) == ["ink"]
    pg.locator("#txt2img_lora_extra_folder input").click()
    pg.locator("[role=option]:has-text('All')").click()
    pg.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .card').length === 3")

    prompt = pg.locator("#txt2img_prompt textarea")
    prompt.fill("a cat")
    pg.wait_for_selector("#txt2img_token_counter :text('2/75')")
    cards.locator(".card[data-name='film'] .name").click()
    assert prompt.input_value() == "a cat <lora:filmgrain:0.6> red dog"
    # gradio has the new value: the counter (tags are not counted) follows it
    pg.wait_for_selector("#txt2img_token_counter :text('4/75')")
    cards.locator(".card[data-name='film'] .name").click()  # A1111's toggle: a second click takes it out
    assert prompt.input_value() == "a cat"
    pg.wait_for_selector("#txt2img_token_counter :text('2/75')")

    # img2img has its own panel, filling its own prompt
    pg.click("#tab_img2img-button")
    img2img_cards = open_lora_tab(pg, "img2img")
    img2img_cards.locator(".card[data-name='ink'] .name").click()
    assert pg.locator("#img2img_prompt textarea").input_value() == "<lora:ink:1>"
    assert prompt.input_value() == "a cat"


def test_edit_dialog_refuses_a_bad_value_then_saves_the_sidecar(lora_page, lora_server):
    pg = lora_page
    sidecar = lora_server.data_dir / "models" / "Lora" / "styles" / "ink.json"
    cards = open_lora_tab(pg)
    dialog = pg.locator("#txt2img_lora_edit_user_metadata")
    cards.locator(".card[data-name='ink']").hover()
    cards.locator(".card[data-name='ink'] .edit-button").click()
    dialog.wait_for(state="visible")
    assert "ink" in pg.inner_text("#txt2img_lora_edit_user_metadata_title")

    text_box(pg, "txt2img_lora_edit_user_metadata_description").fill("Ink <b>wash</b> painting")
    text_box(pg, "txt2img_lora_edit_user_metadata_activation_text").fill("sumi-e")
    weight = pg.locator("#txt2img_lora_edit_user_metadata_preferred_weight input")
    weight.fill("500")
    pg.click("#txt2img_lora_edit_user_metadata_save")
    error = pg.wait_for_selector("#txt2img_lora_edit_user_metadata_status .error")
    assert "between -100 and 100" in error.inner_text()
    assert not sidecar.exists()
    assert dialog.is_visible()

    weight.fill("0.7")
    pg.locator("#txt2img_lora_edit_user_metadata_sd_version label:has-text('SD1')").click()
    pg.click("#txt2img_lora_edit_user_metadata_save")
    dialog.wait_for(state="hidden")
    saved = json.loads(sidecar.read_text())
    assert saved["description"] == "Ink <b>wash</b> painting" and saved["activation text"] == "sumi-e"
    assert saved["preferred weight"] == 0.7 and saved["sd version"] == "SD1"
    ink = cards.locator(".card[data-name='ink']")
    pg.wait_for_function("() => document.querySelector(\"#txt2img_lora_cards .card[data-name='ink'] .description\")"
                         ".textContent === 'Ink <b>wash</b> painting'")  # shown as text, not markup
    assert ink.locator(".description b").count() == 0
    ink.locator(".name").click()
    assert pg.locator("#txt2img_prompt textarea").input_value() == "<lora:ink:0.7> sumi-e"

    # opened again, the dialog shows what is on disk; Cancel closes it without writing
    ink.hover()
    ink.locator(".edit-button").click()
    dialog.wait_for(state="visible")
    pg.wait_for_function("() => document.querySelector('#txt2img_lora_edit_user_metadata_preferred_weight input')"
                         ".value === '0.7'")
    pg.click("#txt2img_lora_edit_user_metadata_cancel")
    dialog.wait_for(state="hidden")
    assert json.loads(sidecar.read_text()) == saved


def test_refresh_shows_a_newly_added_file(lora_page, lora_server):
    pg = lora_page
    cards = open_lora_tab(pg)
    write_lora(lora_server.data_dir / "models" / "Lora" / "later" / "fresh.safetensors")
    assert "fresh" not in card_names(cards)
    pg.click("#txt2img_lora_extra_refresh")
    pg.wait_for_selector("#txt2img_lora_cards .card[data-name='fresh']")
    pg.locator("#txt2img_lora_extra_folder input").click()
    assert pg.locator("[role=option]:has-text('later')").count() == 1


def test_generate_with_the_card_s_tag_applies_the_lora(lora_page):
    pg = lora_page
    small_run(pg, "txt2img")
    set_number(pg, "txt2img_seed", 42)
    prompt = pg.locator("#txt2img_prompt textarea")
    prompt.fill("a cat red dog")  # the same words the card gives below, without the LoRA
    assert "Time taken" in press_generate(pg, "txt2img")
    plain = gallery_png(pg, "txt2img")

    cards = open_lora_tab(pg)
    prompt.fill("a cat")
    cards.locator(".card[data-name='film'] .name").click()
    assert prompt.input_value() == "a cat <lora:filmgrain:0.6> red dog"
    assert "Time taken" in press_generate(pg, "txt2img")
    with_lora = gallery_png(pg, "txt2img")
    parameters = with_lora.info["parameters"]
    assert parameters.startswith("a cat <lora:filmgrain:0.6> red dog\n")
    assert "Lora hashes:" in parameters and "filmgrain" in parameters.split("Lora hashes:")[1]
    assert np.abs(np.asarray(plain, dtype=int) - np.asarray(with_lora, dtype=int)).max() > 0


def test_send_to_img2img_brings_its_generation_tab_back_with_the_picture(lora_page):
    pg = lora_page
    pg.click("#tab_img2img-button")
    open_lora_tab(pg, "img2img")  # a person left img2img on its Lora cards
    pg.click("#tab_txt2img-button")
    small_run(pg, "txt2img")
    pg.locator("#txt2img_prompt textarea").fill("a red circle")
    assert "Time taken" in press_generate(pg, "txt2img")
    pg.click("#txt2img_send_to_img2img")
    pg.locator("#img2img_image img").wait_for(state="visible")
    assert pg.locator("#img2img_lora_cards").is_hidden()


def test_textual_inversion_cards_fill_the_prompt_box_that_had_the_focus(lora_page):
    pg = lora_page
    pg.click("#txt2img_textual_inversion-button")
    cards = pg.locator("#txt2img_textual_inversion_cards")
    pg.wait_for_selector("#txt2img_textual_inversion_cards .card[data-name='fits']")
    assert "dimmed" not in cards.locator(".card[data-name='fits']").get_attribute("class")
    assert "dimmed" in cards.locator(".card[data-name='xlonly']").get_attribute("class")

    prompt = pg.locator("#txt2img_prompt textarea")
    negative = pg.locator("#txt2img_neg_prompt textarea")
    prompt.fill("a cat")
    cards.locator(".card[data-name='fits'] .name").click()
    assert prompt.input_value() == "a cat fits"
    cards.locator(".card[data-name='fits'] .name").click()
    assert prompt.input_value() == "a cat"
    negative.fill("blurry")  # the negative prompt had the focus last: an embedding goes there
    cards.locator(".card[data-name='fits'] .name").click()
    assert negative.input_value() == "blurry fits" and prompt.input_value() == "a cat"
