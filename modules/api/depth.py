"""`POST /sdapi/v1/depth` (a picture in, its depth map out) and `GET /sdapi/v1/depth-estimators`.

The route checks the request (422 naming the field), then runs `modules.depth.work` as a job on the shared
queue. The map comes back as a 16-bit grey PNG (0 = far, 65535 = near), with the 8-bit grey image and the
coloured preview, each base64 PNG carrying the infotext. Like A1111's API, nothing is saved unless asked.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field

from modules.api import images
from modules.api.errors import invalid


class DepthRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())

    image: str = Field(..., description="base64 picture (or a data: URL)")
    estimator: str = Field("midas_dpt_hybrid", description="one of GET /sdapi/v1/depth-estimators")
    resolution: int = Field(512, ge=64, le=2048, description="processing resolution (short side, pixels)")
    invert: bool = Field(False, description="near black, far white")
    near: float = Field(1.0, ge=0.0, le=1.0, description="values nearer than this become white")
    far: float = Field(0.0, ge=0.0, le=1.0, description="values farther than this become black")
    save_images: bool = Field(False, description="also save the three files to outputs/depth-images")


class DepthResponse(BaseModel):
    depth: str  # base64 16-bit grey PNG
    grey: str  # base64 8-bit grey PNG
    preview: str  # base64 coloured PNG
    info: str
    estimator: str
    width: int
    height: int
    saved: list[str] = []


class EstimatorItem(BaseModel):
    name: str
    label: str
    default_resolution: int
    available: bool  # weights are where the registry looks for them


@dataclass
class PreparedDepth:
    request: DepthRequest
    upload: images.CheckedImage

    def run(self) -> dict[str, Any]:
        from modules.depth import maps, work
        from modules.depth.weights import display_path

        req = self.request
        picture = self.upload.load().convert("RGB")
        result = work.make_depth(picture, req.estimator, req.resolution,
                                 maps.Adjust(req.invert, req.near, req.far))
        saved = [display_path(p) for p in work.save(result)] if req.save_images else []
        return {"depth": _png(result.map16, result.info), "grey": _png(result.grey, result.info),
                "preview": _png(result.preview, result.info), "info": result.info, "estimator": req.estimator,
                "width": picture.width, "height": picture.height, "saved": saved}


def _png(image: Image.Image, info: str) -> str:
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", info)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def prepare(req: DepthRequest) -> PreparedDepth:
    """Everything that can be refused is refused here, before the job waits in line."""
    from modules.depth import estimators

    if req.estimator not in estimators.names():
        raise invalid("estimator", f"unknown depth estimator {req.estimator!r}; known: "
                                   f"{', '.join(estimators.names())}")
    if not req.far < req.near:
        raise invalid("near", f"near ({req.near}) must be greater than far ({req.far})")
    return PreparedDepth(req, images.check_base64_image(req.image, "image"))


def estimator_items() -> list[dict[str, Any]]:
    from modules.depth import estimators, weights

    items = []
    for name in estimators.names():
        spec = estimators.spec(name)
        try:
            weights.find(name)
            available = True
        except weights.MissingDepthWeights:
            available = False
        items.append({"name": name, "label": spec.label, "default_resolution": spec.default_resolution,
                      "available": available})
    return items


def register(api: Any) -> None:
    """Add the routes to an `Api` (modules/api/api.py): the work runs on its queue."""
    from starlette.concurrency import run_in_threadpool

    from modules import call_queue
    from modules.api import jobs

    async def depth_api(req: DepthRequest, request: Request) -> dict[str, Any]:
        prepared = await run_in_threadpool(prepare, req)  # base64 header checks of a big upload: off the loop
        return await jobs.run(api.queue, "depth", prepared.run, call_queue.new_task_id("depth"), request=request)

    def estimators_api() -> list[dict[str, Any]]:
        return estimator_items()

    api.add_api_route("/sdapi/v1/depth", depth_api, methods=["POST"], response_model=DepthResponse)
    api.add_api_route("/sdapi/v1/depth-estimators", estimators_api, methods=["GET"],
                      response_model=list[EstimatorItem])
