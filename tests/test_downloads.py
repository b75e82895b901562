"""Model downloads (modules/downloads.py, download_guard.py, download_files.py) against a server on 127.0.0.1.

The server is on loopback, so the tests that fetch pass allow_private (what --allow-private-downloads gives).
Where a test needs a "public" server, a policy that counts only the test server's 127.0.0.1 as public plays
the internet; every other address is judged by the real rules.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from download_server import Entry, ModelServer, sha256_of, tiny_safetensors

from modules import cmd_args, download_files, download_guard, downloads, shared
from modules.download_guard import DownloadRefused, Policy
from modules.models import registry

LOCAL = Policy(allow_private=True, timeout_s=5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, isolated_data_dir):
    root = tmp_path_factory.mktemp("downloads-data")
    with isolated_data_dir(root):
        yield root


@pytest.fixture
def server():
    with ModelServer() as s:
        yield s


def models(root: Path, folder: str) -> set[str]:
    path = root / "models" / folder
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def fetch(server: ModelServer, path: str, data: bytes, kind: str = "checkpoint", policy: Policy = LOCAL,
          **kwargs) -> downloads.DownloadResult:
    server.files[path] = Entry(data)
    return downloads.download(downloads.DownloadRequest(kind=kind, url=server.url(path), **kwargs), policy)


# --- a download a person asks for ---

def test_checkpoint_lands_in_its_folder_and_is_listed_at_once(data_dir, server):
    data = tiny_safetensors(1)
    seen: list[tuple[int, int | None]] = []
    server.files["/files/fresh-model.safetensors"] = Entry(data)
    req = downloads.DownloadRequest(url=server.url("/files/fresh-model.safetensors"))
    result = downloads.download(req, LOCAL, progress=lambda name, done, total: seen.append((done, total)))
    path = data_dir / "models" / "Stable-diffusion" / "fresh-model.safetensors"
    assert path.read_bytes() == data and result.size == len(data) and result.sha256 == sha256_of(data)
    assert seen[-1] == (len(data), len(data))  # progress reached the whole size, which was known
    assert "fresh-model.safetensors" in registry.checkpoint_tiles()[0] or any(
        "fresh-model" in t for t in registry.checkpoint_tiles())
    assert not list(path.parent.glob("*.part"))


@pytest.mark.parametrize(("kind", "upscaler", "folder"), [
    ("lora", None, "Lora"), ("vae", None, "VAE"), ("controlnet", None, "ControlNet"),
    ("upscaler", "ESRGAN", "ESRGAN"), ("upscaler", "SwinIR", "SwinIR"),
])
def test_each_type_goes_to_its_folder(data_dir, server, kind, upscaler, folder):
    name = f"by-type-{kind}-{upscaler or 'x'}.safetensors"
    fetch(server, f"/{name}", tiny_safetensors(2), kind=kind, upscaler=upscaler)
    assert name in models(data_dir, folder)


def test_lora_and_vae_appear_in_their_lists(data_dir, server):
    from modules.models import vae_registry
    from modules.networks import files as network_files

    fetch(server, "/new-lora.safetensors", tiny_safetensors(3), kind="lora")
    fetch(server, "/new-vae.safetensors", tiny_safetensors(4), kind="vae")
    assert "new-lora" in network_files.available_networks
    assert "new-vae.safetensors" in vae_registry.vae_option_names()


def test_embedding_goes_to_the_embeddings_dir(data_dir, server):
    fetch(server, "/my-emb.safetensors", tiny_safetensors(5), kind="embedding")
    assert (data_dir / "embeddings" / "my-emb.safetensors").is_file()


def test_lora_dir_flag_is_honoured(tmp_path, server, monkeypatch):
    monkeypatch.setattr(shared.cmd_opts, "lora_dir", str(tmp_path / "elsewhere"))
    fetch(server, "/moved.safetensors", tiny_safetensors(6), kind="lora")
    assert (tmp_path / "elsewhere" / "moved.safetensors").is_file()


def test_name_from_content_disposition(data_dir, server):
    server.files["/download?id=7"] = Entry(tiny_safetensors(7), disposition='attachment; filename="named.safetensors"')
    server.files["/download"] = server.files["/download?id=7"]
    downloads.download(downloads.DownloadRequest(url=server.url("/download?id=7")), LOCAL)
    assert "named.safetensors" in models(data_dir, "Stable-diffusion")


# --- sha256 ---

def test_sha256_good_is_accepted(data_dir, server):
    data = tiny_safetensors(8)
    result = fetch(server, "/hashed.safetensors", data, sha256=sha256_of(data).upper())
    assert result.sha256 == sha256_of(data)


def test_sha256_bad_keeps_nothing(data_dir, server):
    with pytest.raises(DownloadRefused, match="sha256 mismatch.*not kept"):
        fetch(server, "/bad-hash.safetensors", tiny_safetensors(9), sha256="0" * 64)
    assert not {n for n in models(data_dir, "Stable-diffusion") if n.startswith("bad-hash")}


def test_sha256_in_url_fragment(data_dir, server):
    data = tiny_safetensors(10)
    server.files["/frag.safetensors"] = Entry(data)
    with pytest.raises(DownloadRefused, match="sha256 mismatch"):
        downloads.download(downloads.DownloadRequest(url=server.url("/frag.safetensors") + "#sha256=" + "a" * 64),
                           LOCAL)
    downloads.download(downloads.DownloadRequest(url=server.url("/frag.safetensors") + "#sha256="
                                                 + sha256_of(data)), LOCAL)
    assert "frag.safetensors" in models(data_dir, "Stable-diffusion")


def test_hub_etag_is_checked(data_dir, server, monkeypatch):
    """A hub file: hf_hub_url builds the URL, the hub's X-Linked-Etag gives the sha256 to check."""
    import huggingface_hub

    data = tiny_safetensors(11)
    monkeypatch.setattr(huggingface_hub, "hf_hub_url",
                        lambda repo_id, filename, revision=None: server.url(f"/{repo_id}/resolve/main/{filename}"))
    server.files["/someone/tiny/resolve/main/unet/hub-model.safetensors"] = Entry(
        redirect=server.url("/cdn/blob"), headers={"X-Linked-Etag": f'"{sha256_of(data)}"'})
    server.files["/cdn/blob"] = Entry(data)
    result = downloads.download(downloads.DownloadRequest(repo_id="someone/tiny",
                                                          filename="unet/hub-model.safetensors"), LOCAL)
    assert result.name == "hub-model.safetensors" and result.sha256 == sha256_of(data)
    server.files["/cdn/blob"] = Entry(data + b"tampered")
    with pytest.raises(DownloadRefused, match="sha256 mismatch"):
        downloads.download(downloads.DownloadRequest(repo_id="someone/tiny", filename="unet/hub-model.safetensors",
                                                     overwrite=True), LOCAL)


# --- resume ---

def test_cut_connection_is_resumed_with_range(data_dir, server):
    data = tiny_safetensors(12, floats=20000)
    server.files["/cut.safetensors"] = Entry(data, cut_times=1)
    result = downloads.download(downloads.DownloadRequest(url=server.url("/cut.safetensors")), LOCAL)
    assert (data_dir / "models" / "Stable-diffusion" / "cut.safetensors").read_bytes() == data
    assert result.resumed and result.sha256 == sha256_of(data)
    ranges = [r for p, r in server.requests if p == "/cut.safetensors"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"


def test_interrupted_download_resumes_on_the_next_run(data_dir, server, monkeypatch):
    monkeypatch.setattr(downloads, "ATTEMPTS", 1)
    data = tiny_safetensors(13, floats=20000)
    server.files["/later.safetensors"] = Entry(data, cut_times=1)
    with pytest.raises(DownloadRefused, match="cut.*run the download again to resume"):
        downloads.download(downloads.DownloadRequest(url=server.url("/later.safetensors")), LOCAL)
    part = data_dir / "models" / "Stable-diffusion" / "later.safetensors.part"
    assert part.is_file() and "later.safetensors" not in registry.checkpoint_tiles()
    downloads.download(downloads.DownloadRequest(url=server.url("/later.safetensors")), LOCAL)
    assert not part.exists()
    assert (data_dir / "models" / "Stable-diffusion" / "later.safetensors").read_bytes() == data
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"


def test_server_without_range_starts_again(data_dir, server):
    data = tiny_safetensors(14, floats=20000)
    server.files["/norange.safetensors"] = Entry(data, cut_times=1, ranges=False)
    downloads.download(downloads.DownloadRequest(url=server.url("/norange.safetensors")), LOCAL)
    assert (data_dir / "models" / "Stable-diffusion" / "norange.safetensors").read_bytes() == data


# --- refused ---

def test_existing_file_is_not_overwritten_unless_asked(data_dir, server):
    fetch(server, "/twice.safetensors", tiny_safetensors(15))
    before = len(server.requests)
    with pytest.raises(DownloadRefused, match="already exists"):
        fetch(server, "/twice.safetensors", tiny_safetensors(16))
    assert len(server.requests) == before  # refused before any request
    fetch(server, "/twice.safetensors", tiny_safetensors(16), overwrite=True)
    assert (data_dir / "models" / "Stable-diffusion" / "twice.safetensors").read_bytes() == tiny_safetensors(16)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.safetensors",
                                 "data:text/plain,hello", "gopher://127.0.0.1/x", "javascript:alert(1)",
                                 "//example.com/x.safetensors", "x.safetensors"])
def test_other_schemes_are_refused(data_dir, url):
    with pytest.raises(DownloadRefused, match="not allowed for downloads"):
        downloads.download(downloads.DownloadRequest(url=url), LOCAL)


def test_loopback_is_refused_without_the_flag(data_dir, server):
    server.files["/private.safetensors"] = Entry(tiny_safetensors(17))
    with pytest.raises(DownloadRefused, match="loopback.*--allow-private-downloads"):
        downloads.download(downloads.DownloadRequest(url=server.url("/private.safetensors")), Policy())
    assert server.requests == []


def test_flag_default_refuses_loopback(data_dir, server, monkeypatch):
    """The policy comes from the flags: without --allow-private-downloads the test server is off limits."""
    monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse_args(["--data-dir", str(data_dir)], environ={}))
    assert downloads.policy_from_cmd_opts().allow_private is False
    monkeypatch.setattr(shared, "cmd_opts", cmd_args.parse_args(
        ["--data-dir", str(data_dir), "--allow-private-downloads", "--download-max-gb", "0.5"], environ={}))
    policy = downloads.policy_from_cmd_opts()
    assert policy.allow_private and policy.max_bytes == 512 * 1024**2


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "192.168.1.10", "172.16.0.1", "169.254.169.254", "0.0.0.0", "100.64.0.1",
    "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1", "240.0.0.1",
])
def test_non_public_addresses(address):
    assert download_guard.non_public_reason(ipaddress.ip_address(address)) is not None
    assert Policy().address_refusal(ipaddress.ip_address(address))
    assert Policy(allow_private=True).address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111"])
def test_public_addresses(address):
    assert download_guard.non_public_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["0177.0.0.1", "2130706433", "127.1", "[::ffff:7f00:1]", "localhost"])
def test_other_spellings_of_loopback_are_refused(host):
    with pytest.raises(DownloadRefused, match="loopback"):
        download_guard.check_url(f"https://{host}/x.safetensors", Policy())


def test_percent_encoded_host_is_refused():
    with pytest.raises(DownloadRefused, match="characters a host name cannot have"):
        download_guard.check_url("https://127%2e0%2e0%2e1/x.safetensors", Policy())


class _FakeInternet(Policy):
    """The test server's 127.0.0.1 plays a public https host; every other address follows the real rules."""

    def address_refusal(self, ip):
        return None if str(ip) == "127.0.0.1" else super().address_refusal(ip)

    def scheme_refusal(self, scheme, ip):
        return None if str(ip) == "127.0.0.1" else super().scheme_refusal(scheme, ip)


def test_redirect_to_a_private_address_is_refused(data_dir, server):
    server.files["/public.safetensors"] = Entry(redirect=f"http://127.0.0.2:{server.port}/secret.safetensors")
    server.files["/meta.safetensors"] = Entry(redirect="http://169.254.169.254/latest/meta-data")
    with pytest.raises(DownloadRefused, match="127.0.0.2 is a loopback"):
        downloads.download(downloads.DownloadRequest(url=server.url("/public.safetensors")), _FakeInternet())
    with pytest.raises(DownloadRefused, match="169.254.169.254 is a link-local"):
        downloads.download(downloads.DownloadRequest(url=server.url("/meta.safetensors")), _FakeInternet())
    assert [p for p, _ in server.requests] == ["/public.safetensors", "/meta.safetensors"]


def test_redirect_to_another_scheme_is_refused(data_dir, server):
    server.files["/to-file.safetensors"] = Entry(redirect="file:///etc/passwd")
    with pytest.raises(DownloadRefused, match="file: is not allowed"):
        downloads.download(downloads.DownloadRequest(url=server.url("/to-file.safetensors")), LOCAL)


def test_plain_http_to_the_internet_is_refused():
    """Even with the flag, http is for a mirror on this machine or the local network; the internet is https."""
    public = ipaddress.ip_address("8.8.8.8")
    assert "use https" in Policy(allow_private=True).scheme_refusal("http", public)
    assert Policy().scheme_refusal("https", public) is None
    assert "use https" in Policy().scheme_refusal("http", ipaddress.ip_address("127.0.0.1"))


def test_too_many_redirects(data_dir, server):
    server.files["/loop.safetensors"] = Entry(redirect="/loop.safetensors")
    with pytest.raises(DownloadRefused, match="more than 5 redirects"):
        downloads.download(downloads.DownloadRequest(url=server.url("/loop.safetensors")), LOCAL)


def test_oversized_file_by_content_length(data_dir, server):
    with pytest.raises(DownloadRefused, match="over the download limit"):
        fetch(server, "/big.safetensors", b"x" * 5000, policy=Policy(allow_private=True, max_bytes=1000))
    assert not {n for n in models(data_dir, "Stable-diffusion") if n.startswith("big")}


def test_oversized_file_while_streaming(data_dir, server, monkeypatch):
    """A server that sends no length (or lies about it) is stopped once the limit is passed."""
    monkeypatch.setattr(downloads, "CHUNK", 512)
    server.files["/liar.safetensors"] = Entry(b"x" * 5000, ranges=False)
    real = downloads._Transfer._receive

    def no_length(self, resp, offset):
        resp.headers.replace_header("Content-Length", "10")  # what the limit check sees
        resp.length = None  # and the body is read to the end
        return real(self, resp, offset)

    monkeypatch.setattr(downloads._Transfer, "_receive", no_length)
    with pytest.raises(DownloadRefused, match="larger than the download limit"):
        downloads.download(downloads.DownloadRequest(url=server.url("/liar.safetensors")),
                           Policy(allow_private=True, max_bytes=1000))
    assert not {n for n in models(data_dir, "Stable-diffusion") if n.startswith("liar")}


@pytest.mark.parametrize("name", ["../../x.safetensors", "..\\x.safetensors", "/etc/x.safetensors",
                                  "C:x.safetensors", ".hidden.safetensors", "x.exe", "x.safetensors.exe",
                                  "model.py", "a\u202egnp.safetensors", "nul.safetensors", ""])
def test_hostile_names_are_refused(name):
    with pytest.raises(DownloadRefused):
        download_files.check_name(name)


def test_hostile_content_disposition_is_refused(data_dir, server):
    server.files["/get"] = Entry(tiny_safetensors(18), disposition='attachment; filename="../../x.safetensors"')
    with pytest.raises(DownloadRefused, match="would leave the model folder"):
        downloads.download(downloads.DownloadRequest(url=server.url("/get")), LOCAL)
    server.files["/exe"] = Entry(b"MZ", disposition="attachment; filename*=UTF-8''x.exe")
    with pytest.raises(DownloadRefused, match="'x.exe' is not a model file"):
        downloads.download(downloads.DownloadRequest(url=server.url("/exe")), LOCAL)
    assert not (data_dir / "x.safetensors").exists() and not (data_dir / "models" / "x.safetensors").exists()


def test_hostile_name_given_by_the_person(data_dir, server):
    with pytest.raises(DownloadRefused, match="would leave the model folder"):
        fetch(server, "/ok.safetensors", tiny_safetensors(19), name="../escape.safetensors")
    assert server.requests == []


def test_timeout_is_named(data_dir):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.safetensors"
        with pytest.raises(DownloadRefused, match="did not answer within 0.5 s"):
            downloads.download(downloads.DownloadRequest(url=url), Policy(allow_private=True, timeout_s=0.5))
    finally:
        listener.close()


# --- --download at start-up ---

@pytest.mark.parametrize(("spec", "kind", "upscaler", "url", "repo"), [
    ("https://h.example/a.safetensors", "checkpoint", None, "https://h.example/a.safetensors", ""),
    ("lora=https://h.example/a.safetensors?x=1", "lora", None, "https://h.example/a.safetensors?x=1", ""),
    ("esrgan=https://h.example/4x.pth", "upscaler", "ESRGAN", "https://h.example/4x.pth", ""),
    ("vae=hf:owner/repo/vae/x.safetensors@v2", "vae", None, "", "owner/repo"),
])
def test_parse_spec(spec, kind, upscaler, url, repo):
    req = downloads.parse_spec(spec)
    assert (req.kind, req.upscaler, req.url, req.repo_id) == (kind, upscaler, url, repo)


def test_parse_spec_unknown_type():
    with pytest.raises(DownloadRefused, match="unknown model type 'lore'"):
        downloads.parse_spec("lore=https://h.example/a.safetensors")


def test_download_flag_at_startup(tmp_path, server, isolated_data_dir, capsys):
    """`--download` runs before the model folders are scanned: the model is in the list when start-up is done;
    a refused one is printed and start-up goes on."""
    import webui

    data = tiny_safetensors(20)
    server.files["/startup.safetensors"] = Entry(data)
    server.files["/startup-lora.safetensors"] = Entry(data)
    root = tmp_path / "startup"
    with isolated_data_dir(root):
        shared.set_cmd_opts(cmd_args.parse_args([
            "--data-dir", str(root), "--allow-private-downloads",
            "--download", server.url("/startup.safetensors"),
            "--download", "lora=" + server.url("/startup-lora.safetensors"),
            "--download", "file:///etc/passwd"], environ={}))
        webui.run_startup_downloads()
        registry.list_models()
        out = capsys.readouterr().out
        assert any("startup" in t for t in registry.checkpoint_tiles())
        assert (root / "models" / "Lora" / "startup-lora.safetensors").is_file()
        assert "--download file:///etc/passwd: file: is not allowed" in out


def test_download_flag_is_secret_and_effective():
    ns = cmd_args.parse_args(["--download", "https://h.example/a.safetensors?token=SECRET"], environ={})
    assert "SECRET" not in str(cmd_args.redacted(ns))
    assert cmd_args.not_yet_effective(cmd_args.parse_args(
        ["--download", "x", "--allow-private-downloads", "--download-max-gb", "2"], environ={})) == []


def test_hub_needs_valid_repo_and_file(data_dir):
    with pytest.raises(DownloadRefused, match="not a hub repo id"):
        downloads.download(downloads.DownloadRequest(repo_id="../../etc", filename="x.safetensors"), LOCAL)
    with pytest.raises(DownloadRefused, match="not a file in the repo"):
        downloads.download(downloads.DownloadRequest(repo_id="a/b", filename="../x.safetensors"), LOCAL)


def test_no_part_files_listed(data_dir):
    assert not [t for t in registry.checkpoint_tiles() if ".part" in t]
    assert os.path.isdir(data_dir / "models" / "Stable-diffusion")


# --- the Settings tab's Download box (the callback the button runs) ---

class _Request:
    session_hash = "download-test"
    username = None


def test_download_box_shows_progress_with_size_then_the_result(data_dir, server, monkeypatch):
    from modules.ui import downloads as ui_downloads

    monkeypatch.setattr(shared.cmd_opts, "allow_private_downloads", True)  # the server is on loopback

    data = tiny_safetensors(21, floats=50_000)
    server.files["/slow.safetensors"] = Entry(data, pause_s=2.0)  # well over the progress stream's poll, even on a busy machine
    outputs = list(ui_downloads.run(server.url("/slow.safetensors"), "", "", "Checkpoint", "ESRGAN", "", "", False,
                                    _Request()))
    size = downloads.format_size(len(data))
    assert any("progressDiv" in o and f"of {size}" in o for o in outputs)  # a bar, with the size
    assert "Downloaded slow.safetensors" in outputs[-1] and size in outputs[-1]
    assert any("slow" in t for t in registry.checkpoint_tiles())


def test_download_box_names_a_refusal(data_dir):
    from modules.ui import downloads as ui_downloads

    outputs = list(ui_downloads.run("ftp://h.example/x.safetensors", "", "", "LoRA", "ESRGAN", "", "", False,
                                    _Request()))
    assert "class='error'" in outputs[-1] and "ftp: is not allowed" in outputs[-1]
