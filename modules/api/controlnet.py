"""sd-webui-controlnet's HTTP routes, `/controlnet/*`, with the extension's request and answer shapes, so client
scripts written for A1111 with the extension work unchanged.

- GET  /controlnet/version                      {"version": 2}: the extension's API version (its
  `external_code.get_api_version()`, unchanged from 1.1.2xx through its last 1.1.4xx releases).
- GET  /controlnet/model_list?update=true       {"model_list": ["name [hash]", ...]}: every control model file
  (ControlNet, T2I-Adapter, IP-Adapter); `update` (default true, as there) scans the folders again first.
- GET  /controlnet/module_list?alias_names=false {"module_list", "module_detail"}: preprocessors by their internal
  keys ("depth"), or with `alias_names=true` by their UI labels ("depth_midas").
- GET  /controlnet/control_types                {"control_types": {type: {module_list, model_list,
  default_option, default_model}}}: models matched to a type as the extension matches them, by the type's name
  or one of its keywords in the title ("canny", "seg", "t2ia", ...), "None" first.
- GET  /controlnet/settings                     {"control_net_unit_count": n}
- POST /controlnet/detect                       a preprocessor run on base64 pictures: {"images": [base64 PNG],
  "info": "Success"}. It runs as a job on the shared queue, so it never races a generation for the GPU.

Differences from the extension, on purpose:
- detect never answers "poses": no preprocessor here hands out OpenPose keypoints (only the drawn skeleton).
- `controlnet_masks` are taken only by the Inpaint preprocessors (one mask per picture, at its size; the answer
  shows the masked area half transparent, as the extension's does); for any other preprocessor they are refused
  by name instead of being ignored.
- `low_vram`: preprocessor networks that this request had to load are unloaded again when it is done.
- Bad input is a 422 naming the field (A1111's error JSON), never a 500: an unknown module, no pictures, too many
  or too large pictures (api_max_init_images, api_max_input_pixels), a preprocessor whose weight file is missing
  (the message names where it belongs, relative to the data dir).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from modules import shared
from modules.api import images, validation
from modules.api.errors import invalid
from modules.controlnet import control_types as control_types_module

API_VERSION = 2  # sd-webui-controlnet's external_code.get_api_version()
MASKED_TYPE = "Inpaint"  # preprocessors of this control type take (and need) a mask per picture


class DetectRequest(BaseModel):
    """The extension's body fields, with its defaults (-1: the preprocessor's own default)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    controlnet_module: str = Field("none", description="a preprocessor from /controlnet/module_list")
    controlnet_input_images: list[str] = Field([], description="base64 pictures (or data: URLs)")
    controlnet_processor_res: int = Field(-1, description="processor resolution; -1: the preprocessor's default")
    controlnet_threshold_a: float = Field(-1, description="threshold A; -1: the preprocessor's default")
    controlnet_threshold_b: float = Field(-1, description="threshold B; -1: the preprocessor's default")
    controlnet_masks: list[str] | None = Field(None, description="Inpaint preprocessors: one base64 mask per "
                                                                 "picture (white = masked)")
    low_vram: bool = Field(False, description="unload the preprocessor's networks again afterwards")


class DetectResponse(BaseModel):
    images: list[str]  # base64 PNG, one per input picture
    info: str


# --- lists -------------------------------------------------------------------------------------------------------


def model_titles(update: bool) -> list[str]:
    return control_types_module.model_titles(update)


def control_types() -> dict[str, dict[str, Any]]:
    return control_types_module.control_types()


# --- detect ------------------------------------------------------------------------------------------------------


def _display_path(path: str) -> str:
    from modules.depth.weights import display_path

    return display_path(path)


def _picture(image: Image.Image) -> np.ndarray:
    """The array the preprocessor gets: RGBA when the upload has transparency (composited on white, as the
    extension's HWC3 does), RGB otherwise."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def _shown_with_mask(detected: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The extension's inpaint display: the picture with the masked area half transparent."""
    if mask.shape[:2] != detected.shape[:2]:
        mask = np.asarray(Image.fromarray(mask).resize((detected.shape[1], detected.shape[0]), Image.NEAREST))
    alpha = (255 - mask // 2).astype(np.uint8)
    return np.dstack([detected[:, :, :3], alpha])


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class PreparedDetect:
    request: DetectRequest
    module: str  # the registry's name of the preprocessor
    uploads: list[images.CheckedImage]
    masks: list[images.CheckedImage]

    def run(self) -> dict[str, Any]:
        """In the job: decode, run the preprocessor on every picture, encode the maps."""
        from modules.models import memory

        loaded_before = {h.name for h in memory.owner.handles()}
        try:
            return {"images": [self._detect(i) for i in range(len(self.uploads))], "info": "Success"}
        finally:
            if self.request.low_vram:
                for handle in memory.owner.handles():
                    if handle.name not in loaded_before:
                        memory.owner.unload(handle.name)

    def _detect(self, index: int) -> str:
        from modules.controlnet import preprocessors
        from modules.controlnet.preprocessor_images import hwc3
        from modules.models.checkpoint_files import ModelFileError

        req = self.request
        picture = _picture(self.uploads[index].load())
        mask = None
        if self.masks:
            mask = np.asarray(self.masks[index].load().convert("L"))  # sizes were checked in `prepare`
            picture = hwc3(picture)  # the mask replaces any transparency of the picture
        try:
            detected = preprocessors.run(self.module, picture, req.controlnet_processor_res,
                                         req.controlnet_threshold_a, req.controlnet_threshold_b)
        except preprocessors.MissingWeights as e:
            raise invalid("controlnet_module", f'ControlNet preprocessor "{e.preprocessor}" needs its weights at '
                                               f"{_display_path(e.path)}; the file is missing") from None
        except preprocessors.UnknownPreprocessor as e:  # unregistered since the request was checked
            raise invalid("controlnet_module", str(e)) from None
        except ModelFileError as e:  # the preprocessor's weight file is unusable; the message names it
            raise invalid("controlnet_module", str(e)) from None
        except ValueError as e:  # the registry's refusals of a picture (too large at this resolution, ...)
            raise invalid(("controlnet_input_images", index), str(e)) from None
        return _png(_shown_with_mask(detected, mask) if mask is not None else detected)


def prepare(req: DetectRequest) -> PreparedDetect:
    """Everything that can be refused before running is refused here, with a 422 naming the field."""
    from modules.controlnet import preprocessors

    try:
        preprocessor = preprocessors.get(req.controlnet_module)
    except preprocessors.UnknownPreprocessor as e:
        raise invalid("controlnet_module", str(e)) from None
    if not req.controlnet_input_images:
        raise invalid("controlnet_input_images", "No image selected: send at least one base64 picture")
    uploads = validation.check_image_list("controlnet_input_images", req.controlnet_input_images)
    masks: list[images.CheckedImage] = []
    takes_mask = MASKED_TYPE in preprocessor.control_types
    if takes_mask and len(req.controlnet_masks or []) != len(uploads):
        raise invalid("controlnet_masks", f"Preprocessor {preprocessor.name} requires `controlnet_masks` param: "
                                          f"one mask per picture ({len(uploads)})")
    if req.controlnet_masks and not takes_mask:
        raise invalid("controlnet_masks", f"preprocessor {preprocessor.name} takes no mask; only the "
                                          f"{MASKED_TYPE} preprocessors do")
    if takes_mask:
        masks = validation.check_image_list("controlnet_masks", req.controlnet_masks or [])
        for i, (mask, upload) in enumerate(zip(masks, uploads, strict=True)):
            if mask.size != upload.size:
                raise invalid(("controlnet_masks", i), f"the mask is {mask.size[0]}x{mask.size[1]}, its picture "
                                                       f"{upload.size[0]}x{upload.size[1]}; they must be the same "
                                                       "size")
    return PreparedDetect(req, preprocessor.name, uploads, masks)


# --- registration ------------------------------------------------------------------------------------------------


def register(api: Any) -> None:
    """Add the routes to an `Api` (modules/api/api.py): its auth, error JSON and queue."""
    from starlette.concurrency import run_in_threadpool

    from modules import call_queue
    from modules.api import jobs
    from modules.api.generation import waiting_uploads

    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    def model_list(update: bool = True) -> dict[str, list[str]]:
        return {"model_list": model_titles(update)}

    def module_list(alias_names: bool = False) -> dict[str, Any]:
        from modules.controlnet import preprocessors

        return {"module_list": preprocessors.api_names(alias_names),
                "module_detail": preprocessors.module_detail(alias_names)}

    def control_types_api() -> dict[str, Any]:
        return {"control_types": control_types()}

    def settings() -> dict[str, int]:
        return {"control_net_unit_count": int(shared.opts.control_net_unit_count)}

    async def detect(req: DetectRequest, request: Request) -> dict[str, Any]:
        prepared = await run_in_threadpool(prepare, req)  # base64 header checks of big uploads: off the loop
        sent = sum(u.sent_bytes for u in prepared.uploads) + sum(m.sent_bytes for m in prepared.masks)
        release = waiting_uploads.reserve(sent)

        def work() -> dict[str, Any]:
            release()  # running now: the uploads no longer wait
            return prepared.run()

        try:
            return await jobs.run(api.queue, "controlnet-detect", work, call_queue.new_task_id("controlnet-detect"),
                                  request=request)
        finally:
            release()  # cancelled before it ran

    add = api.add_api_route
    add("/controlnet/version", version, methods=["GET"], response_model=dict[str, int])
    add("/controlnet/model_list", model_list, methods=["GET"], response_model=dict[str, list[str]])
    add("/controlnet/module_list", module_list, methods=["GET"], response_model=dict[str, Any])
    add("/controlnet/control_types", control_types_api, methods=["GET"], response_model=dict[str, Any])
    add("/controlnet/settings", settings, methods=["GET"], response_model=dict[str, int])
    add("/controlnet/detect", detect, methods=["POST"], response_model=DetectResponse)
