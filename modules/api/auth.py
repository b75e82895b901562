"""`--api-auth user:pass[,user2:pass2]`: HTTP Basic on every route the API serves, `/internal/*` included.

A1111 guarded only the routes it registered through `add_api_route`, so `/internal/*` stayed open (#17492);
here `routing.ApiRoute` checks every request before its body is even read. Every configured pair is compared
in constant time (`secrets.compare_digest`) and all pairs are always compared, so an unknown user and a wrong
password take the same time.

The UI server guards its own `/internal/*` routes with the same object: a request there is allowed when the
gradio login cookie is valid or `BasicAuth.authorized(request)` is true (or neither kind of auth is set); see
`allowed_on_ui_route`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterable

from fastapi import Request

from modules.api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": "Basic"}


def parse_credentials(text: str | None) -> list[tuple[str, str]]:
    """`u:p,u2:p2` -> [(u, p), (u2, p2)]. The password may contain ':'; the user may not.

    Raises ValueError naming the position of a bad entry, never its text (it holds a password)."""
    pairs = []
    for n, item in enumerate((x.strip() for x in (text or "").split(",")), start=1):
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user:
            raise ValueError(f"entry {n} of --api-auth is not user:password")
        pairs.append((user, password))
    return pairs


class BasicAuth:
    """Checks `Authorization: Basic ...` against a fixed list of credentials."""

    def __init__(self, credentials: Iterable[tuple[str, str]]):
        self._pairs = [(u.encode("utf8"), p.encode("utf8")) for u, p in credentials]
        if not self._pairs:
            raise ValueError("BasicAuth needs at least one user:password pair")

    @classmethod
    def from_flag(cls, text: str | None) -> BasicAuth | None:
        """The checker for an `--api-auth` value; None when the flag is unset (the API is open)."""
        pairs = parse_credentials(text)
        return cls(pairs) if pairs else None

    def check(self, user: bytes, password: bytes) -> bool:
        ok = False
        for u, p in self._pairs:  # no early exit: the time taken does not depend on which pair matched
            ok |= secrets.compare_digest(u, user) & secrets.compare_digest(p, password)
        return ok

    def check_header(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic" or not token:
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        return bool(sep) and self.check(user, password)

    def authorized(self, request: Request) -> bool:
        return self.check_header(request.headers.get("authorization"))

    def require(self, request: Request) -> None:
        """Raise A1111's 401 (with `WWW-Authenticate: Basic`) unless the request carries valid credentials."""
        if not self.authorized(request):
            raise ApiError(401, "Incorrect username or password", headers=CHALLENGE)

    async def __call__(self, request: Request) -> None:
        """Usable as a FastAPI dependency: `dependencies=[Depends(auth)]`."""
        self.require(request)


def allowed_on_ui_route(request: Request, api_auth: BasicAuth | None, gradio_auth_on: bool,
                        gradio_logged_in: bool) -> bool:
    """Whether a UI-served `/internal/*` request may proceed: either configured login suffices; with no auth
    configured at all the route is open (as the rest of the server then is)."""
    if api_auth is None and not gradio_auth_on:
        return True
    if gradio_auth_on and gradio_logged_in:
        return True
    return api_auth is not None and api_auth.authorized(request)
