"""Serving the API: alone (`--nowebui`, port 7861 by default) or added to the UI's FastAPI app (`--api`).

webui.py wires it with two calls:
    if cmd_opts.nowebui: serve_api_only(cmd_opts)      # instead of building the UI; blocks until stopped
    if cmd_opts.api: mount(app)                         # with the FastAPI app the UI server returned
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from modules import call_queue, http_guard, restart, shared
from modules.api import errors
from modules.api.api import FROM_FLAGS, Api
from modules.api.auth import BasicAuth

log = logging.getLogger(__name__)

DEFAULT_PORT = 7861


def create_app(queue: call_queue.JobQueue | None = None, *, auth: BasicAuth | None = FROM_FLAGS,
               log_requests: bool | None = None) -> FastAPI:
    """A FastAPI app serving only the API, with OpenAPI docs at /docs (and /redoc, /openapi.json). Auth from
    --api-auth unless `auth` is given (None: open); it covers the docs too. Every request passes
    `modules.http_guard` first (Host, Origin, CORS flags, content types, api_max_body_mb, nosniff).

    Raises ValueError for a malformed --api-auth, --allowed-hosts or --cors-allow-origins-regex."""
    app = FastAPI(title="Stable Diffusion web UI API", description="AUTOMATIC1111-compatible /sdapi/v1",
                  docs_url=None, redoc_url=None, openapi_url=None)
    guard = http_guard.config_from_flags(shared.cmd_opts, body_limit=http_guard.body_limits(None))
    app.add_middleware(http_guard.HttpGuard, config=guard)  # the outermost of the app's own middleware
    errors.install_handlers(app)
    api = Api(app, queue or call_queue.queue, auth=auth, log_requests=log_requests)
    _add_docs(app, api)
    app.state.api = api
    return app


def _add_docs(app: FastAPI, api: Api) -> None:
    """FastAPI's own docs routes would bypass the route class, hence the auth: these go through it."""
    router = APIRouter(route_class=api.router.route_class)

    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - docs")

    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="openapi.json", title=f"{app.title} - ReDoc")

    for path, endpoint in (("/openapi.json", openapi), ("/docs", docs), ("/redoc", redoc)):
        router.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
    app.include_router(router)


def mount(app: FastAPI, queue: call_queue.JobQueue | None = None) -> Api:
    """Add the API to an existing (the UI's) FastAPI app, in front of its routes. Works after the server
    started. /internal routes the app already has stay its own: the UI server must then also accept API
    credentials on them (see `modules.api.auth.allowed_on_ui_route`)."""
    api = Api(app, queue or call_queue.queue, prepend=True)
    _warn_if_open(api, shared.cmd_opts)
    return api


def _warn_if_open(api: Api, cmd_opts: argparse.Namespace) -> None:
    """The API without --api-auth is open to whoever reaches it (as in A1111, where --gradio-auth does not
    cover it): say so when it can be reached from elsewhere or the UI itself has a login."""
    if api.auth is not None:
        return
    public = _host(cmd_opts) not in ("127.0.0.1", "localhost", "::1") or getattr(cmd_opts, "share", False)
    if public or getattr(cmd_opts, "gradio_auth", None) or getattr(cmd_opts, "gradio_auth_path", None):
        print("Warning: the API has no --api-auth, so anyone who reaches the server can use it "
              "(--gradio-auth protects only the UI).", file=sys.stderr)


def _host(cmd_opts: argparse.Namespace) -> str:
    if cmd_opts.server_name:
        return cmd_opts.server_name
    return "0.0.0.0" if cmd_opts.listen else "127.0.0.1"


def uvicorn_config(app: FastAPI, cmd_opts: argparse.Namespace) -> Any:
    import uvicorn

    subpath = (cmd_opts.subpath or "").strip().strip("/")
    return uvicorn.Config(
        app, host=_host(cmd_opts), port=cmd_opts.port or DEFAULT_PORT,
        timeout_keep_alive=cmd_opts.timeout_keep_alive, root_path=f"/{subpath}" if subpath else "",
        ssl_keyfile=cmd_opts.tls_keyfile, ssl_certfile=cmd_opts.tls_certfile, log_level="warning",
    )


def serve_api_only(cmd_opts: argparse.Namespace | None = None) -> None:
    """--nowebui: serve the API with uvicorn until interrupted, then stop the job queue."""
    import uvicorn

    cmd_opts = cmd_opts or shared.cmd_opts
    try:
        app = create_app()
    except ValueError as e:  # a malformed --api-auth (which entry, never echoed) or guard flag
        print(f"Cannot start the API: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    _warn_if_open(app.state.api, cmd_opts)
    from modules import script_callbacks

    script_callbacks.app_started_callback(None, app)  # extensions add their routes here, as in A1111
    config = uvicorn_config(app, cmd_opts)
    scheme = "https" if cmd_opts.tls_keyfile and cmd_opts.tls_certfile else "http"
    print(f"API on {scheme}://{config.host}:{config.port}{config.root_path} (docs at /docs)")
    server = uvicorn.Server(config)

    def exit_on_stop() -> None:  # POST /sdapi/v1/server-stop: uvicorn's own clean shutdown
        restart.wait_for_stop()
        server.should_exit = True

    threading.Thread(target=exit_on_stop, name="stop-watcher", daemon=True).start()
    try:
        server.run()
    finally:
        call_queue.queue.shutdown(timeout=5)
