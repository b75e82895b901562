"""Compatible waiting jobs run as one batch (setting `queue_batch_jobs`): which requests may share a batch, the
one request that runs them, and each job's own result cut back out of it.

The queue (`modules.call_queue`) finds the requests; this module only looks at `StableDiffusionProcessing`
objects. A merged batch is what A1111 already does for a batch of one request with a prompt, negative prompt and
seed per image (`p.prompt`/`p.seed` as lists): every image gets the noise of its own seed (`modules.rng`), and
each job gets back the `Processed`, infotext and info JSON it would have got alone.

Only txt2img requests of one image that differ in nothing but prompt, negative prompt and seeds are merged:
everything else (the model, the settings, the size, the sampler, the scripts' arguments...) changes the whole
batch, and LoRA tags are activated once per batch in A1111, so they must be identical too. Importing this module
pulls in no torch; `modules.processing` is imported when a batch is looked at.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

from modules import shared

log = logging.getLogger(__name__)

BATCH_KINDS = ("txt2img",)  # queue job kinds worth looking at: the API's and the UI's txt2img jobs
# Fields that may differ between the jobs of one batch: each image has its own.
PER_IMAGE_FIELDS = ("prompt", "negative_prompt", "seed", "subseed", "force_task_id")
# What a job keeps of its own when it adopts what the merged run resolved (sampler, clip skip, model...).
_OWN_ATTRIBUTES = (*PER_IMAGE_FIELDS, "batch_size", "n_iter", "job_timestamp")
DEFAULTS = {"queue_batch_jobs": False, "queue_batch_max": 8}


def enabled() -> bool:
    return bool(getattr(shared.opts, "queue_batch_jobs", DEFAULTS["queue_batch_jobs"]))


def max_batch() -> int:
    return max(1, int(getattr(shared.opts, "queue_batch_max", DEFAULTS["queue_batch_max"])))


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # arrays and tensors have no single truth value: treat them as different
        return False


def _default_script_args(p: Any) -> bool:
    """No selected script and every always-on script at its defaults, i.e. what a plain API request carries."""
    args = list(p.script_args or ())
    if not args:
        return True
    try:
        return _same(args, list(p.scripts.default_args()))
    except Exception:
        log.debug("could not read the scripts' default arguments", exc_info=True)
        return False


def why_alone(p: Any) -> str | None:
    """Why `p` must run alone; None when it may share a batch."""
    from modules import processing, request_validation, upscalers

    if type(p) is not processing.StableDiffusionProcessingTxt2Img:
        return "only txt2img requests are merged"
    if p.batch_size != 1 or p.n_iter != 1:
        return "more than one image"
    if not isinstance(p.prompt, str) or not isinstance(p.negative_prompt, str):
        return "a list of prompts"
    if isinstance(p.seed, list | tuple) or isinstance(p.subseed, list | tuple):
        return "a list of seeds"
    if p.enable_hr or p.firstpass_image is not None or getattr(p, "txt2img_upscale", False):
        return "hires fix"
    if p.refiner_checkpoint not in (None, "", "None"):
        return "a refiner"
    if not (p.do_not_save_samples and p.do_not_save_grid):
        return "saves its pictures"  # file names and counters of a batch differ from single jobs'
    if p.unet_hooks:
        return "UNet hooks"
    if p.scripts is not None and not _default_script_args(p):
        return "a script or always-on script arguments"
    try:  # a request the engine refuses fails alone, never its batch
        upscalers.ensure_listed()
        request_validation.validate(p, is_api=p.is_api)
    except Exception as e:
        return f"refused: {e}"
    return None


def _network_tags(p: Any) -> Any:
    from modules import extra_networks

    return extra_networks.parse_prompt(p.prompt)[1]


def compatible(a: Any, b: Any) -> bool:
    """Both may run in one batch: every field equal but the per-image ones, same scripts, same LoRA (any
    extra network) tags. Assumes `why_alone` is None for both."""
    for f in dataclasses.fields(a):
        if f.name not in PER_IMAGE_FIELDS and f.name != "scripts" and not _same(getattr(a, f.name),
                                                                               getattr(b, f.name)):
            return False
    return a.scripts is b.scripts and _same(_network_tags(a), _network_tags(b))


def merge(ps: list[Any]) -> Any:
    """One request making every job's image: prompts, negative prompts, seeds and variation seeds as lists."""
    from modules import processing

    for p in ps:
        processing.fix_seed(p)  # what process_images does first; each job keeps its (random) seed
    lead = ps[0]
    merged = copy.copy(lead)
    merged.prompt = [p.prompt for p in ps]
    merged.negative_prompt = [p.negative_prompt for p in ps]
    merged.seed = [p.seed for p in ps]
    merged.subseed = [p.subseed for p in ps]
    merged.batch_size, merged.n_iter = len(ps), 1
    # nothing of the merged run may land in a job's own objects
    merged.extra_generation_params = dict(lead.extra_generation_params)
    merged.comments = dict(lead.comments)
    merged.override_settings = dict(lead.override_settings)
    merged.styles = list(lead.styles)
    merged.unet_hooks = []
    return merged


def run(merged: Any) -> Any:
    from modules import processing

    return processing.process_images(merged)


def _adopt(p: Any, merged: Any, index: int) -> None:
    """Leave on `p` what running it alone would have: what the run resolved, and its own image's lists."""
    from modules import extra_networks, processing

    own = {name: getattr(p, name) for name in _OWN_ATTRIBUTES}
    had_ti_hashes = "TI hashes" in p.extra_generation_params
    for key, value in vars(merged).items():
        setattr(p, key, value)
    for key, value in own.items():
        setattr(p, key, value)
    p.extra_generation_params = dict(merged.extra_generation_params)
    p.comments = dict(merged.comments)
    p.all_prompts, p.prompts = [merged.all_prompts[index]], [merged.all_prompts[index]]
    p.all_negative_prompts = [merged.all_negative_prompts[index]]
    p.negative_prompts = list(p.all_negative_prompts)
    p.all_seeds, p.seeds = [merged.all_seeds[index]], [merged.all_seeds[index]]
    p.all_subseeds, p.subseeds = [merged.all_subseeds[index]], [merged.all_subseeds[index]]
    p.iteration = 0
    # The batch's "TI hashes" name the embeddings of every prompt in it: this job's names only its own.
    if not had_ti_hashes:
        p.extra_generation_params.pop("TI hashes", None)
        texts = extra_networks.parse_prompts(p.prompts)[0] + extra_networks.parse_prompts(p.negative_prompts)[0]
        processing._write_ti_hashes(p, p.sd_model, texts)


def member_result(merged: Any, processed: Any, index: int, p: Any) -> Any:
    """The `Processed` job `index` of the batch gets: its picture, with the infotext and info JSON of a lone run."""
    from modules import processing

    _adopt(p, merged, index)
    pictures = [processed.images[index]] if index < len(processed.images) else []  # none: stopped before a step
    text = processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds)
    for picture in pictures:
        picture.info["parameters"] = text
    texts = [text] * len(pictures)
    return processing.Processed(p, pictures, p.all_seeds[0], texts[0] if texts else "", p.all_subseeds[0],
                                infotexts=texts, comments=processing._comments(p))


__all__ = ["BATCH_KINDS", "compatible", "enabled", "max_batch", "member_result", "merge", "run", "why_alone"]
