"""Prompts from file or textbox: one generation per line (A1111's script).

A line is a prompt, or A1111's options for that line's request, for example
    --prompt "a red circle" --negative_prompt "blurry" --steps 10 --seed 5 --width 64 --height 64
The options are A1111's `prompt_tags` (request fields), each converted to its type. Every line is read
before anything is generated: an unknown option, a value of the wrong type or an unknown sampler or
checkpoint is refused naming the line and the option (A1111 would only log it and use the line as a prompt).
"""

from __future__ import annotations

import copy
import logging
import random
import shlex
from collections.abc import Callable
from typing import Any

import gradio as gr

from modules import processing, scripts, sd_models, sd_samplers, shared
from modules.processing import Processed

log = logging.getLogger(__name__)


def process_string_tag(tag: str) -> str:
    return tag


def process_int_tag(tag: str) -> int:
    return int(tag)


def process_float_tag(tag: str) -> float:
    return float(tag)


def process_boolean_tag(tag: str) -> bool:
    return tag == "true"


def process_styles_tag(tag: str) -> list[str]:
    # a list, as the request holds it (A1111 set the bare text, which styles then read letter by letter)
    return [name.strip() for name in tag.split(",") if name.strip()]


def process_sampler_tag(tag: str) -> str:
    name = sd_samplers.samplers_map.get(tag.lower())
    if name is None:
        raise ValueError(f"unknown sampler {tag!r}")
    return name


def process_model_tag(tag: str) -> str:
    info = sd_models.get_closet_checkpoint_match(tag)
    if info is None:
        raise ValueError(f"unknown checkpoint {tag!r}")
    return info.title


# A1111's options, each with the conversion of its value.
prompt_tags: dict[str, Callable[[str], Any] | None] = {
    "sd_model": process_model_tag,
    "outpath_samples": process_string_tag,
    "outpath_grids": process_string_tag,
    "prompt_for_display": process_string_tag,
    "prompt": process_string_tag,
    "negative_prompt": process_string_tag,
    "styles": process_styles_tag,
    "seed": process_int_tag,
    "subseed_strength": process_float_tag,
    "subseed": process_int_tag,
    "seed_resize_from_h": process_int_tag,
    "seed_resize_from_w": process_int_tag,
    "sampler_index": process_int_tag,
    "sampler_name": process_sampler_tag,
    "batch_size": process_int_tag,
    "n_iter": process_int_tag,
    "steps": process_int_tag,
    "cfg_scale": process_float_tag,
    "width": process_int_tag,
    "height": process_int_tag,
    "restore_faces": process_boolean_tag,
    "tiling": process_boolean_tag,
    "do_not_save_samples": process_boolean_tag,
    "do_not_save_grid": process_boolean_tag,
}

# A client's text must not choose where files go: the outputs folders stay the server's.
_NOT_FROM_TEXT = {"outpath_samples", "outpath_grids"}
_TEXT_TAGS = ("prompt", "negative_prompt")


def cmdargs(line: str) -> dict[str, Any]:
    """A line's options as request fields (A1111's parser: --prompt and --negative_prompt take every word up
    to the next option). Raises ValueError naming the option that cannot be used."""
    try:
        args = shlex.split(line)
    except ValueError as e:
        raise ValueError(f"cannot read the line ({e})") from None
    pos, res = 0, {}
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in _TEXT_TAGS:
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            res[tag] = " ".join(words)
            continue
        func = prompt_tags.get(tag)
        if func is None or tag in _NOT_FROM_TEXT:
            raise ValueError(f"unknown commandline option: {arg}")
        try:
            res[tag] = func(args[pos + 1])
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from None
        pos += 2
    return res


def check_values(args: dict[str, Any]) -> None:
    """What process_images would refuse anyway, refused before the first line runs rather than midway."""
    for key in ("width", "height"):
        if key in args and (args[key] % 8 or args[key] < 64):
            raise ValueError(f"--{key} {args[key]}: width and height must be multiples of 8 and at least 64")
    for key in ("steps", "batch_size", "n_iter"):
        if key in args and args[key] < 1:
            raise ValueError(f"--{key} {args[key]}: must be at least 1")


def read_jobs(text: str) -> list[dict[str, Any]]:
    """One dict of request fields per non-empty line; a line that does not start with "--" is a prompt."""
    jobs = []
    lines = [line.strip() for line in (text or "").splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        if not line.startswith("--"):
            jobs.append({"prompt": line})  # A1111 also ends up taking "a -- b" as a prompt
            continue
        try:
            args = cmdargs(line)
            check_values(args)
        except ValueError as e:
            raise ValueError(f"Prompts from file, line {number}: {e}") from None
        jobs.append(args)
    return jobs


def load_prompt_file(file: bytes | None) -> tuple[Any, Any, Any]:
    """An uploaded file's lines go into the textbox (the file itself is then cleared)."""
    if file is None:
        return None, gr.update(), gr.update(lines=7)
    lines = [x.strip() for x in file.decode("utf8", errors="ignore").split("\n")]
    return None, "\n".join(lines), gr.update(lines=7)


def line_request(p: Any, args: dict[str, Any], prompt_position: str) -> Any:
    """A copy of the request with the line's fields; the textbox's prompt goes before or after the page's."""
    copy_p = copy.copy(p)
    copy_p.override_settings = dict(p.override_settings)
    copy_p.extra_generation_params = dict(p.extra_generation_params)
    copy_p.styles = list(p.styles)
    for key, value in args.items():
        if key == "sd_model":
            copy_p.override_settings["sd_model_checkpoint"] = value
            copy_p.sd_model = None  # the line's model is the one that override loads
        else:
            setattr(copy_p, key, value)
    for key in _TEXT_TAGS:
        line_text, page_text = args.get(key), getattr(p, key)
        if line_text and page_text and isinstance(page_text, str):
            joined = (line_text, page_text) if prompt_position == "start" else (page_text, line_text)
            setattr(copy_p, key, " ".join(joined))
    return copy_p


class Script(scripts.Script):
    def title(self) -> str:
        return "Prompts from file or textbox"

    def show(self, is_img2img: bool) -> bool:
        return True

    def ui(self, is_img2img: bool) -> list[Any]:
        checkbox_iterate = gr.Checkbox(label="Iterate seed every line", value=False,
                                       elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start",
                                   elem_id=self.elem_id("prompt_position"))
        prompt_txt = gr.Textbox(label="List of prompt inputs", value="", lines=1, elem_id=self.elem_id("prompt_txt"))
        file = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))
        file.change(fn=load_prompt_file, inputs=[file], outputs=[file, prompt_txt, prompt_txt],
                    show_progress="hidden")
        # One line until there is text; then 7 lines when it has several, 2 otherwise (never back to 1, where
        # Enter would no longer make a new line).
        prompt_txt.change(lambda text: gr.update(lines=7) if "\n" in (text or "") else gr.update(lines=2),
                          inputs=[prompt_txt], outputs=[prompt_txt], show_progress="hidden")
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    def run(self, p: Any, checkbox_iterate: bool = False, checkbox_iterate_batch: bool = False,
            prompt_position: str = "start", prompt_txt: str = "") -> Processed:
        jobs = read_jobs(prompt_txt)
        p.do_not_save_grid = True
        job_count = sum(int(args.get("n_iter", p.n_iter)) for args in jobs)
        log.info("Will process %d lines in %d jobs.", len(jobs), job_count)
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed == -1:
            p.seed = int(random.randrange(4294967294))  # one known seed the lines share or count up from

        results: list[Processed] = []
        with shared.state.job_scope(p.kind):
            for args in jobs:
                if shared.state.stopping:
                    break
                results.append(processing.process_images(line_request(p, args, prompt_position)))
                if checkbox_iterate:
                    p.seed = p.seed + p.batch_size * p.n_iter

        pictures = [image for r in results for image in r.images]
        all_prompts = [x for r in results for x in r.all_prompts]
        return Processed(p, pictures, p.seed, "", all_prompts=all_prompts,
                         all_negative_prompts=[x for r in results for x in r.all_negative_prompts],
                         all_seeds=[x for r in results for x in r.all_seeds],
                         all_subseeds=[x for r in results for x in r.all_subseeds],
                         infotexts=[x for r in results for x in r.infotexts],
                         comments="\n".join(filter(None, (r.comments for r in results))))
