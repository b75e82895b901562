"""A1111's error JSON, `{"error", "detail", "body", "errors"}`, for every failure the API reports.

Bad input is a 4xx that names the field; only our own bugs are a 500 (logged with the traceback, never shown
to the client). The same handlers serve `create_app()` (registered as FastAPI exception handlers) and routes
mounted on a foreign app (called by `routing.ApiRoute`), so both give the same shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_MAX_ECHO = 200  # longest string echoed back in "body"/"detail" (base64 images would be megabytes)


class ApiError(ValueError):
    """A request we refuse: status code, readable detail and, for validation, the field (`loc`) at fault.

    A ValueError, so that when one is raised inside a queued job (an image found damaged while decoding) the
    queue logs it as bad input, without a traceback."""

    def __init__(self, status_code: int, detail: str, field: str | Sequence[str | int] | None = None,
                 headers: Mapping[str, str] | None = None, as_validation: bool = True):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        # as_validation: `detail` is pydantic's list of {loc, msg, type}; else A1111's plain HTTPException text
        self.as_validation = as_validation
        self.loc: list[str | int] | None = None
        if field is not None:
            self.loc = ["body", field] if isinstance(field, str) else ["body", *field]
        self.headers = dict(headers or {})


def invalid(field: str | Sequence[str | int], message: str) -> ApiError:
    """422 for one field, shaped like pydantic's own validation errors."""
    return ApiError(422, message, field)


def _shorten(value: Any, depth: int = 0) -> Any:
    """The value with long strings cut (an error never echoes megabytes of base64 back), made JSON-safe."""
    if isinstance(value, str):
        return value if len(value) <= _MAX_ECHO else f"{value[:_MAX_ECHO]}... ({len(value)} characters)"
    if depth > 8:
        return "..."
    if isinstance(value, Mapping):
        return {str(k): _shorten(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple):
        return [_shorten(v, depth + 1) for v in value[:100]]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity; the 422 for them must not fail to encode
    return value


def _loc_text(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def error_json(status_code: int, error: str, detail: Any, body: Any = "", errors: str = "",
               headers: Mapping[str, str] | None = None) -> JSONResponse:
    content = {"error": error, "detail": _shorten(detail), "body": _shorten(body), "errors": errors}
    return JSONResponse(status_code=status_code, content=jsonable_encoder(content), headers=dict(headers or {}))


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 listing every field at fault: `detail` is pydantic's list (as FastAPI gives it), `errors` one line."""
    details = []
    for e in exc.errors():
        item = {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        if "input" in e:
            item["input"] = e["input"]
        details.append(item)
    errors = "; ".join(f"{_loc_text(d['loc'])}: {d['msg']}" for d in details)
    return error_json(422, "RequestValidationError", details, getattr(exc, "body", ""), errors)


def api_error_response(exc: ApiError) -> JSONResponse:
    if exc.loc is None:
        return error_json(exc.status_code, "HTTPException", exc.detail, "", exc.detail, exc.headers)
    errors = f"{_loc_text(exc.loc)}: {exc.detail}"
    if not exc.as_validation:
        return error_json(exc.status_code, "HTTPException", exc.detail, "", errors, exc.headers)
    detail: Any = [{"type": "value_error", "loc": exc.loc, "msg": exc.detail}]
    return error_json(exc.status_code, "RequestValidationError", detail, "", errors, exc.headers)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    return error_json(exc.status_code, "HTTPException", exc.detail, "", str(exc.detail), exc.headers)


def unexpected_response(exc: BaseException, where: str = "") -> JSONResponse:
    """A bug of ours: logged with its traceback; the client gets the type and message, no trace."""
    log.error("API error%s: %s", f" in {where}" if where else "", exc, exc_info=exc)
    return error_json(500, type(exc).__name__, "", "", str(exc)[:1000])


def response_for(exc: BaseException, where: str = "") -> JSONResponse:
    if isinstance(exc, ApiError):
        return api_error_response(exc)
    if isinstance(exc, RequestValidationError):
        return validation_response(exc)
    if isinstance(exc, StarletteHTTPException):
        return http_error_response(exc)
    return unexpected_response(exc, where)


def install_handlers(app: FastAPI) -> None:
    """FastAPI exception handlers giving A1111's error JSON (404s, 405s and anything outside our routes)."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc, request.url.path)

    for exc_class in (ApiError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handler)
