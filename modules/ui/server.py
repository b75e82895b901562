"""Serve the UI: A1111's server flags mapped onto gradio's launch(), plus A1111's /internal/progress route.

--listen / --server-name / --port / --share / --gradio-auth(-path) / --autolaunch / --theme / --subpath /
--tls-keyfile / --tls-certfile / --gradio-allowed-path / --max-upload-size; every request passes
`modules.http_guard` first (Host, Origin, CORS, content types, body size, login on routes gradio leaves open).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import fastapi
import gradio as gr

from modules import http_guard, progress
from modules.ui import extension_routes, extra_networks_routes

DEFAULT_PORT = 7860
# gradio's queue looks for new events every 1 ms and for progress every 10 ms, even with nothing to do: 6% of a
# core for an idle server. 20 ms and 50 ms cost nothing a person notices and leave the core idle.
QUEUE_IDLE_POLL_SECONDS = 0.02
QUEUE_PROGRESS_POLL_SECONDS = 0.05

# Routes gradio serves without its login check, which the guard puts behind it: FastAPI's schema and docs (they
# list every route, ours too with --api), the session heartbeat, cancel/reset, streams, run history, gradio's
# editor and monitoring routes. The log-in page itself, its assets and /login stay open.
LOGIN_PATHS = ("/openapi.json", "/docs", "/redoc", "/gradio_api/heartbeat/", "/gradio_api/cancel",
               "/gradio_api/reset", "/gradio_api/stream/", "/gradio_api/run-history/", "/gradio_api/vibe-",
               "/gradio_api/undo-vibe-edit", "/monitoring/")


def read_auth(cmd_opts: argparse.Namespace) -> list[tuple[str, str]]:
    """Credentials from --gradio-auth (`u:p,u2:p2`) and the --gradio-auth-path files (same format, also by line).

    Raises ValueError naming the file or the position of an entry without a colon (the value is never echoed).
    """
    entries: list[tuple[str, str]] = []
    sources: list[tuple[str, str]] = []
    if cmd_opts.gradio_auth:
        sources.append(("--gradio-auth", cmd_opts.gradio_auth))
    for path in filter(None, (p.strip() for p in (cmd_opts.gradio_auth_path or "").split(","))):
        try:
            with open(path, encoding="utf8") as file:
                sources.append((path, file.read()))
        except OSError as e:
            raise ValueError(f"cannot read --gradio-auth-path file {path}: {e.strerror}") from None
    for where, text in sources:
        items = [x.strip() for line in text.splitlines() for x in line.split(",") if x.strip()]
        for n, item in enumerate(items, start=1):
            user, sep, password = item.partition(":")
            if not sep or not user:
                raise ValueError(f"entry {n} of {where} is not user:password")
            entries.append((user, password))
    return entries


def server_name(cmd_opts: argparse.Namespace) -> str:
    if cmd_opts.server_name:
        return cmd_opts.server_name
    return "0.0.0.0" if cmd_opts.listen else "127.0.0.1"


def subpath(cmd_opts: argparse.Namespace) -> str:
    """--subpath as a root path: `/sd` for `sd`, `/sd/`, `/sd`; "" when unset."""
    value = (cmd_opts.subpath or "").strip().strip("/")
    return f"/{value}" if value else ""


def theme_head(cmd_opts: argparse.Namespace) -> str:
    """--theme light|dark: the page switches to gradio's matching mode unless the URL already picks one."""
    theme = (cmd_opts.theme or "").strip().lower()
    if theme not in ("light", "dark"):
        return ""
    return (
        "<script>(() => { const u = new URL(location.href);"
        f" if (!u.searchParams.has('__theme')) {{ u.searchParams.set('__theme', '{theme}');"
        " location.replace(u.href); } })();</script>"
    )


def launch_kwargs(cmd_opts: argparse.Namespace, css: str, head: str) -> dict[str, Any]:
    auth = read_auth(cmd_opts)
    allowed = [p for p in (cmd_opts.gradio_allowed_path or []) if p]
    kwargs: dict[str, Any] = {
        "server_name": server_name(cmd_opts),
        "server_port": cmd_opts.port or DEFAULT_PORT,
        "share": bool(cmd_opts.share),
        "auth": auth or None,
        "auth_message": "Log in to the Stable Diffusion web UI" if auth else None,
        "inbrowser": bool(cmd_opts.autolaunch),
        "root_path": subpath(cmd_opts) or None,
        "ssl_keyfile": cmd_opts.tls_keyfile,
        "ssl_certfile": cmd_opts.tls_certfile,
        "ssl_verify": bool(cmd_opts.disable_tls_verify),
        "allowed_paths": allowed or None,
        "max_file_size": http_guard.upload_limit_bytes(cmd_opts),  # gradio's own per-file check on uploads
        "show_error": False,  # our callbacks turn errors into readable messages; never a trace in the page
        "prevent_thread_lock": True,
        "css": css,
        "head": theme_head(cmd_opts) + head,
        "favicon_path": None,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        # gradio's own start-up lines name launch() arguments (`share=True`), not our flags: we print ours
        # (announce()). Its public-URL line and share-link errors are printed regardless of quiet.
        "quiet": True,
    }
    return kwargs


# --- A1111's /internal routes -------------------------------------------------------------------------------


def _gradio_logged_in(app: Any, request: fastapi.Request) -> bool:
    """Gradio's own login check (its session cookie), for routes gradio does not guard itself."""
    cookie_id = getattr(app, "cookie_id", "")
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{cookie_id}")
    return bool(token) and getattr(app, "tokens", {}).get(token) is not None


def allowed(app: Any, request: fastapi.Request, api_auth: Any = None) -> bool:
    """Whether a request to our /internal routes may proceed: the UI login, or (with --api) API credentials.
    A1111 left these routes open even with --gradio-auth (#17492)."""
    from modules.api.auth import allowed_on_ui_route

    gradio_auth_on = getattr(app, "auth", None) is not None or getattr(app, "auth_dependency", None) is not None
    return allowed_on_ui_route(request, api_auth, gradio_auth_on, _gradio_logged_in(app, request))


def internal_routes(api_auth: Any = None) -> list[fastapi.routing.APIRoute]:
    """POST /internal/progress with A1111's request and response shape; GET /internal/ping; GET /internal/sysinfo
    (`?attachment=true` to download it), behind the UI login, where A1111 left it open (#17161).

    Handed to gradio when it builds its app, so they exist before the server answers its first request.
    """

    async def progress_route(request: fastapi.Request) -> dict[str, Any]:
        if not allowed(request.app, request, api_auth):
            raise fastapi.HTTPException(status_code=401, detail="Not authenticated")
        try:
            body = await request.json()
        except ValueError:
            raise fastapi.HTTPException(status_code=422, detail="expected a JSON body") from None
        if not isinstance(body, dict) or not isinstance(body.get("id_task"), str):
            raise fastapi.HTTPException(status_code=422, detail="id_task (a string) is required")
        id_live_preview = body.get("id_live_preview", -1)
        if not isinstance(id_live_preview, int) or isinstance(id_live_preview, bool):
            id_live_preview = -1
        return progress.progress_for(body["id_task"], id_live_preview=id_live_preview,
                                     live_preview=bool(body.get("live_preview", True)))

    async def ping(request: fastapi.Request) -> dict[str, Any]:
        if not allowed(request.app, request, api_auth):
            raise fastapi.HTTPException(status_code=401, detail="Not authenticated")
        return {}

    def sysinfo_route(request: fastapi.Request, attachment: bool = False) -> fastapi.Response:
        # a sync route: it runs on the thread pool, and reading package metadata takes a moment
        if not allowed(request.app, request, api_auth):
            raise fastapi.HTTPException(status_code=401, detail="Not authenticated")
        from modules import sysinfo

        headers = {"Content-Disposition": f'attachment; filename="{sysinfo.file_name()}"'} if attachment else {}
        return fastapi.Response(sysinfo.as_text(sysinfo.get()), media_type="application/json", headers=headers)

    return [
        fastapi.routing.APIRoute("/internal/progress", progress_route, methods=["POST"]),
        fastapi.routing.APIRoute("/internal/ping", ping, methods=["GET"]),
        fastapi.routing.APIRoute("/internal/sysinfo", sysinfo_route, methods=["GET"]),
    ]


def add_internal_routes(app: Any, api_auth: Any = None) -> None:
    """The same routes on an app that already exists, in front of its own so no catch-all can shadow them."""
    app.router.routes[0:0] = internal_routes(api_auth)


def guard_config(cmd_opts: argparse.Namespace, api_auth: Any = None) -> http_guard.GuardConfig:
    """The UI server's guard: uploads limited by --max-upload-size (API routes by api_max_body_mb), and
    LOGIN_PATHS open to the UI login or (with --api) API credentials, as our /internal routes are."""

    def logged_in(scope: Any) -> bool:
        return allowed(scope["app"], fastapi.Request(scope), api_auth)

    return http_guard.config_from_flags(
        cmd_opts, body_limit=http_guard.body_limits(http_guard.upload_limit_bytes(cmd_opts)),
        login_paths=LOGIN_PATHS, logged_in=logged_in)


def serve(demo: gr.Blocks, cmd_opts: argparse.Namespace, css: str, head: str,
          before_serving: Callable[[fastapi.FastAPI], Any] | None = None) -> Any:
    """Start the server without blocking; returns gradio's FastAPI app. `before_serving(app)` runs before the first
    connection is accepted (the /sdapi routes: added after `launch()`, clients polling them at start got 404s)."""
    gr.set_static_paths([])  # serve nothing from disk beyond gradio's cache and uploads
    kwargs = launch_kwargs(cmd_opts, css, head)
    api_auth = None
    if getattr(cmd_opts, "api", False):  # parsed before launching, so a bad entry stops us before serving
        from modules.api.auth import BasicAuth

        api_auth = BasicAuth.from_flag(getattr(cmd_opts, "api_auth", None))
    guard = guard_config(cmd_opts, api_auth)  # a bad flag value stops us before serving, too
    kwargs["app_kwargs"] = {
        # gradio's routes are added after these; A1111's file= for extensions' files, and the page's `opts`
        "routes": internal_routes(api_auth) + extension_routes.routes(lambda r: allowed(r.app, r, api_auth))
        + extra_networks_routes.routes(lambda r: allowed(r.app, r, api_auth)),  # the cards' previews
        "lifespan": _lifespan(http_guard.installing_lifespan(guard), before_serving),
    }
    quiet_when_idle(demo)
    app, local_url, share_url = demo.launch(**kwargs)
    http_guard.install(app, guard)  # a no-op unless the server skipped the lifespan: never serve unguarded
    announce(local_url, kwargs["root_path"], bool(cmd_opts.share))
    return app


def quiet_when_idle(demo: gr.Blocks) -> None:
    """Slow gradio's idle polling (its queue's own attributes, read on every pass of its loops)."""
    queue = demo._queue
    queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_IDLE_POLL_SECONDS)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, QUEUE_PROGRESS_POLL_SECONDS)


def _lifespan(guard_lifespan: Callable[[Any], contextlib.AbstractAsyncContextManager[None]],
              before_serving: Callable[[fastapi.FastAPI], Any] | None) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with guard_lifespan(app):  # the guard in front of gradio's middleware, before serving
            if before_serving is not None:
                before_serving(app)
            yield

    return lifespan


def announce(local_url: str, root_path: str | None, share: bool) -> None:
    """Where the UI is, as gradio says it, but with our flag in the share hint (gradio's names `launch()`)."""
    print(f"* Running on local URL:  {local_url.rstrip('/')}")
    if root_path:
        print(f"Serving under the sub-path {root_path}: {local_url.rstrip('/')}{root_path}/")
    if not share:
        print("* To create a public link, add --share to the command line.")
