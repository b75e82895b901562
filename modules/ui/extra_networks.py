"""The Extra Networks panel of txt2img and img2img (A1111's layout): a Tabs `{tabname}_extra_tabs` whose first
tab, "Generation", holds the generation settings and results, followed by one tab of cards per registered page
(Textual Inversion, Lora, then extensions' pages).

Each page tab has a search box, a folder filter, sort field and order, a refresh button (rescans the folders)
and the cards. The card list is read again when the tab is opened (the loaded model decides which cards are
dimmed), on refresh and after an edit; searching, filtering and sorting work on that list. Clicking a card
inserts into, or removes from, the prompt of its tab in the page itself (javascript/extra_networks.js).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules import shared, ui_extra_networks
from modules.ui import common, extra_networks_cards, extra_networks_editor
from modules.ui.extra_networks_cards import ALL_FOLDERS, ORDERS, SORT_FIELDS, Card

log = logging.getLogger(__name__)


@dataclass
class PageUi:
    page: ui_extra_networks.ExtraNetworksPage
    tab: gr.Tab
    search: gr.Textbox
    folder: gr.Dropdown
    sort: gr.Dropdown
    order: gr.Radio
    refresh: gr.Button
    cards: gr.HTML
    editor: extra_networks_editor.Editor


# The card list of each page as last read (page tab name -> cards): searching and sorting use it.
_cards: dict[str, list[Card]] = {}


def read_cards(page: ui_extra_networks.ExtraNetworksPage, rescan: bool = False) -> list[Card]:
    """The page's cards read now (after rescanning its folders when asked). A page that fails shows no cards
    rather than breaking the panel: its error is logged."""
    try:
        if rescan:
            page.refresh()
        cards = extra_networks_cards.collect(page)
    except Exception as e:
        log.exception("extra networks page %r failed: %s", page.title, e)
        cards = []
    _cards[page.extra_networks_tabname] = cards
    return cards


def cards_for(page: ui_extra_networks.ExtraNetworksPage) -> list[Card]:
    cached = _cards.get(page.extra_networks_tabname)
    return cached if cached is not None else read_cards(page)


def render(tabname: str, page: ui_extra_networks.ExtraNetworksPage, search: str | None, folder: str | None,
           sort: str | None, order: str | None) -> str:
    return extra_networks_cards.view(tabname, page, cards_for(page), search, folder, sort, order)


def _folder_update(cards: list[Card], folder: str | None) -> Any:
    choices = extra_networks_cards.folder_choices(cards)
    return gr.Dropdown(choices=choices, value=folder if folder in choices else ALL_FOLDERS)


def _default_sort() -> tuple[str, str]:
    field = str(getattr(shared.opts, "extra_networks_card_order_field", "Path"))
    order = str(getattr(shared.opts, "extra_networks_card_order", "Ascending"))
    return (field if field in SORT_FIELDS else "Path"), (order if order in ORDERS else "Ascending")


def _page_tab(tabname: str, page: ui_extra_networks.ExtraNetworksPage) -> PageUi:
    part = f"{tabname}_{page.extra_networks_tabname}"
    cards = read_cards(page)
    sort_field, order_value = _default_sort()
    with gr.Tab(page.title, id=part, elem_id=part, elem_classes=["extra-page"]) as tab:
        with gr.Row(elem_id=f"{part}_controls", elem_classes=["extra-network-controls"], equal_height=True):
            search = gr.Textbox(show_label=False, placeholder="Search", elem_id=f"{part}_extra_search", scale=4,
                                container=False)
            folder = gr.Dropdown(label="Folder", choices=extra_networks_cards.folder_choices(cards),
                                 value=ALL_FOLDERS, elem_id=f"{part}_extra_folder", scale=2, container=False,
                                 show_label=False)
            sort = gr.Dropdown(label="Sort by", choices=list(SORT_FIELDS), value=sort_field,
                               elem_id=f"{part}_extra_sort", scale=1, container=False, show_label=False)
            order = gr.Radio(choices=list(ORDERS), value=order_value, elem_id=f"{part}_extra_sort_dir", scale=1,
                             min_width=240, container=False, show_label=False)
            refresh = common.tool_button(common.REFRESH, f"{part}_extra_refresh",
                                         f"Rescan the folders of {page.title}")
        html = gr.HTML(extra_networks_cards.view(tabname, page, cards, "", ALL_FOLDERS, sort_field, order_value),
                       elem_id=f"{part}_cards_html", js_on_load=None)
        editor = extra_networks_editor.build(tabname, page)
    return PageUi(page, tab, search, folder, sort, order, refresh, html, editor)


def _wire(tabname: str, ui: PageUi) -> None:
    page = ui.page
    view_inputs = [ui.search, ui.folder, ui.sort, ui.order]
    quiet: dict[str, Any] = {"show_progress": "hidden", "queue": False}

    def show(search: str, folder: str, sort: str, order: str) -> str:
        return render(tabname, page, search, folder, sort, order)

    def read_and_show(rescan: bool, search: str, folder: str, sort: str, order: str) -> tuple[str, Any]:
        cards = read_cards(page, rescan=rescan)
        chosen = folder if folder in extra_networks_cards.folder_choices(cards) else ALL_FOLDERS
        return render(tabname, page, search, chosen, sort, order), _folder_update(cards, folder)

    def reread(search: str, folder: str, sort: str, order: str) -> tuple[str, Any]:
        return read_and_show(False, search, folder, sort, order)

    def rescan(search: str, folder: str, sort: str, order: str) -> tuple[str, Any]:
        return read_and_show(True, search, folder, sort, order)

    ui.search.change(show, inputs=view_inputs, outputs=[ui.cards], trigger_mode="always_last", **quiet)
    for control in (ui.folder, ui.sort, ui.order):
        control.input(show, inputs=view_inputs, outputs=[ui.cards], **quiet)
    # opening the tab reads the list again: files edited meanwhile, another model loaded (dimmed cards)
    ui.tab.select(reread, inputs=view_inputs, outputs=[ui.cards, ui.folder], **quiet)
    ui.refresh.click(rescan, inputs=view_inputs, outputs=[ui.cards, ui.folder], show_progress="hidden")

    def after_save(search: str, folder: str, sort: str, order: str) -> str:
        read_cards(page)
        return show(search, folder, sort, order)

    extra_networks_editor.wire(ui.editor, page, ui.cards, view_inputs, after_save)


def build_pages(tabname: str) -> list[PageUi]:
    """One tab per registered page, inside the current Tabs."""
    built = []
    for page in list(ui_extra_networks.extra_pages):
        ui = _page_tab(tabname, page)
        _wire(tabname, ui)
        built.append(ui)
    return built


# tabname -> the Tabs holding "Generation" and the pages (send-to switches back to "Generation")
built_tabs: dict[str, gr.Tabs] = {}


@contextlib.contextmanager
def generation_tabs(tabname: str) -> Iterator[None]:
    """`with generation_tabs("txt2img"):` the body goes into the "Generation" tab; the pages' tabs follow it."""
    with gr.Tabs(elem_id=f"{tabname}_extra_tabs", elem_classes=["extra-networks"]) as tabs:
        with gr.Tab("Generation", id=f"{tabname}_generation", elem_id=f"{tabname}_generation_tab"):
            yield
        build_pages(tabname)
    built_tabs[tabname] = tabs


def show_generation(tabname: str) -> gr.Tabs:
    """The update that brings a tab's "Generation" page to the front (where send-to puts the picture)."""
    return gr.Tabs(selected=f"{tabname}_generation")
