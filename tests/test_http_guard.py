"""modules/http_guard.py: Host (DNS rebinding), Origin (CSRF), CORS flags, content types on JSON routes, body
limits, nosniff, and login on routes gradio leaves open. The API-only app runs in-process (TestClient); the UI
server is a real gradio launch of a one-textbox page with the same `serve()` the web UI uses."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_api_support import assert_unique_operation_ids

from modules import http_guard, shared
from modules.api.server import create_app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PORT = 7861
LOCAL = f"http://127.0.0.1:{PORT}"
EVIL = "https://evil.example"


def flags(*argv: str):
    return shared.parser.parse_args(list(argv))


@pytest.fixture
def api(monkeypatch) -> Callable[..., TestClient]:
    """`api(*flags)`: a TestClient for the API-only app built under those flags (its Host is 127.0.0.1:7861)."""

    def make(*argv: str) -> TestClient:
        monkeypatch.setattr(shared, "cmd_opts", flags(*argv))
        return TestClient(create_app(auth=None), base_url=LOCAL)

    return make


@pytest.fixture
def actions(monkeypatch) -> list[str]:
    """What the skip / unload-checkpoint / refresh-checkpoints routes did (each records its name, nothing more).
    Apps made after this fixture use the recording unload route (importing the model code would take seconds)."""
    from modules.api.api import Api
    from modules.models import registry

    done: list[str] = []

    async def unload(self: Api) -> dict:
        done.append("unload")
        return {}

    monkeypatch.setattr(shared.state, "skip", lambda: done.append("skip"))
    monkeypatch.setattr(Api, "unloadapi", unload)
    monkeypatch.setattr(registry, "list_models", lambda *a, **k: done.append("refresh"))
    return done


# --- parsing ----------------------------------------------------------------------------------------------


def test_host_and_origin_parsing():
    assert http_guard.split_host("LocalHost:7860") == ("localhost", 7860)
    assert http_guard.split_host("[::1]:7860") == ("::1", 7860) and http_guard.split_host("[::1]") == ("::1", None)
    for bad in ("a@127.0.0.1", "127.0.0.1:99999", "127.0.0.1:", "[nothex]:1", "x y", "", "evil.example/x"):
        assert http_guard.split_host(bad) is None, bad
    assert http_guard.parse_origin("https://Good.Example") == ("https", "good.example", None)
    assert http_guard.parse_origin("http://[::1]:7860") == ("http", "::1", 7860)
    for bad in ("null", "http://127.0.0.1:99999", "http://127.0.0.1:7860/", "127.0.0.1:7860", "http://a@b",
                "http://127.0.0.1:-1", "http://"):
        assert http_guard.parse_origin(bad) is None, bad


def test_hosts_the_flags_allow():
    default = http_guard.host_policy(flags())
    assert all(default.allows(h) for h in ("localhost", "127.0.0.1", "127.0.0.2", "::1"))
    assert not any(default.allows(h) for h in ("evil.example", "192.168.1.20", "localhost.evil.example"))
    listen = http_guard.host_policy(flags("--listen"))
    assert listen.allows("192.168.1.20") and listen.allows("fe80::1") and not listen.allows("evil.example")
    assert all(listen.allows(h) for h in ("gpu-box", "gpu-box.local", "nas.home.arpa", "sd.internal"))
    assert not any(listen.allows(h) for h in ("local.evil.example", "internal.evil.example", "evil.example.",
                                              "gpu-box."))
    assert not default.allows("gpu-box") and not default.allows("gpu-box.local")
    assert http_guard.host_policy(flags("--server-name", "0.0.0.0")).allows("10.0.0.5")
    assert http_guard.host_policy(flags("--server-name", "::")).allows("10.0.0.5")
    named = http_guard.host_policy(flags("--server-name", "MyBox.lan"))
    assert named.allows("mybox.lan") and not named.allows("10.0.0.5")
    share = http_guard.host_policy(flags("--share"))
    assert share.allows("abc123.gradio.live") and not share.allows("gradio.live.evil.example")
    extra = http_guard.host_policy(flags("--allowed-hosts", "sd.example.com, .trycloudflare.com,*.ngrok.app"))
    assert extra.allows("sd.example.com") and extra.allows("x-y.trycloudflare.com") and extra.allows("a.ngrok.app")
    assert not extra.allows("example.com") and not extra.allows("trycloudflare.com.evil.example")
    assert http_guard.host_policy(flags("--allowed-hosts", "*")).allows("anything.example")
    for bad in ("bad host", "*.", ".", ".example.com:80"):
        with pytest.raises(ValueError, match="--allowed-hosts"):
            http_guard.host_policy(flags("--allowed-hosts", bad))
    with pytest.raises(ValueError, match="--cors-allow-origins-regex"):
        http_guard.cors_policy(flags("--cors-allow-origins-regex", "(unclosed"))
    with pytest.raises(ValueError, match="--max-upload-size"):
        http_guard.upload_limit_bytes(flags("--max-upload-size", "0"))


# --- Host -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "localhost.", "192.168.1.20", "a@127.0.0.1", "bad host"])
def test_rebinding_hosts_are_refused(api, host):
    r = api().get("/sdapi/v1/samplers", headers={"host": host})
    assert r.status_code == 403, r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    if "@" not in host and " " not in host:
        assert "--allowed-hosts" in r.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1", f"127.0.0.1:{PORT}", "localhost", f"LOCALHOST:{PORT}",
                                  f"[::1]:{PORT}", "[::1]"])
def test_loopback_hosts_are_served(api, host):
    assert api().get("/sdapi/v1/samplers", headers={"host": host}).status_code == 200


def test_with_listen_lan_addresses_are_served_but_names_are_not(api):
    client = api("--listen", "--allowed-hosts", "sd.example.com")
    for host in ("192.168.1.20", f"192.168.1.20:{PORT}", "[fe80::1]:7861", "localhost", "sd.example.com"):
        assert client.get("/sdapi/v1/samplers", headers={"host": host}).status_code == 200, host
    assert client.get("/sdapi/v1/samplers", headers={"host": "evil.example"}).status_code == 403


# --- Origin on state-changing requests --------------------------------------------------------------------


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:99999", "http://127.0.0.1:8000",
                                    f"http://localhost:{PORT}", f"{LOCAL}/", "https://127.0.0.1",
                                    "chrome-extension://abc", "http://127.0.0.1:port"])
def test_cross_origin_posts_are_refused_and_do_nothing(api, actions, origin):
    r = api().post("/sdapi/v1/skip", headers={"origin": origin})
    assert r.status_code == 403, r.text
    assert actions == []


def test_same_origin_and_no_origin_posts_go_through(api, actions):
    client = api()
    assert client.post("/sdapi/v1/skip", headers={"origin": LOCAL}).status_code == 200
    assert client.post("/sdapi/v1/skip").status_code == 200
    assert client.post("/sdapi/v1/skip", headers={"host": "localhost", "origin": "http://localhost"}).status_code == 200
    assert client.post("/sdapi/v1/skip", headers={"host": "[::1]:7861", "origin": "http://[::1]:7861"}).status_code == 200
    assert actions == ["skip"] * 4


def test_a_lan_origin_is_same_origin_with_listen(api, actions):
    client = api("--listen")
    r = client.post("/sdapi/v1/skip", headers={"host": "192.168.1.20:7861", "origin": "http://192.168.1.20:7861"})
    assert r.status_code == 200 and actions == ["skip"]


def test_reads_from_a_foreign_origin_get_no_cors_headers(api):
    r = api().get("/sdapi/v1/options", headers={"origin": EVIL})
    assert r.status_code == 200  # the browser cannot read it: no Access-Control-Allow-Origin
    assert not any(k.lower().startswith("access-control-") for k in r.headers)


def test_websockets_need_an_allowed_host_and_origin():
    app = FastAPI()

    @app.websocket("/ws")
    async def echo(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    app.add_middleware(http_guard.HttpGuard, config=http_guard.config_from_flags(flags()))
    client, host = TestClient(app), {"host": f"127.0.0.1:{PORT}"}
    with client.websocket_connect("/ws", headers={**host, "origin": LOCAL}) as socket:
        assert socket.receive_text() == "hello"
    for headers in ({**host, "origin": EVIL}, {**host, "origin": "null"}, {"host": "evil.example"}):
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers=headers) as socket:
            socket.receive_text()


# --- CORS flags ---------------------------------------------------------------------------------------------


def test_cors_allow_origins_allows_exactly_those(api, actions):
    client = api("--cors-allow-origins", "https://good.example,https://other.example/")
    r = client.get("/sdapi/v1/samplers", headers={"origin": "https://good.example"})
    assert r.headers["access-control-allow-origin"] == "https://good.example"
    assert r.headers["access-control-allow-credentials"] == "true" and "Origin" in r.headers["vary"]
    assert client.get("/sdapi/v1/samplers", headers={"origin": "https://other.example"}).headers[
        "access-control-allow-origin"] == "https://other.example"
    r = client.get("/sdapi/v1/samplers", headers={"origin": EVIL})
    assert "access-control-allow-origin" not in r.headers and "access-control-allow-credentials" not in r.headers
    assert client.post("/sdapi/v1/skip", headers={"origin": "https://good.example"}).status_code == 200
    assert client.post("/sdapi/v1/skip", headers={"origin": EVIL}).status_code == 403
    assert actions == ["skip"]


def test_cors_preflight(api):
    client = api("--cors-allow-origins", "https://good.example")
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    r = client.options("/sdapi/v1/txt2img", headers={"origin": "https://good.example", **ask})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://good.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "content-type"
    r = client.options("/sdapi/v1/txt2img", headers={"origin": EVIL, **ask})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_cors_regex_and_wildcard(api, actions):
    client = api("--cors-allow-origins-regex", r"https://[a-z]+\.good\.example")
    assert client.get("/sdapi/v1/samplers", headers={"origin": "https://app.good.example"}).headers[
        "access-control-allow-origin"] == "https://app.good.example"
    r = client.get("/sdapi/v1/samplers", headers={"origin": "https://app.good.example.evil.example"})
    assert "access-control-allow-origin" not in r.headers  # the whole origin must match
    wildcard = api("--cors-allow-origins", "*")
    r = wildcard.get("/sdapi/v1/samplers", headers={"origin": EVIL})
    assert r.headers["access-control-allow-origin"] == "*"  # never the echoed origin, never with credentials
    assert "access-control-allow-credentials" not in r.headers
    assert wildcard.post("/sdapi/v1/skip", headers={"origin": "null"}).status_code == 403
    assert wildcard.post("/sdapi/v1/skip", headers={"origin": "http://x:99999"}).status_code == 403
    assert actions == []


# --- content types ----------------------------------------------------------------------------------------

SIMPLE_BODIES = {
    "form": {"data": {"a": "b"}},
    "multipart": {"files": {"f": ("x.txt", b"x")}},
    "text/plain": {"content": b'{"a": 1}', "headers": {"content-type": "text/plain;charset=UTF-8"}},
}


@pytest.mark.parametrize("path", ["/sdapi/v1/skip", "/sdapi/v1/unload-checkpoint", "/sdapi/v1/refresh-checkpoints",
                                  "/internal/progress"])
@pytest.mark.parametrize("kind", list(SIMPLE_BODIES))
def test_form_and_text_posts_do_not_run_json_routes(api, actions, path, kind):
    r = api().post(path, **SIMPLE_BODIES[kind])
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["detail"]
    assert actions == []


def test_json_and_bodiless_posts_still_run(api, actions):
    client = api()
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.post("/sdapi/v1/skip", json={}).status_code == 200
    assert client.post("/sdapi/v1/unload-checkpoint", headers={"content-type": "application/json"}).status_code == 200
    assert actions == ["refresh", "skip", "unload"]


# --- body size ------------------------------------------------------------------------------------------


def test_api_bodies_over_the_setting_are_413(api, monkeypatch):
    monkeypatch.setitem(shared.opts.data, "api_max_body_mb", 1)
    client = api()
    r = client.post("/sdapi/v1/png-info", json={"image": "x" * (2 * 2**20)})
    assert r.status_code == 413 and "api_max_body_mb" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield b'{"image": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = client.post("/sdapi/v1/png-info", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]


def test_counted_body_replaces_whatever_the_app_answered():
    """An app that turns the failed read into its own error (a form parser's 400) still answers 413."""

    async def app(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                pass
        except http_guard.BodyTooLarge:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad form"})

    guarded = http_guard.HttpGuard(app, http_guard.GuardConfig(body_limit=lambda path: (1000, "--max-upload-size")))
    r = TestClient(guarded, base_url=LOCAL).post("/upload", content=iter([b"x" * 800, b"x" * 800]))
    assert r.status_code == 413 and "--max-upload-size" in r.text
    assert r.headers["x-content-type-options"] == "nosniff"


# --- nosniff ----------------------------------------------------------------------------------------------


def test_every_response_says_nosniff(api):
    client = api()
    for response in (client.get("/sdapi/v1/samplers"), client.get("/nothing-here"), client.get("/sdapi/v1/skip"),
                     client.get("/docs"), client.post("/sdapi/v1/txt2img", json={"width": "x"}),
                     client.post("/sdapi/v1/skip", headers={"origin": EVIL})):
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url


def test_the_lifespan_installs_the_guard_in_front_of_everything():
    app = FastAPI(lifespan=http_guard.installing_lifespan(http_guard.GuardConfig()))
    app.get("/x")(lambda: {"ok": True})
    with TestClient(app, base_url=LOCAL) as client:  # entering runs the lifespan, as a server start does
        assert isinstance(app.middleware_stack, http_guard.HttpGuard)
        assert client.get("/x").json() == {"ok": True}
        assert client.get("/x", headers={"host": "evil.example"}).status_code == 403
    http_guard.install(app, http_guard.GuardConfig())  # a second install does not wrap it twice
    assert not isinstance(app.middleware_stack.app, http_guard.HttpGuard)


# --- the UI server (gradio) ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui():
    """A real UI server: --listen, --gradio-auth, a 1 MB upload limit and one CORS origin."""
    import gradio as gr

    from modules.ui import server

    port = _free_port()
    with gr.Blocks() as demo:
        box = gr.Textbox()
        gr.Button().click(lambda x: x, box, box)
    ns = flags("--port", str(port), "--listen", "--gradio-auth", "alice:s3cret", "--max-upload-size", "1",
               "--cors-allow-origins", "https://good.example")
    app = server.serve(demo, ns, css="", head="")
    try:
        assert isinstance(app.middleware_stack, http_guard.HttpGuard)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        demo.close()


def _logged_in(ui) -> dict[str, str]:
    r = ui.post("/login", data={"username": "alice", "password": "s3cret"})
    assert r.status_code == 200, r.text
    return dict(r.cookies)


def test_ui_host_check(ui):
    assert ui.get("/", headers={"host": "evil.example"}).status_code == 403
    r = ui.get("/", headers={"host": "192.168.1.20"})
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"


def test_gradio_never_echoes_a_foreign_origin(ui):
    # gradio's own CORS middleware answers any Origin with credentials when the Host is not a loopback name
    for host in ("192.168.1.20", "127.0.0.1"):
        r = ui.get("/config", headers={"host": host, "origin": EVIL})
        assert not any(k.lower().startswith("access-control-") for k in r.headers), (host, r.headers)
        r = ui.options("/config", headers={"host": host, "origin": EVIL, "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in r.headers
    r = ui.get("/config", headers={"origin": "https://good.example"})
    assert r.headers["access-control-allow-origin"] == "https://good.example"


def test_ui_posts_from_a_foreign_origin_are_refused(ui):
    for origin in (EVIL, "null", "http://127.0.0.1:99999"):
        assert ui.post("/login", data={"username": "alice", "password": "s3cret"},
                       headers={"origin": origin}).status_code == 403
        assert ui.post("/gradio_api/queue/join", json={}, headers={"origin": origin}).status_code == 403
        assert ui.post("/gradio_api/upload", files={"files": ("a.txt", b"x")},
                       headers={"origin": origin}).status_code == 403


def test_openapi_and_heartbeat_need_the_login(ui):
    for path in ("/openapi.json", "/gradio_api/heartbeat/some-session", "/docs"):
        assert ui.get(path).status_code == 401, path
    cookies = _logged_in(ui)
    with httpx.Client(base_url=str(ui.base_url), cookies=cookies, timeout=30) as client:
        schema = client.get("/openapi.json").json()
        assert_unique_operation_ids(schema)
        assert "/internal/progress" in schema["paths"]  # the page's file routes are not API:
        assert not [path for path in schema["paths"] if path.startswith(("/file=", "/sd_extra_networks"))]
        with client.stream("GET", "/gradio_api/heartbeat/some-session") as r:
            assert r.status_code == 200


def test_ui_uploads_have_a_size_limit(ui):
    cookies = _logged_in(ui)
    with httpx.Client(base_url=str(ui.base_url), cookies=cookies, timeout=30) as client:
        assert client.post("/gradio_api/upload", files={"files": ("a.txt", b"x" * 100)}).status_code == 200
        r = client.post("/gradio_api/upload", files={"files": ("a.txt", b"x" * (2 * 2**20))})
        assert r.status_code == 413 and "--max-upload-size" in r.text

        def chunks() -> Iterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\n'
            for _ in range(40):
                yield b"y" * 65536
            yield b"\r\n--b--\r\n"

        r = client.post("/gradio_api/upload", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
