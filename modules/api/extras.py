"""Extras over the API (A1111's `/extra-single-image` and `/extra-batch-images`): request -> checked uploads and
arguments -> a job on the shared queue running `modules.postprocessing` -> `{html_info, image(s)}`.

Refused before queueing, with a 422 naming the field: unknown upscaler names, a face restorer without a
model, images that break the API's upload limits, and results larger than `api_max_width` x `api_max_height`.
As in A1111, API results are returned, not saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules import postprocessing, shared
from modules.api import images, validation
from modules.api.errors import invalid
from modules.api.generation import waiting_uploads
from modules.api.models import ExtrasBaseRequest, ExtrasBatchImagesRequest, ExtrasSingleImageRequest


@dataclass
class PreparedExtras:
    request: ExtrasBaseRequest
    uploads: list[images.CheckedImage]
    release_uploads: Callable[[], None]

    def run(self) -> postprocessing.ExtrasResult:
        """In the job: decode the uploads, then run the scripts (results are not saved, as in A1111's API)."""
        self.release_uploads()
        req = self.request
        loaded = [upload.load() for upload in self.uploads]
        args = postprocessing.extras_args(req.resize_mode, req.gfpgan_visibility, req.codeformer_visibility,
                                          req.codeformer_weight, req.upscaling_resize, req.upscaling_resize_w,
                                          req.upscaling_resize_h, req.upscaling_crop, req.upscaler_1, req.upscaler_2,
                                          req.extras_upscaler_2_visibility)
        with postprocessing.upscale_order(req.upscale_first):
            return postprocessing.postprocess(loaded, args, save_output=False, show_results=True)


def _check_upscaler(name: str, field: str) -> None:
    if name in ("", "None"):
        return
    if not any(u.name == name for u in shared.sd_upscalers):
        raise invalid(field, f"could not find upscaler named {name!r}")


def _check_restorer(name: str, visibility: float, field: str) -> None:
    if visibility > 0:
        try:
            postprocessing.face_restorer(name)
        except ValueError as e:
            raise invalid(field, str(e)) from None


def _check_size(req: ExtrasBaseRequest, size: tuple[int, int], field: Any) -> None:
    """The result may not be larger than the API's largest width and height (what a generation may make)."""
    most_w, most_h = validation.limit("api_max_width"), validation.limit("api_max_height")
    if req.upscaler_1 in ("", "None"):
        return  # the picture keeps its size
    if req.resize_mode == 1:
        for value, most, name, setting in ((req.upscaling_resize_w, most_w, "upscaling_resize_w", "api_max_width"),
                                           (req.upscaling_resize_h, most_h, "upscaling_resize_h", "api_max_height")):
            if value > most:
                raise invalid(name, f"{value} is larger than {most} (setting {setting})")
        factor = max(req.upscaling_resize_w / size[0], req.upscaling_resize_h / size[1])
        w, h = int(size[0] * factor), int(size[1] * factor)
        if not req.upscaling_crop and (w > most_w or h > most_h):
            raise invalid("upscaling_crop", f"without crop the result of {field!r} would be {w}x{h}, larger than "
                                            f"{most_w}x{most_h} (settings api_max_width, api_max_height)")
        return
    w, h = int(size[0] * req.upscaling_resize), int(size[1] * req.upscaling_resize)
    if w > most_w or h > most_h:
        raise invalid("upscaling_resize", f"the result of {field!r} would be {w}x{h}, larger than {most_w}x{most_h} "
                                          "(settings api_max_width, api_max_height)")


def prepare(req: ExtrasBaseRequest) -> PreparedExtras:
    """Everything that can be refused is refused here, with a 422 naming the field."""
    _check_upscaler(req.upscaler_1, "upscaler_1")
    _check_upscaler(req.upscaler_2, "upscaler_2")
    _check_restorer("GFPGAN", req.gfpgan_visibility, "gfpgan_visibility")
    _check_restorer("CodeFormer", req.codeformer_visibility, "codeformer_visibility")
    if isinstance(req, ExtrasSingleImageRequest):
        if not req.image:
            raise invalid("image", "send an image (base64)")
        uploads = [images.check_base64_image(req.image, "image")]
    else:
        assert isinstance(req, ExtrasBatchImagesRequest)
        if not req.imageList:
            raise invalid("imageList", "send at least one image")
        uploads = validation.check_image_list("imageList", [item.data for item in req.imageList], ("data",))
    for upload in uploads:
        _check_size(req, upload.size, upload.field)
    release = waiting_uploads.reserve(sum(upload.sent_bytes for upload in uploads))
    return PreparedExtras(req, uploads, release)


def response(prepared: PreparedExtras, result: postprocessing.ExtrasResult) -> dict[str, Any]:
    """A1111's answer: the last infotext as HTML, and the pictures (unless show_extras_results is false)."""
    from modules import ui_common

    html_info = ui_common.plaintext_to_html(result.info)
    show = prepared.request.show_extras_results
    encoded = [images.encode_pil_to_base64(im) for im in result.images] if show else []
    if isinstance(prepared.request, ExtrasSingleImageRequest):
        return {"html_info": html_info, "image": encoded[0] if encoded else None}
    return {"html_info": html_info, "images": encoded}
