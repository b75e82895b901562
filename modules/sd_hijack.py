"""A1111's `modules.sd_hijack`, for extensions that read `model_hijack.embedding_db` (the textual-inversion
embeddings). Nothing is hijacked here: the engine calls the embeddings itself."""

from __future__ import annotations

from modules import textual_inversion


class StableDiffusionModelHijack:
    embedding_db = textual_inversion.embedding_db
    comments: list[str] = []
    extra_generation_params: dict = {}
    optimization_method: str | None = None


model_hijack = StableDiffusionModelHijack()
