"""--api-auth over real HTTP: every route the API serves (/sdapi, /internal, the docs) answers 401 with
`WWW-Authenticate: Basic` without valid credentials and works with them; with auth off everything is open."""

from __future__ import annotations

import base64

import pytest
from fastapi import Request
from test_api_support import CHECKPOINTS, FAST, SETTINGS, assert_error_json, client, serving

from modules import shared
from modules.api import auth
from modules.api.server import create_app

USERS = [("alice", "s3cret"), ("bob", "pass:with:colons")]

# (method, path, json body) covering every kind of route the API serves
ROUTES = [
    ("GET", "/sdapi/v1/samplers", None),
    ("GET", "/sdapi/v1/options", None),
    ("POST", "/sdapi/v1/options", {}),
    ("GET", "/sdapi/v1/cmd-flags", None),
    ("GET", "/sdapi/v1/progress", None),
    ("POST", "/sdapi/v1/txt2img", {**FAST, "steps": 1}),
    ("POST", "/sdapi/v1/interrupt", None),
    ("POST", "/internal/progress", {"id_task": "task(x)"}),
    ("GET", "/internal/pending-tasks", None),
    ("GET", "/internal/ping", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    with isolated_data_dir(tmp_path_factory.mktemp("api-auth"), CHECKPOINTS, SETTINGS) as root:
        yield root


@pytest.fixture(scope="module")
def protected(data_dir):
    with serving(create_app(auth=auth.BasicAuth(USERS))) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(data_dir):
    with serving(create_app(auth=None)) as server:
        yield server


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


BAD_HEADERS = {
    "none": {},
    "wrong password": _basic("alice", "nope"),
    "unknown user": _basic("mallory", "s3cret"),
    "other user's password": _basic("alice", "pass:with:colons"),
    "not basic": {"Authorization": "Bearer s3cret"},
    "not base64": {"Authorization": "Basic @@@"},
    "no colon": {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},
}


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_needs_credentials(protected, method, path, body):
    with client(protected) as c:
        for name, headers in BAD_HEADERS.items():
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (name, r.text)
            assert r.headers["www-authenticate"] == "Basic"
            if path.startswith(("/sdapi", "/internal")):
                assert_error_json(r, 401)
        for user, password in USERS:
            r = c.request(method, path, json=body, headers=_basic(user, password))
            assert r.status_code == 200, (user, r.text)


def test_routes_added_later_through_the_api_are_protected(data_dir):
    app = create_app(auth=auth.BasicAuth(USERS))
    app.state.api.add_api_route("/sdapi/v1/extension-route", lambda: {"ok": True}, methods=["GET"])
    with serving(app) as server, client(server) as c:
        assert c.get("/sdapi/v1/extension-route").status_code == 401
        assert c.get("/sdapi/v1/extension-route", headers=_basic("alice", "s3cret")).json() == {"ok": True}


def test_unauthenticated_body_is_never_parsed(protected):
    # A huge or malformed body from a stranger gets the 401, not a validation error about the body.
    with client(protected) as c:
        r = c.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 401


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_auth_off_everything_open(open_server, method, path, body):
    with client(open_server) as c:
        assert c.request(method, path, json=body).status_code == 200


def test_auth_comes_from_the_flag(data_dir, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "carol:pw1,dave:pw2")
    with serving(create_app()) as server, client(server) as c:
        assert c.get("/internal/ping").status_code == 401
        assert c.get("/internal/ping", headers=_basic("dave", "pw2")).status_code == 200


def test_credentials_parsing():
    assert auth.parse_credentials("a:b, c:d:e ,") == [("a", "b"), ("c", "d:e")]
    assert auth.parse_credentials(None) == [] and auth.BasicAuth.from_flag("") is None
    with pytest.raises(ValueError, match="entry 2 of --api-auth") as e:
        auth.parse_credentials("a:b,secretwithoutcolon")
    assert "secretwithoutcolon" not in str(e.value)


def test_ui_route_rule():
    checker = auth.BasicAuth(USERS)

    def request(headers: dict[str, str]) -> Request:
        return Request({"type": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})

    anonymous, with_api = request({}), request(_basic("alice", "s3cret"))
    assert auth.allowed_on_ui_route(anonymous, None, gradio_auth_on=False, gradio_logged_in=False)
    assert not auth.allowed_on_ui_route(anonymous, checker, gradio_auth_on=False, gradio_logged_in=False)
    assert auth.allowed_on_ui_route(with_api, checker, gradio_auth_on=False, gradio_logged_in=False)
    assert not auth.allowed_on_ui_route(anonymous, None, gradio_auth_on=True, gradio_logged_in=False)
    assert auth.allowed_on_ui_route(anonymous, checker, gradio_auth_on=True, gradio_logged_in=True)
    assert auth.allowed_on_ui_route(with_api, checker, gradio_auth_on=True, gradio_logged_in=False)


def test_credentials_do_not_let_a_foreign_origin_post(protected):
    # A browser that has the Basic credentials cached sends them cross-site too: the Origin check still refuses.
    with client(protected) as c:
        for origin in ("https://evil.example", "null"):
            r = c.post("/sdapi/v1/interrupt", headers={**_basic("alice", "s3cret"), "Origin": origin})
            assert r.status_code == 403, r.text
        r = c.post("/sdapi/v1/interrupt", headers={**_basic("alice", "s3cret"), "Origin": protected.url})
        assert r.status_code == 200


def test_json_routes_refuse_form_posts_even_with_credentials(protected):
    with client(protected) as c:
        r = c.post("/sdapi/v1/interrupt", data={"id_task": "x"}, headers=_basic("alice", "s3cret"))
        assert_error_json(r, 415)
