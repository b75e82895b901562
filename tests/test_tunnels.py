"""Public links (--share, --ngrok): refused without a login unless --insecure-public, the API protected the
same way, ngrok called with the token, region, options and port, and the guard answering ngrok's host names.

The tunnels themselves cannot be reached from a test: pyngrok is replaced by a stand-in module that records the
call, and gradio's share link is checked up to the launch() argument.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modules import cmd_args, http_guard, tunnels

REPO = Path(__file__).resolve().parents[1]


def flags(*argv: str):
    return cmd_args.parse_args(list(argv), environ={})


@pytest.mark.parametrize("public", [["--share"], ["--ngrok", "tok"]])
def test_a_public_link_without_a_login_is_refused_by_name(public):
    with pytest.raises(tunnels.PublicLinkError) as e:
        tunnels.check_public_link(flags(*public))
    message = str(e.value)
    assert public[0] in message and "--gradio-auth" in message and "--insecure-public" in message


def test_a_public_link_starts_with_a_login_or_insecure_public():
    tunnels.check_public_link(flags("--share", "--gradio-auth", "me:pw"))
    tunnels.check_public_link(flags("--ngrok", "tok", "--insecure-public"))
    tunnels.check_public_link(flags("--api"))  # no public link: nothing asked


def test_the_api_behind_a_public_link_takes_the_ui_login_or_its_own():
    opts = flags("--share", "--api", "--gradio-auth", "me:pw,you:pw2")
    tunnels.check_public_link(opts)
    assert opts.api_auth == "me:pw,you:pw2"
    own = flags("--share", "--api", "--gradio-auth", "me:pw", "--api-auth", "bot:key")
    tunnels.check_public_link(own)
    assert own.api_auth == "bot:key"


def test_api_only_behind_ngrok_needs_api_credentials():
    with pytest.raises(tunnels.PublicLinkError, match="--api-auth"):
        tunnels.check_public_link(flags("--nowebui", "--ngrok", "tok"))
    tunnels.check_public_link(flags("--nowebui", "--ngrok", "tok", "--api-auth", "bot:key"))
    with pytest.raises(tunnels.PublicLinkError, match="--nowebui"):
        tunnels.check_public_link(flags("--nowebui", "--share", "--api-auth", "bot:key"))


def _fake_pyngrok(calls: list) -> types.ModuleType:
    package = types.ModuleType("pyngrok")
    conf = types.ModuleType("pyngrok.conf")
    ngrok = types.ModuleType("pyngrok.ngrok")

    class PyngrokConfig:
        def __init__(self, auth_token=None, region=None):
            self.auth_token, self.region = auth_token, region

    def connect(addr, pyngrok_config=None, **options):
        calls.append((addr, pyngrok_config.auth_token, pyngrok_config.region, options))
        return types.SimpleNamespace(public_url="https://abc123.ngrok-free.app")

    conf.PyngrokConfig = PyngrokConfig
    ngrok.connect = connect
    package.conf, package.ngrok = conf, ngrok
    return package


def test_ngrok_is_called_with_token_region_options_and_port(monkeypatch, capsys):
    calls: list = []
    package = _fake_pyngrok(calls)
    monkeypatch.setitem(sys.modules, "pyngrok", package)
    monkeypatch.setitem(sys.modules, "pyngrok.conf", package.conf)
    monkeypatch.setitem(sys.modules, "pyngrok.ngrok", package.ngrok)
    opts = flags("--ngrok", "s3cret", "--ngrok-region", "eu", "--ngrok-options", '{"domain": "me.ngrok.app"}')
    assert tunnels.open_ngrok(opts, 7861) == "https://abc123.ngrok-free.app"
    assert calls == [("127.0.0.1:7861", "s3cret", "eu", {"domain": "me.ngrok.app"})]
    out = capsys.readouterr().out
    assert "Public link (ngrok): https://abc123.ngrok-free.app" in out and "s3cret" not in out


def test_ngrok_without_pyngrok_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyngrok", None)  # import fails as if not installed
    with pytest.raises(tunnels.PublicLinkError, match="pip install -r requirements-notebook.txt"):
        tunnels.open_ngrok(flags("--ngrok", "tok"), 7860)


def test_the_host_guard_answers_ngrok_names_only_with_ngrok():
    plain = http_guard.host_policy(flags())
    assert not plain.allows("abc123.ngrok-free.app")
    tunnel = http_guard.host_policy(flags("--ngrok", "t", "--ngrok-options", '{"domain": "sd.example.org"}'))
    for host in ("abc123.ngrok-free.app", "x.ngrok.app", "y.ngrok.io", "sd.example.org"):
        assert tunnel.allows(host), host
    assert not tunnel.allows("evil.example")


def test_share_reaches_gradio_launch_with_the_login():
    from modules.ui import server

    kwargs = server.launch_kwargs(flags("--share", "--gradio-auth", "me:pw"), "", "")
    assert kwargs["share"] is True and kwargs["auth"] == [("me", "pw")]


def test_launch_refuses_share_without_login_before_loading_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS",)}
    result = subprocess.run([sys.executable, "launch.py", "--skip-install", "--share", "--data-dir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "--share makes a public link" in result.stderr and "--insecure-public" in result.stderr
    assert "Model loaded" not in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_only_server_through_a_stand_in_ngrok(tmp_path):
    """The real start-up path: --nowebui --ngrok with a pyngrok stand-in on PYTHONPATH that records its call.
    A request carrying the tunnel's Host gets through with the credentials, and not without them."""
    fake = tmp_path / "fake" / "pyngrok"
    fake.mkdir(parents=True)
    record = tmp_path / "ngrok-call.json"
    (fake / "__init__.py").write_text("")
    (fake / "conf.py").write_text(
        "class PyngrokConfig:\n    def __init__(self, auth_token=None, region=None):\n"
        "        self.auth_token, self.region = auth_token, region\n")
    (fake / "ngrok.py").write_text(
        "import json, os, types\n"
        "def connect(addr, pyngrok_config=None, **options):\n"
        "    with open(os.environ['FAKE_NGROK_RECORD'], 'w') as f:\n"
        "        json.dump([addr, pyngrok_config.auth_token, pyngrok_config.region, options], f)\n"
        "    return types.SimpleNamespace(public_url='https://abc123.ngrok-free.app')\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS",)}
    env.update(PYTHONPATH=str(tmp_path / "fake"), FAKE_NGROK_RECORD=str(record))
    argv = [sys.executable, "launch.py", "--skip-install", "--nowebui", "--skip-load-model-at-start",
            "--data-dir", str(tmp_path / "data"), "--port", str(port), "--ngrok", "tok", "--ngrok-region", "ap",
            "--ngrok-options", '{"basic_auth": ["a:b"]}', "--gradio-auth", "me:pw"]
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "API on" in line:
                break
        output = "".join(lines)
        assert "Public link (ngrok): https://abc123.ngrok-free.app" in output, output
        assert json.loads(record.read_text()) == [f"127.0.0.1:{port}", "tok", "ap", {"basic_auth": ["a:b"]}]

        def get(auth: str | None) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/samplers",
                                             headers={"Host": "abc123.ngrok-free.app"})
            if auth:
                request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            for _ in range(50):
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        return response.status
                except urllib.error.HTTPError as e:
                    return e.code
                except OSError:
                    time.sleep(0.2)  # the server is still starting
            raise AssertionError("the server never answered")

        assert get(None) == 401  # the API took the --gradio-auth credentials
        assert get("me:pw") == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
