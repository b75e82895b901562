"""Serving the API: alone (`--nowebui`, port 7861 by default) or added to the UI's FastAPI app (`--api`).

webui.py wires it with two calls:
    if cmd_opts.nowebui: serve_api_only(cmd_opts)      # instead of building the UI; blocks until stopped
    if cmd_opts.api: mount(app)                         # with the FastAPI app the UI server returned
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from fastapi import FastAPI

from modules import call_queue, shared
from modules.api import errors
from modules.api.api import FROM_FLAGS, Api
from modules.api.auth import BasicAuth

log = logging.getLogger(__name__)

DEFAULT_PORT = 7861


def create_app(queue: call_queue.JobQueue | None = None, *, auth: BasicAuth | None = FROM_FLAGS,
               log_requests: bool | None = None) -> FastAPI:
    """A FastAPI app serving only the API, with OpenAPI docs at /docs (and /redoc). Auth from --api-auth
    unless `auth` is given (None: open)."""
    app = FastAPI(title="Stable Diffusion web UI API", description="AUTOMATIC1111-compatible /sdapi/v1",
                  docs_url="/docs", redoc_url="/redoc")
    errors.install_handlers(app)
    app.state.api = Api(app, queue or call_queue.queue, auth=auth, log_requests=log_requests)
    return app


def mount(app: FastAPI, queue: call_queue.JobQueue | None = None) -> Api:
    """Add the API to an existing (the UI's) FastAPI app, in front of its routes. Works after the server
    started. /internal routes the app already has stay its own: the UI server must then also accept API
    credentials on them (see `modules.api.auth.allowed_on_ui_route`)."""
    return Api(app, queue or call_queue.queue, prepend=True)


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
    except ValueError as e:  # a malformed --api-auth: say which entry, never echo it
        print(f"Cannot start the API: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if app.state.api.auth is None and _host(cmd_opts) not in ("127.0.0.1", "localhost", "::1"):
        print("Warning: the API listens on the network without --api-auth; anyone who reaches it can use it.",
              file=sys.stderr)
    config = uvicorn_config(app, cmd_opts)
    scheme = "https" if cmd_opts.tls_keyfile and cmd_opts.tls_certfile else "http"
    print(f"API on {scheme}://{config.host}:{config.port}{config.root_path} (docs at /docs)")
    try:
        uvicorn.Server(config).run()
    finally:
        call_queue.queue.shutdown(timeout=5)
