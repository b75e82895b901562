"""The route class every API route uses: auth first, a body-size limit, A1111's error JSON, timing header.

Doing this per route (not as app middleware) means the same guarantees hold when the API is mounted on the
UI's already-running FastAPI app, where middleware can no longer be added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from modules import shared
from modules.api import errors
from modules.api.auth import BasicAuth

log = logging.getLogger("api")

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reader passes it on instead of turning it into a 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit // 2**20} MB (setting api_max_body_mb)")


def max_body_bytes() -> int:
    return int(getattr(shared.opts, "api_max_body_mb", 100)) * 1024 * 1024


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive` that fails once more than `limit` body bytes arrived (chunked uploads have no length)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)


class ApiRoute(APIRoute):
    """APIRoute whose handler checks `auth` (set on the class by `make_route_class`) before reading the body."""

    auth: BasicAuth | None = None
    log_requests: bool = False

    def get_route_handler(self) -> Handler:
        original = super().get_route_handler()
        auth, log_requests = self.auth, self.log_requests

        async def handler(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if auth is not None:
                    auth.require(request)
                limit = max_body_bytes()
                _check_declared_length(request, limit)
                request = Request(request.scope, _limited_receive(request.receive, limit))
                response = await original(request)
            except Exception as e:  # the A1111 error JSON, whichever app this route lives in
                response = errors.response_for(e, request.url.path)
            elapsed = time.perf_counter() - started
            response.headers["X-Process-Time"] = f"{elapsed:.4f}"
            if log_requests:
                log.info("API %s %s %s %.3fs", request.method, request.url.path, response.status_code, elapsed)
            return response

        return handler


def make_route_class(auth: BasicAuth | None, log_requests: bool) -> type[ApiRoute]:
    """A route class bound to one server's auth and logging choice (not global: tests run several apps)."""
    return type("BoundApiRoute", (ApiRoute,), {"auth": auth, "log_requests": log_requests})
