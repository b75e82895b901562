"""One ASGI middleware in front of every route of both servers (the UI's gradio app and the API-only app).

What it refuses, before any route runs:
- a Host header the server does not answer to (DNS rebinding: an attacker's name resolving to 127.0.0.1 makes a
  browser send `Host: evil.example`). Allowed: loopback names and addresses, --server-name, --allowed-hosts;
  with --listen any IP literal (LAN users type the address; a rebinding attack always uses a name in public
  DNS) and LAN names (single-label, .local, .home.arpa, .internal); with --share the *.gradio.live host of the
  share link; with --ngrok ngrok's domains and a `domain` in --ngrok-options. Other tunnels (cloudflared,
  RunPod's proxy) and reverse proxies that keep their public name in Host get in with --allowed-hosts.
- a state-changing request (POST/PUT/PATCH/DELETE, websocket) whose Origin is neither this server nor allowed by
  --cors-allow-origins / --cors-allow-origins-regex. `Origin: null` and malformed origins fail closed; no Origin
  at all is allowed (non-browser clients), as in ComfyUI.
- the three content types a cross-site <form> can send without a CORS preflight, on the JSON routes (/sdapi/,
  /internal/, /controlnet/): A1111 ran `skip`, `unload-checkpoint`, `refresh-checkpoints` for such posts.
- request bodies over a size limit (declared or counted while they arrive).
- with a login configured, routes gradio leaves open (/openapi.json, its heartbeat, ...) without that login.

What it adds: `X-Content-Type-Options: nosniff` on every response, and CORS headers for exactly the configured
origins. CORS headers the app sets itself are removed: gradio's middleware echoes any Origin with
`Access-Control-Allow-Credentials: true` whenever the Host is not a loopback name (every --listen user).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# With --listen, LAN names too: public DNS, which a rebinding attacker needs, never answers for these.
LAN_SUFFIXES = (".local", ".home.arpa", ".internal")
SHARE_SUFFIX = ".gradio.live"  # gradio share links: https://<id>.gradio.live
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_ROUTE_PREFIXES = ("/sdapi/", "/internal/", "/controlnet/")  # /controlnet/: sd-webui-controlnet's API
# What an HTML form (or fetch in no-cors mode) may send cross-site without a preflight.
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CORS_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
DEFAULT_UPLOAD_MB = 100.0

_HOST_RE = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?$", re.IGNORECASE)
_ORIGIN_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?$",
                        re.IGNORECASE)


# --- parsing ----------------------------------------------------------------------------------------------


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` -> (lower-case name, IPv6 without brackets; port). None when malformed: only
    the characters a host may hold, so `a@127.0.0.1` or `evil.example#` cannot pass as something else."""
    match = _HOST_RE.match(value.strip())
    if not match:
        return None
    name, port = match.group(1).lower(), match.group(2)
    if port is not None and int(port) > 65535:
        return None
    if name.startswith("["):
        name = name[1:-1]
        if not _ip(name):
            return None
    return name, int(port) if port is not None else None


def parse_origin(value: str) -> tuple[str, str, int | None] | None:
    """`scheme://host[:port]` -> (scheme, host, port); None for `null`, paths, bad ports and anything else."""
    match = _ORIGIN_RE.match(value.strip())
    if not match:
        return None
    scheme, host, port = match.group(1).lower(), match.group(2), match.group(3)
    parsed = split_host(f"{host}:{port}" if port is not None else host)
    if parsed is None:
        return None
    return scheme, parsed[0], parsed[1]


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _csv(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


# --- policies ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str] = LOOPBACK_NAMES  # exact names and IP literals (lower case, IPv6 without brackets)
    suffixes: tuple[str, ...] = ()  # ".example.com": any subdomain
    lan: bool = False  # --listen: LAN clients reach the server by address, a single-label or an mDNS name
    any_host: bool = False  # --allowed-hosts '*': the check is off

    def allows(self, name: str) -> bool:
        if self.any_host or name in self.names or name.endswith(self.suffixes):
            return True
        address = _ip(name)
        if address is not None:
            return self.lan or address.is_loopback
        return self.lan and ("." not in name or name.endswith(LAN_SUFFIXES))


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str] = frozenset()
    regex: re.Pattern[str] | None = None
    any_origin: bool = False  # `--cors-allow-origins '*'`: answered with `*`, never with credentials

    def allows(self, origin: str) -> bool:
        return (self.any_origin and parse_origin(origin) is not None) or self.names(origin)

    def names(self, origin: str) -> bool:
        """Whether the flags list this origin itself (not only through `*`)."""
        if origin == "null" or parse_origin(origin) is None:
            return False  # opaque or malformed origins are never allowed, whatever the flags say
        return origin.lower() in self.origins or (self.regex is not None and self.regex.fullmatch(origin) is not None)


BodyLimit = Callable[[str], tuple[int, str]]  # route path -> (bytes allowed, what sets that limit)
LoginCheck = Callable[[Scope], bool]  # scope -> whether the request carries the login the server wants


@dataclass(frozen=True)
class GuardConfig:
    hosts: HostPolicy = field(default_factory=HostPolicy)
    cors: CorsPolicy = field(default_factory=CorsPolicy)
    body_limit: BodyLimit | None = None
    login_paths: tuple[str, ...] = ()  # prefixes ending in "/" or "-" match as prefixes; others exactly
    logged_in: LoginCheck | None = None


def host_policy(cmd_opts: argparse.Namespace) -> HostPolicy:
    """The hosts the flags make this server answer to."""
    names, suffixes, any_host = set(LOOPBACK_NAMES), [], False
    server_name = (getattr(cmd_opts, "server_name", None) or "").strip()
    lan = bool(getattr(cmd_opts, "listen", False))
    if server_name:
        parsed = split_host(server_name) or split_host(f"[{server_name}]")  # `::` may come without brackets
        address = _ip(parsed[0]) if parsed else None
        if address is not None and address.is_unspecified:
            lan = True  # 0.0.0.0 / :: listens everywhere, like --listen
        elif parsed:
            names.add(parsed[0])
    if getattr(cmd_opts, "share", False):
        suffixes.append(SHARE_SUFFIX)
    for entry in ngrok_hosts(cmd_opts):  # with --ngrok: ngrok's domains and a reserved domain of the options
        if entry.startswith("."):
            suffixes.append(entry)
        elif (parsed_host := split_host(entry)) is not None:
            names.add(parsed_host[0])
    for entry in _csv(getattr(cmd_opts, "allowed_hosts", None)):
        if entry == "*":
            any_host = True
        elif entry.startswith(("*.", ".")):
            parent = split_host(entry.lstrip("*."))
            if parent is None or parent[1] is not None:
                raise ValueError(f"--allowed-hosts: {entry!r} is not '.' and a domain")
            suffixes.append("." + parent[0])
        else:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"--allowed-hosts: {entry!r} is not a host name")
            names.add(parsed[0])
    return HostPolicy(frozenset(names), tuple(suffixes), lan, any_host)


def cors_policy(cmd_opts: argparse.Namespace) -> CorsPolicy:
    """A1111's --cors-allow-origins (comma-separated, `*` for any) and --cors-allow-origins-regex."""
    origins = [o.rstrip("/").lower() for o in _csv(getattr(cmd_opts, "cors_allow_origins", None))]
    pattern = getattr(cmd_opts, "cors_allow_origins_regex", None)
    try:
        regex = re.compile(pattern) if pattern else None
    except re.error as e:
        raise ValueError(f"--cors-allow-origins-regex is not a valid regular expression: {e}") from None
    return CorsPolicy(frozenset(o for o in origins if o != "*"), regex, "*" in origins)


def upload_limit_bytes(cmd_opts: argparse.Namespace) -> int:
    mb = getattr(cmd_opts, "max_upload_size", None)
    mb = DEFAULT_UPLOAD_MB if mb is None else float(mb)
    if not mb > 0:  # also NaN
        raise ValueError("--max-upload-size must be a number of MB above 0")
    return int(mb * 1024 * 1024)


def body_limits(upload_bytes: int | None) -> BodyLimit:
    """API routes follow the api_max_body_mb setting (read per request, so a change applies at once); other
    routes (gradio's uploads and queue) `upload_bytes`, or the API limit too when None (the API-only server)."""
    from modules.api.routing import max_body_bytes

    def limit(path: str) -> tuple[int, str]:
        if upload_bytes is None or path.startswith(JSON_ROUTE_PREFIXES):
            return max_body_bytes(), "setting api_max_body_mb"
        return upload_bytes, "--max-upload-size"

    return limit


def ngrok_hosts(cmd_opts: Any) -> list[str]:
    """Host names the ngrok tunnel sends in its requests' Host header: ngrok's own domains (as `.suffix`)
    and a reserved domain given in --ngrok-options."""
    if not getattr(cmd_opts, "ngrok", None):
        return []
    hosts = [".ngrok-free.app", ".ngrok-free.dev", ".ngrok.app", ".ngrok.dev", ".ngrok.io"]
    options = getattr(cmd_opts, "ngrok_options", None)
    if isinstance(options, dict):
        for key in ("domain", "hostname", "url"):
            value = options.get(key)
            if isinstance(value, str) and value.strip():
                hosts.append(value.strip().removeprefix("https://").removeprefix("http://").split("/", 1)[0])
    return hosts


def config_from_flags(cmd_opts: argparse.Namespace, *, body_limit: BodyLimit | None = None,
                      login_paths: tuple[str, ...] = (), logged_in: LoginCheck | None = None) -> GuardConfig:
    """Raises ValueError naming the flag whose value cannot be used."""
    return GuardConfig(host_policy(cmd_opts), cors_policy(cmd_opts), body_limit, login_paths, logged_in)


# --- the middleware ---------------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body outgrows its limit; an HTTPException, so routes answer it with 413."""

    def __init__(self, limit: int, what: str):
        super().__init__(413, f"request body larger than {_mb(limit)} MB ({what})")


def _mb(limit: int) -> str:
    return f"{limit / 2**20:g}"


def route_path(scope: Scope) -> str:
    """The path without the --subpath root, as routes see it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        return path[len(root.rstrip("/")):] or "/"
    return path


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path.startswith(p) if p.endswith(("/", "-")) else path == p or path.startswith(p + "/")
               for p in prefixes)


def _printable(value: str) -> str:
    """A header value safe to name in a one-line message."""
    text = "".join(c if c.isprintable() else "?" for c in value[:100])
    return text + ("..." if len(value) > 100 else "")


class HttpGuard:
    def __init__(self, app: ASGIApp, config: GuardConfig | None = None):
        self.app = app
        self.config = config or GuardConfig()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = route_path(scope)
        refusal = self._refusal(scope, headers, path)
        if refusal is not None:
            await self._refuse(scope, receive, send, *refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers)(scope, receive, send)
            return
        await self._serve_http(scope, receive, send, headers, path)

    # --- checks -----------------------------------------------------------------------------------------

    def _refusal(self, scope: Scope, headers: Headers, path: str) -> tuple[int, str] | None:
        """(status, message) when the request must not reach the app; the first check that fails decides."""
        for check in (self._host_problem, self._origin_problem, self._login_problem, self._content_type_problem,
                      self._declared_size_problem):
            refusal = check(scope, headers, path)
            if refusal is not None:
                return refusal
        return None

    def _host_problem(self, scope: Scope, headers: Headers, path: str) -> tuple[int, str] | None:
        host = headers.get("host")
        if host is None:  # a browser always sends one; HTTP/1.0 tools may not
            return None
        parsed = split_host(host)
        if parsed is not None and self.config.hosts.allows(parsed[0]):
            return None
        return 403, self._host_message(host, parsed)

    def _origin_problem(self, scope: Scope, headers: Headers, path: str) -> tuple[int, str] | None:
        if scope["type"] == "http" and scope["method"] not in STATE_CHANGING:
            return None  # reads: the browser keeps the answer from a foreign page unless CORS allows it
        message = self._origin_refusal(headers.get("origin"), headers.get("host"))
        return (403, message) if message else None

    def _login_problem(self, scope: Scope, headers: Headers, path: str) -> tuple[int, str] | None:
        if self.config.logged_in is None or not _under(path, self.config.login_paths):
            return None
        return None if self.config.logged_in(scope) else (401, "Not authenticated")

    @staticmethod
    def _content_type_problem(scope: Scope, headers: Headers, path: str) -> tuple[int, str] | None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING or not path.startswith(JSON_ROUTE_PREFIXES):
            return None
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in SIMPLE_CONTENT_TYPES:
            return None
        return 415, f"{path} takes a JSON body (Content-Type: application/json), not {media}"

    def _declared_size_problem(self, scope: Scope, headers: Headers, path: str) -> tuple[int, str] | None:
        if scope["type"] != "http" or self.config.body_limit is None:
            return None
        declared = headers.get("content-length", "")
        limit, what = self.config.body_limit(path)
        if declared.isdigit() and int(declared) > limit:
            return 413, BodyTooLarge(limit, what).detail
        return None

    @staticmethod
    def _host_message(host: str, parsed: tuple[str, int | None] | None) -> str:
        if parsed is None:
            return f"Host header {_printable(host)!r} is not a host name"
        name = f"[{parsed[0]}]" if ":" in parsed[0] else parsed[0]
        return (f"Host {name!r} is not one this server answers to; if you reach it by that name (a tunnel, "
                f"a reverse proxy), start it with --allowed-hosts {name}")

    def _origin_refusal(self, origin: str | None, host: str | None) -> str | None:
        """Why a state-changing request from this Origin is refused; None when it may proceed."""
        if origin is None:
            return None  # not a browser, or a browser that sends no Origin for same-origin requests
        if origin.strip() == "null":
            return "Origin 'null' (a sandboxed frame or a local file) may not change anything here"
        parsed = parse_origin(origin)
        if parsed is None:
            return f"Origin {_printable(origin)!r} is malformed"
        if self._same_origin(parsed, host) or self.config.cors.allows(origin):
            return None
        return (f"cross-origin request from {_printable(origin)!r} refused; to allow that site, start the "
                f"server with --cors-allow-origins {_printable(origin)}")

    @staticmethod
    def _same_origin(origin: tuple[str, str, int | None], host: str | None) -> bool:
        scheme, name, port = origin
        parsed = split_host(host) if host else None
        if parsed is None or scheme not in DEFAULT_PORTS:
            return False
        # Host and port decide; the scheme cannot (behind a TLS proxy the server sees http for an https page).
        default = DEFAULT_PORTS[scheme]  # the Host omits the port exactly when the origin does
        same_name = name == parsed[0] or _same_address(name, parsed[0])
        return same_name and (port or default) == (parsed[1] or default)

    # --- responses --------------------------------------------------------------------------------------

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        if scope["type"] == "websocket":  # closing before accepting makes the server answer 403
            reason = message.encode()[:120].decode(errors="ignore")  # a close frame holds 123 bytes of reason
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        response = self._error(route_path(scope), status, message)
        await response(scope, receive, self._headers_added(send, None))

    @staticmethod
    def _error(path: str, status: int, message: str) -> Response:
        """A1111's error JSON on API routes, gradio's `{"detail": ...}` for 401, plain text elsewhere."""
        if path.startswith(JSON_ROUTE_PREFIXES):
            from modules.api.errors import error_json

            return error_json(status, "HTTPException", message, "", message)
        if status == 401:
            return JSONResponse({"detail": message}, status_code=401)
        return PlainTextResponse(message + "\n", status_code=status)

    def _preflight(self, origin: str, headers: Headers) -> Response:
        """Answered here for every path (never by the app: gradio's answer allows any origin)."""
        if not self.config.cors.allows(origin):
            return PlainTextResponse("Disallowed CORS origin\n", status_code=400,
                                     headers={"X-Content-Type-Options": "nosniff"})
        out = {"Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Max-Age": "600",
               "X-Content-Type-Options": "nosniff"}
        out.update(self._cors_headers(origin))
        requested = headers.get("access-control-request-headers")
        if requested:
            out["Access-Control-Allow-Headers"] = requested
        return PlainTextResponse("OK", headers=out)

    def _cors_headers(self, origin: str | None) -> dict[str, str]:
        cors = self.config.cors
        if origin is None or not cors.allows(origin):
            return {}
        if not cors.names(origin):
            return {"Access-Control-Allow-Origin": "*"}  # a wildcard never comes with credentials
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}

    def _headers_added(self, send: Send, origin: str | None) -> Send:
        """`send` that drops the app's CORS headers, adds ours for an allowed origin, and nosniff everywhere."""
        extra = self._cors_headers(origin)

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for key in {k for k in response_headers if k.lower().startswith("access-control-")}:
                    del response_headers[key]
                for key, value in extra.items():
                    if key == "Vary":
                        response_headers.add_vary_header(value)
                    else:
                        response_headers[key] = value
                response_headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        return wrapped

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send, headers: Headers, path: str) -> None:
        send = self._headers_added(send, headers.get("origin"))
        if self.config.body_limit is None:
            await self.app(scope, receive, send)
            return
        limit, what = self.config.body_limit(path)
        counted = _CountedBody(receive, limit, what)
        reply = _TooLargeReply(scope, send, counted, self._error(path, 413, BodyTooLarge(limit, what).detail))
        try:
            await self.app(scope, counted, reply)
        except BodyTooLarge:
            pass  # answered below (or the app had already started answering)
        await reply.finish()


class _CountedBody:
    """`receive` that fails once more than `limit` body bytes arrived (chunked uploads declare no length)."""

    def __init__(self, receive: Receive, limit: int, what: str):
        self.receive, self.limit, self.what = receive, limit, what
        self.seen = 0
        self.exceeded = False

    async def __call__(self) -> Message:
        if self.exceeded:
            raise BodyTooLarge(self.limit, self.what)
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge(self.limit, self.what)
        return message


class _TooLargeReply:
    """Once the body outgrew its limit the client gets a 413, whatever the app made of the failed read (a 400
    from a form parser, a 500): an app's own 413 passes, anything else is replaced by ours."""

    def __init__(self, scope: Scope, send: Send, counted: _CountedBody, response: Response):
        self.scope, self.send, self.counted, self.response = scope, send, counted, response
        self.started = False
        self.replaced = False

    async def __call__(self, message: Message) -> None:
        if self.replaced:
            return  # the rest of the app's own answer
        if message["type"] == "http.response.start" and not self.started:
            self.started = True
            if self.counted.exceeded and message.get("status") != 413:
                await self._answer()
                return
        await self.send(message)

    async def finish(self) -> None:
        if self.counted.exceeded and not self.started:
            self.started = True
            await self._answer()

    async def _answer(self) -> None:
        self.replaced = True
        await self.response(self.scope, _no_body, self.send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _same_address(a: str, b: str) -> bool:
    """IPv6 spellings differ (`::1` and `0:0::1`); compare addresses, not text."""
    x, y = _ip(a), _ip(b)
    return x is not None and x == y


# --- installing it ----------------------------------------------------------------------------------------


def install(app: Any, config: GuardConfig) -> None:
    """Put the guard in front of the app's whole middleware stack (once). Starlette's `add_middleware` cannot
    do this for gradio: gradio adds its CORS middleware after ours would be, in front of it."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    if not isinstance(app.middleware_stack, HttpGuard):
        app.middleware_stack = HttpGuard(app.middleware_stack, config)


def installing_lifespan(config: GuardConfig) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that installs the guard at server start-up, before the first connection is accepted (the
    middleware stack exists by then; gradio's `launch()` gives us the app only after it serves)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        install(app, config)
        yield

    return lifespan
