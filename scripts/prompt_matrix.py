"""Prompt matrix: every combination of the prompt's `|`-separated optional parts, in one labelled grid
(A1111's script).

`a cat|red|blue` gives four pictures: "a cat", "a cat, red", "a cat, blue", "a cat, red, blue". The first half
of the optional parts runs along the columns and the rest down the rows; a label is grey and struck through
where its part is left out. All pictures share one seed unless "Use different seed for each picture" is ticked.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import gradio as gr

from modules import grid_labels, images, processing, scripts
from modules.filename_patterns import shared_opt
from modules.processing import Processed

log = logging.getLogger(__name__)

PROMPT_TYPES = ("positive", "negative")
DELIMITERS = {"comma": ", ", "space": " "}


def matrix_prompts(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the prompt split at "|", one prompt per combination). Combination n has optional part i when bit i of
    n is set, so the pictures fill the grid row by row with the first parts changing fastest."""
    parts = prompt.split("|")
    prompts = []
    for combination in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for i, text in enumerate(parts[1:]) if combination & (1 << i)]
        ordered = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(ordered))
    return parts, prompts


class SeedsAfterPrepare:
    """Stands in for the request's script runner for one generation and gives every picture the seed listed.

    process_images computes seed + i for picture i from an int seed, and cannot take A1111's list of seeds;
    the scripts' `process` stage is where A1111 lets the seeds be rewritten, so the list goes in there, before
    the always-on scripts see it. Every other stage is passed on to the real runner (or does nothing)."""

    def __init__(self, runner: Any, seeds: list[int]) -> None:
        self.runner = runner
        self.seeds = seeds

    def process(self, p: Any) -> None:
        count = len(self.seeds)
        p.all_seeds = list(self.seeds)
        # the last batch may be short: A1111 generates exactly one picture per combination
        p.all_prompts, p.all_negative_prompts = p.all_prompts[:count], p.all_negative_prompts[:count]
        p.all_subseeds = p.all_subseeds[:count]
        if self.runner is not None:
            self.runner.process(p)

    def __getattr__(self, name: str) -> Any:
        if self.runner is None:
            return lambda *args, **kwargs: None
        return getattr(self.runner, name)


class Script(scripts.Script):
    def title(self) -> str:
        return "Prompt matrix"

    def show(self, is_img2img: bool) -> bool:
        return True

    def ui(self, is_img2img: bool) -> list[Any]:
        gr.HTML("<br />")
        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False,
                                           elem_id=self.elem_id("put_at_start"))
                different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False,
                                              elem_id=self.elem_id("different_seeds"))
            with gr.Column():
                prompt_type = gr.Radio(list(PROMPT_TYPES), label="Select prompt", value="positive",
                                       elem_id=self.elem_id("prompt_type"))
                variations_delimiter = gr.Radio(list(DELIMITERS), label="Select joining char", value="comma",
                                                elem_id=self.elem_id("variations_delimiter"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]

    def run(self, p: Any, put_at_start: bool = False, different_seeds: bool = False, prompt_type: str = "positive",
            variations_delimiter: str = "comma", margin_size: int = 0) -> Processed:
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"Prompt matrix: unknown prompt type {prompt_type!r} (positive or negative)")
        if variations_delimiter not in DELIMITERS:
            raise ValueError(f"Prompt matrix: unknown joining char {variations_delimiter!r} (comma or space)")
        processing.fix_seed(p)
        source = p.prompt if prompt_type == "positive" else p.negative_prompt
        original_prompt = source[0] if isinstance(source, list) else source
        positive_prompt = p.prompt[0] if isinstance(p.prompt, list) else p.prompt
        parts, all_prompts = matrix_prompts(original_prompt, bool(put_at_start), DELIMITERS[variations_delimiter])

        p.n_iter = math.ceil(len(all_prompts) / p.batch_size)
        p.do_not_save_grid = True
        log.info("Prompt matrix will create %d images using a total of %d batches.", len(all_prompts), p.n_iter)
        if prompt_type == "positive":
            p.prompt = all_prompts
        else:
            p.negative_prompt = all_prompts
        seeds = [int(p.seed) + (i if different_seeds else 0) for i in range(len(all_prompts))]
        p.prompt_for_display = positive_prompt
        runner = p.scripts
        p.scripts = SeedsAfterPrepare(runner, seeds)
        try:
            processed = processing.process_images(p)
        finally:
            p.scripts = runner
        return self._with_grid(p, processed, parts, original_prompt, int(margin_size or 0))

    @staticmethod
    def _with_grid(p: Any, processed: Processed, parts: list[str], prompt: str, margin_size: int) -> Processed:
        """The labelled grid in front of the pictures, saved to the grids folder when `grid_save` is on."""
        pictures = processed.images
        if not pictures:
            return processed  # interrupted before the first picture
        grid = images.image_grid(pictures, p.batch_size, rows=1 << ((len(parts) - 1) // 2))
        grid = grid_labels.draw_prompt_matrix(grid, pictures[0].width, pictures[0].height, parts, margin_size)
        text = processed.infotexts[0] if processed.infotexts else ""
        grid.info["parameters"] = text
        processed.images.insert(0, grid)
        processed.index_of_first_image = 1
        processed.infotexts.insert(0, text)
        if shared_opt("grid_save", True):
            outdir = p.outpath_grids or processing._outdir(p.kind, False)  # the grids folder process_images uses
            images.save_image(grid, outdir, "prompt_matrix", processed.seed, prompt, shared_opt("grid_format", "png"),
                              info=text, grid=True, p=p,
                              short_filename=not shared_opt("grid_extended_filename", False))
        return processed
