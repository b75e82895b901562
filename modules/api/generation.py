"""txt2img / img2img over the API: request -> validated processing arguments -> job -> response.

The route only translates: the job builds A1111's `StableDiffusionProcessing*` with the request's fields and
calls `process_images`, exactly what the UI does, on the same queue.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import Any

from modules import processing, shared
from modules import scripts as script_api
from modules.api import images, infotext, scripts, validation
from modules.api.errors import ApiError, invalid
from modules.api.models import GenerationRequest, StableDiffusionImg2ImgProcessingAPI

PROCESSING_CLASSES: dict[str, type[processing.StableDiffusionProcessing]] = {
    "txt2img": processing.StableDiffusionProcessingTxt2Img,
    "img2img": processing.StableDiffusionProcessingImg2Img,
}


class WaitingUploads:
    """Bytes of uploaded images held by API requests that were accepted but have not started running.

    Bounded by `queue_max_waiting_mb`: one request is always let in (`api_max_body_mb` bounds it), but while
    others wait, one that would take the total past the limit is refused with a 429. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    def reserve(self, size: int) -> Callable[[], None]:
        """Count `size` bytes as waiting; returns the function that gives them back (safe to call twice)."""
        most = int(getattr(shared.opts, "queue_max_waiting_mb", 256)) * 2**20
        with self._lock:
            if self._held and self._held + size > most:
                raise ApiError(429, f"Requests waiting in the queue already hold {self._held / 2**20:.0f} MB of "
                                    f"uploaded images; this one's {size / 2**20:.0f} MB would pass the limit of "
                                    f"{most // 2**20} MB (setting queue_max_waiting_mb). Try again later.")
            self._held += size
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._held -= size

        return release


waiting_uploads = WaitingUploads()  # process-wide, like the queue the requests wait in


def _no_uploads() -> None:
    """`release_uploads` of a request without uploads."""


def _init_fields(cls: type) -> dict[str, Any]:
    """Constructor fields of a processing class and their defaults (MISSING when none)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init}


@dataclasses.dataclass
class Prepared:
    """A request ready to run: the (infotext-filled) request, the processing arguments, its task id."""

    request: GenerationRequest
    args: dict[str, Any]
    task_id: str | None
    release_uploads: Callable[[], None] = _no_uploads

    def __post_init__(self) -> None:
        # A request that never runs (refused by the queue, cancelled, its client gone) gives its share back
        # when it is dropped; one that runs gives it back as it starts.
        weakref.finalize(self, self.release_uploads)

    def run(self, kind: str) -> processing.Processed:
        """In the job: decode the uploads (only now, so queued requests hold only the base64 they were sent),
        then generate."""
        self.release_uploads()  # no longer waiting: the queue's bound on waiting uploads stops counting it
        args = dict(self.args)
        if kind == "img2img":
            args["init_images"] = [image.load() for image in args["init_images"]]
            args["mask"] = args["mask"].load() if args["mask"] is not None else None
            if args.get("depth_map") is not None:
                args["depth_map"] = args["depth_map"].load()
        if args.get("firstpass_image") is not None:  # Hires. fix of a finished picture (A1111's ✨ button)
            args["firstpass_image"] = args["firstpass_image"].load().convert("RGB")
        p = PROCESSING_CLASSES[kind](**args)
        p.is_api = True
        req = self.request
        p.scripts = scripts.runner(kind)
        p.script_args = tuple(scripts.script_args(kind, req.script_name, req.script_args, req.alwayson_scripts))
        return script_api.process_request(p)


def _check_images(req: StableDiffusionImg2ImgProcessingAPI) -> tuple[list[images.CheckedImage], Any]:
    if not req.init_images:
        raise invalid("init_images", "img2img needs at least one init image")
    init = validation.check_image_list("init_images", list(req.init_images))
    mask = images.check_base64_image(req.mask, "mask") if req.mask else None
    return init, mask


def _check_depth(req: StableDiffusionImg2ImgProcessingAPI) -> images.CheckedImage | None:
    """depth_map / depth_estimator take effect only with an SD2 depth model (modules/depth/depth2img.py)."""
    if not req.depth_map and not req.depth_estimator:
        return None
    from modules.depth import estimators

    if req.depth_estimator and req.depth_estimator not in estimators.names():
        raise invalid("depth_estimator", f"unknown depth estimator {req.depth_estimator!r}; known: "
                                         f"{', '.join(estimators.names())}")
    model = shared.sd_model
    spec = getattr(model, "spec", None)
    if spec is not None and spec.variant != "depth" and not (req.override_settings or {}).get("sd_model_checkpoint"):
        field = "depth_map" if req.depth_map else "depth_estimator"
        raise invalid(field, f"applies only to SD2 depth models; the loaded model is {spec.display_name}")
    return images.check_base64_image(req.depth_map, "depth_map") if req.depth_map else None


def prepare(req: GenerationRequest, kind: str) -> Prepared:
    """Everything that can be refused is refused here, with a 422 naming the field, before the job is queued."""
    req = infotext.apply(req, kind)
    scripts.check_request(kind, req.script_name, req.alwayson_scripts)
    validation.check_limits(req)
    validation.check_work(req)
    validation.check_prompts(req)
    validation.check_unsupported(req)
    sampler_name, scheduler = validation.check_sampler(req)
    validation.check_refiner(req)
    override_settings = validation.check_override_settings(req.override_settings)

    fields = _init_fields(PROCESSING_CLASSES[kind])
    args: dict[str, Any] = {}
    for name, value in req.model_dump().items():
        if name not in fields or name == "sampler_index":  # ours is an index; the API's is a legacy name
            continue
        if value is None and fields[name] is not None:
            continue  # an explicit null means "the default", not None where the engine expects a value
        args[name] = value
    args.update(sampler_name=sampler_name, scheduler=scheduler, override_settings=override_settings,
                do_not_save_samples=not req.save_images, do_not_save_grid=not req.save_images)
    release = _no_uploads
    if kind == "img2img":
        assert isinstance(req, StableDiffusionImg2ImgProcessingAPI)
        args["init_images"], args["mask"] = _check_images(req)
        args.pop("latent_mask", None)
        args["depth_map"] = _check_depth(req)
        uploads = [*args["init_images"], *([args["mask"]] if args["mask"] is not None else []),
                   *([args["depth_map"]] if args["depth_map"] is not None else [])]
        release = waiting_uploads.reserve(sum(image.sent_bytes for image in uploads))
    if kind == "txt2img" and req.firstpass_image:  # check_unsupported refused it without enable_hr
        args["firstpass_image"] = images.check_base64_image(req.firstpass_image, "firstpass_image")
        release = waiting_uploads.reserve(args["firstpass_image"].sent_bytes)
    else:
        args.pop("firstpass_image", None)
    return Prepared(req, args, req.force_task_id, release)


def response(prepared: Prepared, processed: processing.Processed, kind: str) -> dict[str, Any]:
    """A1111's response: base64 images (infotext embedded), the request as `parameters`, `info` as JSON text."""
    req = prepared.request
    encoded = [images.encode_pil_to_base64(im) for im in processed.images] if req.send_images else []
    parameters = req.model_dump()
    if kind == "img2img" and not parameters.get("include_init_images"):
        parameters["init_images"] = None  # A1111 leaves the (large) inputs out unless asked for them
        parameters["mask"] = None
        parameters["depth_map"] = None
    return {"images": encoded, "parameters": parameters, "info": processed.js()}
