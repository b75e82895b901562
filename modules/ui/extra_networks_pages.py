"""The built-in pages of the Extra Networks panel: Lora (modules/networks) and Textual Inversion (the embedding
database). Each lists A1111-shaped items; a card is dimmed when its file does not fit the loaded model."""

from __future__ import annotations

import logging
import os
from typing import Any

from modules import shared, ui_extra_networks
from modules.networks import user_metadata
from modules.ui_extra_networks import ExtraNetworksPage, quote_js

log = logging.getLogger(__name__)


def loaded_family() -> str | None:
    """The loaded model's family, "SD1", "SD2" or "SDXL"; None when none is loaded or it is another kind."""
    model = shared.sd_model
    if model is None:
        return None
    for attribute, family in (("is_sdxl", "SDXL"), ("is_sd2", "SD2"), ("is_sd1", "SD1")):
        if getattr(model, attribute, False):
            return family
    return None


def format_weight(weight: float) -> str:
    """A weight as a prompt shows it: 1.0 -> "1", 0.75 -> "0.75" (never an exponent the tag pattern misses)."""
    text = f"{weight:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _setting(key: str, default: Any) -> Any:
    return getattr(shared.opts, key, default)


class LoraPage(ExtraNetworksPage):
    """LoRA / LyCORIS files of `models/Lora` (`--lora-dir`) and `models/LyCORIS`."""

    def __init__(self) -> None:
        super().__init__("Lora")
        self.editable_fields = tuple(user_metadata.FIELDS)
        self._scanned = False

    def refresh(self) -> None:
        from modules.networks import files

        files.list_available_networks()
        self._scanned = True

    def allowed_directories_for_previews(self) -> list[str]:
        from modules.networks import files

        return files.network_dirs()

    def list_items(self) -> list[dict[str, Any]]:
        from modules.networks import files

        if not self._scanned and not files.available_networks:
            self.refresh()  # first look at the page: nothing has scanned the folders yet
        self._scanned = True
        family = loaded_family()
        show_all = bool(_setting("lora_show_all", False))
        return [self._item(network, family, show_all) for network in list(files.available_networks.values())]

    def _item(self, network: Any, family: str | None, show_all: bool) -> dict[str, Any]:
        meta = network.user_metadata
        weight = meta.get("preferred weight") or 0.0  # 0: "use the default multiplier", as in A1111
        if not weight:
            weight = float(_setting("extra_networks_default_multiplier", 1.0))
        prompt = f"<lora:{network.get_alias()}:{format_weight(weight)}>"
        activation = (meta.get("activation text") or "").strip()
        if activation:
            prompt += f" {activation}"
        sd_version = network.sd_version_for_card()
        mismatch = sd_version != "Unknown" and family is not None and sd_version != family
        item: dict[str, Any] = {
            "name": network.name,
            "filename": network.filename,
            "shorthash": network.shorthash,
            "preview": network.preview,
            "description": meta.get("description") or self.find_description(network.filename) or "",
            "search_terms": [network.name, network.alias, network.shorthash or ""],
            "prompt": quote_js(prompt),
            "negative_prompt": quote_js(meta.get("negative text") or ""),
            "metadata": network.metadata,
            "user_metadata": meta,
            "sd_version": sd_version,
            "sort_keys": self.get_sort_keys(network.filename),
            "dimmed": mismatch and not show_all,
        }
        if item["dimmed"]:
            item["dimmed_reason"] = f"made for {sd_version}; the loaded model is {family}"
        return item


def embedding_db() -> Any:
    """The textual-inversion database (modules.textual_inversion), or None while there is none."""
    try:
        from modules import textual_inversion
    except ImportError:
        return None
    return getattr(textual_inversion, "embedding_db", None)


class TextualInversionPage(ExtraNetworksPage):
    """Embeddings of `embeddings/` (`--embeddings-dir`); those that do not fit the model are dimmed."""

    def __init__(self) -> None:
        super().__init__("Textual Inversion")
        self.allow_negative_prompt = True  # embeddings are often negative ones

    def refresh(self) -> None:
        db = embedding_db()
        if db is not None:
            db.load_textual_inversion_embeddings(force_reload=True)

    def allowed_directories_for_previews(self) -> list[str]:
        db = embedding_db()
        dirs = list(db.dirs()) if hasattr(db, "dirs") else []
        dirs += [getattr(shared.cmd_opts, "embeddings_dir", None)]
        dirs += [str(d) for d in (getattr(db, "embedding_dirs", None) or {})]
        return sorted({os.path.abspath(d) for d in dirs if d})

    def list_items(self) -> list[dict[str, Any]]:
        db = embedding_db()
        if db is None:
            return []
        try:  # new or changed files only, and sorted for the model loaded now (which decides the dimmed ones)
            db.load_textual_inversion_embeddings()
        except Exception as e:  # a broken embedding must not break the page
            log.warning("could not read the embeddings: %s", e)
        reasons = db.skipped_reasons() if hasattr(db, "skipped_reasons") else {}
        items = [self._item(e, None) for e in list(db.word_embeddings.values())]
        items += [self._item(e, reasons.get(e.name) or "does not fit the loaded model")
                  for e in list(db.skipped_embeddings.values())]
        return items

    def _item(self, embedding: Any, skipped: str | None) -> dict[str, Any]:
        filename = getattr(embedding, "filename", None) or ""
        meta = user_metadata.read(filename) if filename else {}
        item: dict[str, Any] = {
            "name": embedding.name,
            "filename": filename,
            "preview": self.find_preview(filename) if filename else None,
            "description": meta.get("description") or (self.find_description(filename) if filename else "") or "",
            "search_terms": [embedding.name],
            "prompt": quote_js(embedding.name),
            "user_metadata": meta,
            "sort_keys": self.get_sort_keys(filename) if filename else {"name": embedding.name.lower()},
            "dimmed": skipped is not None,
        }
        if skipped is not None:
            item["dimmed_reason"] = skipped
        return item


def register_default_pages() -> None:
    """The built-in pages, Textual Inversion and Lora (extensions add theirs with ui_extra_networks.register_page)."""
    ui_extra_networks.register_page(TextualInversionPage())
    ui_extra_networks.register_page(LoraPage())
