"""The system report for bug reports (Settings > Sysinfo, GET /internal/sysinfo, `--dump-sysinfo`): what a person
pastes into an issue carries the versions and the non-default flags, never a password, token or clone-URL
credential, and its checksum tells an edited report from a genuine one."""

from __future__ import annotations

import json
import sys
import types

import fastapi
from fastapi.testclient import TestClient

import launch
from modules import cmd_args, shared, sysinfo
from modules.ui import server, settings_actions


def _app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()
    app.auth, app.auth_dependency, app.cookie_id, app.tokens = None, None, "abc", {}
    server.add_internal_routes(app)
    return app


def test_report_over_http_has_versions_and_flags_but_no_secrets(monkeypatch):
    flags = cmd_args.parse_args(["--gradio-auth", "alice:hunter2", "--api-auth", "bot:key123", "--medvram",
                                 "--port", "7001"], environ={})
    monkeypatch.setattr(shared, "cmd_opts", flags)
    monkeypatch.setitem(shared.opts.data, "civitai_api_key", "sk-live-abc")
    monkeypatch.setitem(shared.opts.data, "token_merging_ratio", 0.3)
    response = TestClient(_app()).get("/internal/sysinfo", params={"attachment": "true"})
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith('attachment; filename="sysinfo-')
    text = response.text
    for secret in ("hunter2", "key123", "sk-live-abc"):
        assert secret not in text
    info = json.loads(text)
    assert info["Python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert info["Commandline"]["medvram"] is True and info["Commandline"]["port"] == 7001
    assert info["Commandline"]["gradio_auth"] == "<redacted>"
    assert "skip_install" not in info["Commandline"]  # flags left at their defaults are not listed
    assert info["Config"]["civitai_api_key"] == "<redacted>" and info["Config"]["token_merging_ratio"] == 0.3
    assert info["Torch"]["version"] and any(p.startswith("gradio==") for p in info["Packages"])
    assert sysinfo.check(text)


def test_checksum_tells_an_edited_report():
    text = sysinfo.as_text(sysinfo.get(with_extensions_and_settings=False))
    assert sysinfo.check(text)
    edited = json.loads(text)
    edited["Python"] = "3.10.6"
    assert not sysinfo.check(json.dumps(edited))
    assert not sysinfo.check("not json") and not sysinfo.check("[]")
    assert "matches" in settings_actions.check_report(text)
    assert "does not match" in settings_actions.check_report(json.dumps(edited))
    assert "Paste" in settings_actions.check_report("  ")


def test_dump_sysinfo_writes_a_report_and_quits(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webui", types.SimpleNamespace(start=lambda: (_ for _ in ()).throw(
        AssertionError("the web UI started"))))
    saved_cmd_opts, saved_args = shared.cmd_opts, launch.args
    try:
        assert launch.main(["--dump-sysinfo", "--skip-install", "--data-dir", str(tmp_path)]) == 0
    finally:
        shared.set_cmd_opts(saved_cmd_opts)
        launch.args = saved_args
    [report] = list(tmp_path.glob("sysinfo-*.json"))
    assert f"Sysinfo saved as {report}" in capsys.readouterr().out
    text = report.read_text()
    assert sysinfo.check(text)
    info = json.loads(text)
    assert "Extensions" not in info and "Config" not in info  # A1111's dump leaves them out
    assert info["Commandline"]["dump_sysinfo"] is True
