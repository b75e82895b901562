"""`Api(app, queue)`: registers A1111's `/sdapi/v1/*` routes and the `/internal/*` routes on a FastAPI app.

Routes of features that do not exist yet are not registered (a 404 tells a client the truth sooner than an
empty answer would): interrogate, hypernetworks,
training (create/train embedding). Server control (stop, restart, kill) exists only with
`--api-server-stop`, as in A1111.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from modules import call_queue, cmd_args, progress, shared
from modules import images as image_files
from modules.api import generation, images, infotext, jobs, scripts, validation
from modules.api import models as m
from modules.api.auth import BasicAuth
from modules.api.errors import ApiError, invalid
from modules.api.routing import make_route_class

FROM_FLAGS: Any = object()  # default of `auth`: read --api-auth, as A1111's Api does


class Api:
    def __init__(self, app: FastAPI, queue: call_queue.JobQueue, *, auth: BasicAuth | None = FROM_FLAGS,
                 log_requests: bool | None = None, internal_routes: bool = True, prepend: bool = False):
        """Register the routes on `app`. `auth` None means open; by default it comes from --api-auth.
        `prepend` puts the routes in front of the app's own (gradio has catch-all routes); internal routes
        the app already serves (the UI's /internal/progress) are left to it."""
        if auth is FROM_FLAGS:
            auth = BasicAuth.from_flag(getattr(shared.cmd_opts, "api_auth", None))
        if log_requests is None:
            log_requests = bool(getattr(shared.cmd_opts, "api_log", False))
        self.app = app
        self.queue = queue
        self.auth = auth
        self.router = APIRouter(route_class=make_route_class(auth, log_requests))
        self._installed, self._prepend = False, prepend
        self._register_sdapi()
        if internal_routes:
            self._register_internal()
        self._install(prepend)

    # --- registration -------------------------------------------------------------------------------------

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        """A1111's name: every route goes through the auth-checking route class, also routes extensions add
        through this method after start-up."""
        if not self._installed:
            self.router.add_api_route(path, endpoint, **kwargs)
            return
        before = list(self.app.router.routes)
        self.app.router.add_api_route(path, endpoint, route_class_override=self.router.route_class, **kwargs)
        if self._prepend:
            self._move_to_front(before)

    def _register_sdapi(self) -> None:
        add, v1 = self.add_api_route, "/sdapi/v1"
        add(f"{v1}/txt2img", self.text2imgapi, methods=["POST"], response_model=m.TextToImageResponse)
        add(f"{v1}/img2img", self.img2imgapi, methods=["POST"], response_model=m.ImageToImageResponse)
        add(f"{v1}/extra-single-image", self.extras_single_image_api, methods=["POST"],
            response_model=m.ExtrasSingleImageResponse)
        add(f"{v1}/extra-batch-images", self.extras_batch_images_api, methods=["POST"],
            response_model=m.ExtrasBatchImagesResponse)
        add(f"{v1}/png-info", self.pnginfoapi, methods=["POST"], response_model=m.PNGInfoResponse)
        add(f"{v1}/progress", self.progressapi, methods=["GET"], response_model=m.ProgressResponse)
        add(f"{v1}/interrupt", self.interruptapi, methods=["POST"])
        add(f"{v1}/skip", self.skip, methods=["POST"])
        add(f"{v1}/options", self.get_config, methods=["GET"], response_model=dict[str, Any])
        add(f"{v1}/options", self.set_config, methods=["POST"])
        add(f"{v1}/cmd-flags", self.get_cmd_flags, methods=["GET"], response_model=dict[str, Any])
        add(f"{v1}/samplers", self.get_samplers, methods=["GET"], response_model=list[m.SamplerItem])
        add(f"{v1}/schedulers", self.get_schedulers, methods=["GET"], response_model=list[m.SchedulerItem])
        add(f"{v1}/upscalers", self.get_upscalers, methods=["GET"], response_model=list[m.UpscalerItem])
        add(f"{v1}/realesrgan-models", self.get_realesrgan_models, methods=["GET"],
            response_model=list[m.RealesrganItem])
        add(f"{v1}/latent-upscale-modes", self.get_latent_upscale_modes, methods=["GET"],
            response_model=list[m.LatentUpscalerModeItem])
        add(f"{v1}/face-restorers", self.get_face_restorers, methods=["GET"],
            response_model=list[m.FaceRestorerItem])
        add(f"{v1}/sd-models", self.get_sd_models, methods=["GET"], response_model=list[m.SDModelItem])
        add(f"{v1}/sd-vae", self.get_sd_vaes, methods=["GET"], response_model=list[m.SDVaeItem])
        add(f"{v1}/prompt-styles", self.get_prompt_styles, methods=["GET"], response_model=list[m.PromptStyleItem])
        add(f"{v1}/refresh-checkpoints", self.refresh_checkpoints, methods=["POST"])
        add(f"{v1}/refresh-vae", self.refresh_vae, methods=["POST"])
        add(f"{v1}/unload-checkpoint", self.unloadapi, methods=["POST"])
        add(f"{v1}/reload-checkpoint", self.reloadapi, methods=["POST"])
        add(f"{v1}/memory", self.get_memory, methods=["GET"], response_model=m.MemoryResponse)
        add(f"{v1}/embeddings", self.get_embeddings, methods=["GET"], response_model=m.EmbeddingsResponse)
        add(f"{v1}/refresh-embeddings", self.refresh_embeddings, methods=["POST"])
        add(f"{v1}/loras", self.get_loras, methods=["GET"], response_model=list[dict[str, Any]])
        add(f"{v1}/refresh-loras", self.refresh_loras, methods=["POST"])
        add(f"{v1}/extensions", self.get_extensions_list, methods=["GET"], response_model=list[m.ExtensionItem])
        add(f"{v1}/scripts", self.get_scripts_list, methods=["GET"], response_model=m.ScriptsList)
        add(f"{v1}/script-info", self.get_script_info, methods=["GET"], response_model=list[m.ScriptInfo])
        # /sdapi/v1/depth(-estimators); sd-webui-controlnet's /controlnet/* routes
        from modules.api import controlnet, depth

        depth.register(self)
        controlnet.register(self)
        if getattr(shared.cmd_opts, "api_server_stop", False):
            from modules.api import server_control

            server_control.register(self)

    def _register_internal(self) -> None:
        taken = {(getattr(r, "path", None), method) for r in self.app.router.routes
                 for method in (getattr(r, "methods", None) or ())}
        for path, endpoint, method, model in (
            ("/internal/progress", self.internal_progress, "POST", m.InternalProgressResponse),
            ("/internal/pending-tasks", self.pending_tasks, "GET", m.PendingTasksResponse),
            ("/internal/ping", self.ping, "GET", None),
        ):
            if (path, method) not in taken:
                self.add_api_route(path, endpoint, methods=[method], response_model=model)

    def _install(self, prepend: bool) -> None:
        before = list(self.app.router.routes)
        self.app.include_router(self.router)
        if prepend:
            self._move_to_front(before)
        self._installed = True

    def _move_to_front(self, before: list[Any]) -> None:
        """Routes added since `before` go first, so no catch-all route of the app shadows them."""
        added = [r for r in self.app.router.routes if r not in before]
        self.app.router.routes[:] = added + before

    # --- generation ---------------------------------------------------------------------------------------

    async def _generate(self, req: m.GenerationRequest, kind: str, request: Request | None = None) -> dict[str, Any]:
        if kind == "img2img":  # base64 and image headers of big uploads take a while: not on the event loop
            prepared = await run_in_threadpool(generation.prepare, req, kind)
        else:  # validation alone is microseconds; a thread hop would cost more
            prepared = generation.prepare(req, kind)
        task_id = prepared.task_id or call_queue.new_task_id(kind)
        # The HTTP request: its client is counted against the per-client limit, and its disconnect cancels the job.
        processed = await jobs.run(self.queue, kind, lambda: prepared.run(kind), task_id, request=request)
        return await run_in_threadpool(generation.response, prepared, processed, kind)

    async def text2imgapi(self, txt2imgreq: m.StableDiffusionTxt2ImgProcessingAPI,
                          request: Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        return await self._generate(txt2imgreq, "txt2img", request)

    async def img2imgapi(self, img2imgreq: m.StableDiffusionImg2ImgProcessingAPI,
                         request: Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        return await self._generate(img2imgreq, "img2img", request)

    # --- extras (postprocessing) ---------------------------------------------------------------------------

    async def _extras(self, req: m.ExtrasBaseRequest, request: Request | None) -> dict[str, Any]:
        from modules.api import extras

        prepared = await run_in_threadpool(extras.prepare, req)  # base64 headers of big uploads: off the loop
        result = await jobs.run(self.queue, "extras", prepared.run, call_queue.new_task_id("extras"),
                                request=request)
        return await run_in_threadpool(extras.response, prepared, result)

    async def extras_single_image_api(self, req: m.ExtrasSingleImageRequest,
                                      request: Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        return await self._extras(req, request)

    async def extras_batch_images_api(self, req: m.ExtrasBatchImagesRequest,
                                      request: Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        return await self._extras(req, request)

    # --- images and progress ------------------------------------------------------------------------------

    def pnginfoapi(self, req: m.PNGInfoRequest) -> dict[str, Any]:
        image = images.decode_base64_to_image(req.image, "image")
        geninfo, items = image_files.read_info_from_image(image)
        geninfo = geninfo or ""
        parameters = infotext.parse(geninfo) if geninfo else {}
        items = {k: v for k, v in items.items() if isinstance(v, str | int | float | bool)}
        return {"info": geninfo, "items": items, "parameters": parameters}

    def progressapi(self, skip_current_image: bool = False) -> dict[str, Any]:
        state = shared.state
        fraction, eta_relative = state.progress()
        current_image = None
        if not skip_current_image and state.current_image is not None:
            current_image = images.encode_pil_to_base64(state.current_image)
        return {"progress": fraction, "eta_relative": eta_relative, "state": state.dict(),
                "current_image": current_image, "textinfo": state.textinfo, "current_task": progress.current_task()}

    def interruptapi(self, req: m.InterruptRequest | None = None) -> dict[str, Any]:
        """A1111: interrupt the running job. With `id_task`: only that task (a queued one is cancelled)."""
        if req is not None and req.id_task:
            job = self.queue.get(req.id_task)
            if job is None:
                raise ApiError(404, f"no task {req.id_task!r}", "id_task", as_validation=False)
            job.cancel()
            return {}
        shared.state.interrupt()
        return {}

    def skip(self) -> None:
        shared.state.skip()

    # --- settings and flags -------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        opts = shared.opts
        keys = list(dict.fromkeys([*opts.data_labels, *opts.data]))
        values = {k: opts.data.get(k, opts.get_default(k)) for k in keys}
        return _plain(values)

    async def set_config(self, req: dict[str, Any]) -> None:
        """A1111's POST /options: settings marked restrict_api are ignored; sd_model_checkpoint switches the
        model (on the queue, so never under a running job); the result is saved to config.json. Every value is
        checked (type, range, choices) before any is set: one bad value refuses the whole request with a 422
        naming it, and nothing is written."""
        opts = shared.opts
        values: dict[str, Any] = {}
        for key, value in req.items():
            if key not in opts.data_labels:
                raise invalid(key, f"no setting named {key!r}")
            if opts.data_labels[key].restrict_api:
                continue
            values[key] = validation.check_setting(key, value, (key,))
        checkpoint = values.pop("sd_model_checkpoint", None)
        vae_changed = False
        for key, value in values.items():
            changed = opts.set(key, value, is_api=True)
            vae_changed |= changed and key == "sd_vae"
        if checkpoint is not None or vae_changed:
            await jobs.run(self.queue, "settings", lambda: self._switch_model(checkpoint, vae_changed))
        opts.save(shared.config_filename)

    @staticmethod
    def _switch_model(checkpoint: str | None, vae_changed: bool) -> None:
        from modules import sd_models

        if checkpoint is not None:
            info = sd_models.get_closet_checkpoint_match(str(checkpoint))
            if info is None:  # removed from disk since the request was checked
                raise ValueError(f"Checkpoint not found: {checkpoint!r}")
            current = getattr(shared.sd_model, "sd_checkpoint_info", None)
            if current is None or current.filename != info.filename:
                sd_models.load_model(info)
                return  # loading applies the VAE choice too
        if vae_changed:
            sd_models.reload_vae_weights()

    def get_cmd_flags(self) -> dict[str, Any]:
        return _plain(cmd_args.redacted(shared.cmd_opts))

    # --- lists --------------------------------------------------------------------------------------------

    def get_samplers(self) -> list[dict[str, Any]]:
        from modules.engine.sampling.registry import all_samplers

        return [{"name": s.name, "aliases": list(s.aliases or []), "options": dict(s.options or {})}
                for s in all_samplers]

    def get_schedulers(self) -> list[dict[str, Any]]:
        from modules.engine.sampling.schedules import schedulers

        return [{"name": s.name, "label": s.label, "aliases": s.aliases, "default_rho": s.default_rho,
                 "need_inner_model": s.need_inner_model} for s in schedulers]

    def get_upscalers(self) -> list[dict[str, Any]]:
        from modules import upscalers

        return upscalers.api_items()

    def get_realesrgan_models(self) -> list[dict[str, Any]]:
        from modules import upscalers

        return upscalers.realesrgan_items()

    def get_latent_upscale_modes(self) -> list[dict[str, Any]]:
        return [{"name": name} for name in shared.latent_upscale_modes]

    def get_face_restorers(self) -> list[dict[str, Any]]:
        from modules import face_restoration

        return face_restoration.api_items()

    def get_sd_models(self) -> list[dict[str, Any]]:
        from modules.models import registry

        def config(filename: str) -> str | None:
            yaml = os.path.splitext(filename)[0] + ".yaml"
            return yaml if os.path.isfile(yaml) else None

        return [{"title": x.title, "model_name": x.model_name, "hash": x.shorthash, "sha256": x.sha256,
                 "filename": x.filename, "config": config(x.filename)} for x in registry.checkpoints_list.values()]

    def get_sd_vaes(self) -> list[dict[str, Any]]:
        from modules.models import vae_registry

        return [{"model_name": name, "filename": path} for name, path in vae_registry.vae_dict.items()]

    def get_prompt_styles(self) -> list[dict[str, Any]]:
        from modules.styles import DIVIDER_PATH

        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in infotext.styles_db().styles.values() if s.path != DIVIDER_PATH]

    def get_extensions_list(self) -> list[dict[str, Any]]:
        """A1111's: the installed extensions that are git clones (remote without credentials), enabled or not."""
        from modules import extensions

        return [{"name": ext.name, "remote": ext.remote, "branch": ext.branch, "commit_hash": ext.commit_hash,
                 "version": ext.version, "commit_date": ext.commit_date, "enabled": ext.enabled}
                for ext in extensions.scan_with_settings() if ext.remote]

    def get_scripts_list(self) -> dict[str, list[str]]:
        return {kind: scripts.names(kind) for kind in scripts.KINDS}

    def get_script_info(self) -> list[dict[str, Any]]:
        return scripts.info()

    def get_memory(self) -> dict[str, Any]:
        return {"ram": _ram(), "cuda": _cuda()}

    # --- model management ---------------------------------------------------------------------------------

    def refresh_checkpoints(self) -> None:
        from modules.models import registry

        registry.list_models()

    def get_embeddings(self) -> dict[str, Any]:
        from modules import textual_inversion

        textual_inversion.embedding_db.load_textual_inversion_embeddings()
        return textual_inversion.api_listing()

    def refresh_embeddings(self) -> None:
        from modules import textual_inversion

        textual_inversion.embedding_db.load_textual_inversion_embeddings(force_reload=True)

    def get_loras(self) -> list[dict[str, Any]]:
        """The Lora extension's route: [{name, alias, path, metadata}] (the safetensors metadata, as read)."""
        from modules.networks import files

        return _plain(files.api_listing())

    def refresh_loras(self) -> None:
        from modules.networks import files

        files.list_available_networks()

    def refresh_vae(self) -> None:
        from modules.models import vae_registry

        vae_registry.refresh_vae_list()

    async def unloadapi(self) -> dict[str, Any]:
        from modules import sd_models

        await jobs.run(self.queue, "unload-checkpoint", sd_models.unload_model_weights)
        return {}

    async def reloadapi(self) -> dict[str, Any]:
        from modules import sd_models

        await jobs.run(self.queue, "reload-checkpoint", lambda: sd_models.load_model())
        return {}

    # --- internal routes (the browser's progress polling) -------------------------------------------------

    def internal_progress(self, req: m.InternalProgressRequest) -> dict[str, Any]:
        return progress.progress_for(req.id_task, id_live_preview=req.id_live_preview,
                                     live_preview=req.live_preview)

    def pending_tasks(self) -> dict[str, Any]:
        tasks = progress.pending_tasks()
        return {"size": len(tasks), "tasks": tasks}

    def ping(self) -> dict[str, Any]:
        return {}


def _plain(values: Any) -> Any:
    """JSON-safe copy: a value an extension stored that JSON cannot hold is shown as its text."""
    return json.loads(json.dumps(values, default=str))


def _ram() -> dict[str, Any]:
    try:
        import psutil

        process = psutil.Process(os.getpid())
        rss = process.memory_info().rss
        total = psutil.virtual_memory().total
        return {"free": total - rss, "used": rss, "total": total}
    except Exception as e:  # psutil missing or the platform says no: report it, as A1111 does
        return {"error": str(e)}


def _cuda() -> dict[str, Any]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        s = torch.cuda.memory_stats()

        def pair(key: str) -> dict[str, int]:
            return {"current": s.get(f"{key}.all.current", 0), "peak": s.get(f"{key}.all.peak", 0)}

        return {"system": {"free": free, "used": total - free, "total": total},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
    except Exception as e:
        return {"error": str(e)}

