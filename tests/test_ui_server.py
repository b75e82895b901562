"""Server flags -> gradio launch options; credentials; the /internal routes' login check."""

from __future__ import annotations

import fastapi
import pytest
from fastapi.testclient import TestClient

from modules import shared
from modules.ui import server


def opts(*argv: str):
    return shared.parser.parse_args(list(argv))


def test_defaults_serve_on_loopback_port_7860():
    kwargs = server.launch_kwargs(opts(), css="", head="")
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7860
    assert kwargs["share"] is False and kwargs["auth"] is None and kwargs["inbrowser"] is False
    assert kwargs["root_path"] is None and kwargs["show_error"] is False


def test_flags_map_to_launch_options():
    kwargs = server.launch_kwargs(opts("--listen", "--port", "7999", "--share", "--autolaunch", "--subpath", "sd/",
                                       "--gradio-auth", "alice:secret"), css="", head="")
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["server_port"] == 7999
    assert kwargs["share"] is True and kwargs["inbrowser"] is True
    assert kwargs["root_path"] == "/sd"
    assert kwargs["auth"] == [("alice", "secret")]
    assert server.launch_kwargs(opts("--server-name", "::1"), css="", head="")["server_name"] == "::1"


def test_theme_flag_picks_gradio_dark_mode_by_url():
    assert "__theme', 'dark'" in server.theme_head(opts("--theme", "dark"))
    assert server.theme_head(opts()) == "" and server.theme_head(opts("--theme", "purple")) == ""


def test_auth_from_flag_and_files(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("bob:pw1\ncarol:pa:ss\n")
    second = tmp_path / "b.txt"
    second.write_text("dave:x, erin:y")
    ns = opts("--gradio-auth", "alice:s1", "--gradio-auth-path", f"{first},{second}")
    assert server.read_auth(ns) == [("alice", "s1"), ("bob", "pw1"), ("carol", "pa:ss"), ("dave", "x"),
                                    ("erin", "y")]


def test_a_bad_auth_entry_is_named_but_never_echoed(tmp_path):
    with pytest.raises(ValueError) as e:
        server.read_auth(opts("--gradio-auth", "alice:ok,hunter2"))
    assert "entry 2 of --gradio-auth" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(ValueError, match="cannot read --gradio-auth-path"):
        server.read_auth(opts("--gradio-auth-path", str(tmp_path / "missing.txt")))


def _app(auth: bool) -> fastapi.FastAPI:
    app = fastapi.FastAPI()
    app.auth = [("u", "p")] if auth else None  # what gradio's App carries
    app.auth_dependency = None
    app.cookie_id = "abc"
    app.tokens = {"good-token": "u"}
    server.add_internal_routes(app)
    return app


def test_internal_progress_has_a1111_shape():
    client = TestClient(_app(auth=False))
    body = client.post("/internal/progress", json={"id_task": "task(nothing)", "id_live_preview": -1}).json()
    assert set(body) >= {"active", "queued", "completed", "progress", "eta", "live_preview", "id_live_preview",
                         "textinfo"}
    assert client.post("/internal/progress", json={}).status_code == 422


def test_internal_routes_need_the_ui_login_when_auth_is_on():
    client = TestClient(_app(auth=True))
    assert client.post("/internal/progress", json={"id_task": "t"}).status_code == 401
    assert client.get("/internal/ping").status_code == 401
    assert client.get("/internal/sysinfo").status_code == 401  # A1111 served it to anyone (#17161)
    client.cookies.set("access-token-abc", "good-token")
    assert client.post("/internal/progress", json={"id_task": "t"}).status_code == 200
    assert client.get("/internal/ping").status_code == 200
    assert client.get("/internal/sysinfo").status_code == 200


# --- the guard in front of the UI server (modules/http_guard.py; the full checks are in test_http_guard.py) --


def test_upload_limit_flag_reaches_gradio():
    assert server.launch_kwargs(opts(), css="", head="")["max_file_size"] == 100 * 2**20
    assert server.launch_kwargs(opts("--max-upload-size", "2.5"), css="", head="")["max_file_size"] == int(2.5 * 2**20)


def _guarded(auth: bool, api_auth=None) -> TestClient:
    from modules import http_guard

    app = _app(auth)
    http_guard.install(app, server.guard_config(opts(), api_auth))
    return TestClient(app, base_url="http://127.0.0.1:7860")


def test_schema_and_heartbeat_need_the_ui_login():
    from modules.api.auth import BasicAuth

    client = _guarded(auth=True, api_auth=BasicAuth([("api", "key")]))
    for path in ("/openapi.json", "/gradio_api/heartbeat/abc", "/docs"):
        assert client.get(path).status_code == 401, path
    assert client.get("/openapi.json", auth=("api", "key")).status_code == 200  # --api credentials also do
    client.cookies.set("access-token-abc", "good-token")
    assert client.get("/openapi.json").status_code == 200
    assert _guarded(auth=False).get("/openapi.json").status_code == 200  # no login configured: open


def test_a_bad_guard_flag_stops_the_ui_before_it_serves():
    class NeverLaunched:
        def launch(self, **kwargs):
            raise AssertionError("served despite a bad flag")

    with pytest.raises(ValueError, match="--allowed-hosts"):
        server.serve(NeverLaunched(), opts("--allowed-hosts", "not a host"), css="", head="")
    with pytest.raises(ValueError, match="--cors-allow-origins-regex"):
        server.serve(NeverLaunched(), opts("--cors-allow-origins-regex", "("), css="", head="")


def test_a_serving_queue_polls_slowly_when_idle():
    """gradio's queue checks for work every 1 ms and for progress every 10 ms by default (6% of a core on an idle
    server, measured); the running server's queue waits 20 ms and 50 ms instead."""
    import socket

    import gradio as gr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with gr.Blocks() as demo:
        gr.Textbox()
    server.serve(demo, opts("--port", str(port)), css="", head="")
    try:
        queue = demo._queue
        assert queue.sleep_when_free == server.QUEUE_IDLE_POLL_SECONDS
        assert queue.progress_update_sleep_when_free == server.QUEUE_PROGRESS_POLL_SECONDS
        assert not queue.stopped  # the loops that read them are running
    finally:
        demo.close()
