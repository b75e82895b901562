"""The extension index of the Extensions tab's "Available" sub-tab (modules/extension_index.py): defensive parsing,
filters, order and search, escaping, and the fetch rules (https only, loopback only with the flag, a size cap),
against servers on 127.0.0.1 started here (nothing else is fetched)."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator

import pytest
from download_server import Entry, ModelServer

from modules import extension_index, extension_manager, paths, shared
from modules.download_guard import DownloadRefused, Policy
from modules.extension_index import Index, IndexFailure

LOCAL = Policy(allow_private=True, max_bytes=extension_index.MAX_BYTES, timeout_s=5)

GOOD = {"name": "Good One", "url": "https://github.com/a/good-one", "description": "does good",
        "tags": ["script", "tab"], "added": "2023-02-01", "created_at": "2022-12-24T10:00:00Z",
        "commit_time": "2024-05-01T00:00:00Z", "stars": 40}


def index_json(*entries: object, tags: object = None) -> str:
    tags = {"script": "a script", "tab": "adds a tab", "ads": "ads", "localization": "a language"} \
        if tags is None else tags
    return json.dumps({"tags": tags, "extensions": list(entries)})


def entry(name: str, **fields: object) -> dict:
    return {"name": name, "url": f"https://github.com/someone/{name}", **fields}


@pytest.fixture
def no_extensions(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "extensions_dir", str(tmp_path / "extensions"))
    monkeypatch.setattr(paths, "extensions_builtin_dir", str(tmp_path / "no-builtin"))
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args([]))
    return tmp_path / "extensions"


# --- parsing -------------------------------------------------------------------------------------------------------

def test_good_entries_are_read_with_every_field():
    index = extension_index.parse(index_json(GOOD), "https://example.invalid/index.json")
    assert index.skipped == 0 and index.tags["tab"] == "adds a tab"
    (e,) = index.entries
    assert (e.name, e.url, e.description, e.tags) == ("Good One", GOOD["url"], "does good", ("script", "tab"))
    assert (e.added, e.created, e.updated, e.stars) == ("2023-02-01", "2022-12-24", "2024-05-01", 40)
    assert extension_index.summary(index) == "Loaded 1 extensions from https://example.invalid/index.json."


def test_malformed_entries_are_skipped_and_counted():
    malformed = [
        "just a string", 7, None, [], {"url": "https://github.com/a/no-name"},
        {"name": "", "url": "https://github.com/a/empty-name"}, {"name": 5, "url": "https://github.com/a/x"},
        {"name": "no url"}, {"name": "url not text", "url": ["https://github.com/a/b"]},
        {"name": "plain http", "url": "http://github.com/a/b"},
        {"name": "javascript link", "url": "javascript:alert(1)"},
        {"name": "file url", "url": "file:///etc/passwd"},
        {"name": "ssh", "url": "git@github.com:a/b.git"},
        {"name": "option", "url": "--upload-pack=touch x"},
        {"name": "credentials", "url": "https://user:token@github.com/a/b"},
        {"name": "space", "url": "https://github.com/a/b c"},
        {"name": "no folder name", "url": "https://github.com/a/.."},
        {"name": "hidden folder", "url": "https://github.com/a/.hidden"},
        {"name": "bad port", "url": "https://github.com:99999/a/b"},
    ]
    odd_fields = entry("odd-fields", description=["no"], tags="script", added="last year", stars="many",
                       created_at=3)
    index = extension_index.parse(index_json(GOOD, *malformed, odd_fields, tags=["not", "a dict"]))
    assert [e.name for e in index.entries] == ["Good One", "odd-fields"]
    assert index.skipped == len(malformed)
    assert "19 malformed entries skipped" in extension_index.summary(index)
    odd = index.entries[1]
    assert (odd.description, odd.tags, odd.added, odd.stars, odd.created) == ("", (), "", 0, "")
    assert index.tags == {}
    assert extension_index.parse(index_json(entry("x", stars=True, tags=[1, "ok", None, "ok"]))).entries[0].tags \
        == ("ok",)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not valid JSON"),
    ("[1, 2]", "no list of extensions"),
    ('{"extensions": {}}', "no list of extensions"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # nesting that exhausts the parser
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_an_index_that_is_not_one_fails_with_one_line(text, message):
    with pytest.raises(IndexFailure, match=message) as info:
        extension_index.parse(text)
    assert "\n" not in str(info.value)


def test_plain_http_entries_only_with_the_flag():
    data = index_json(entry("https-one"), {"name": "local", "url": "http://127.0.0.1:8000/local.git"})
    assert [e.name for e in extension_index.parse(data).entries] == ["https-one"]
    assert [e.name for e in extension_index.parse(data, allow_http=True).entries] == ["https-one", "local"]


def test_texts_are_one_line_and_capped():
    long = {**entry("long"), "name": "n" * 1000, "description": "line one\nline two\x00\x1b[31m" + "d" * 5000,
            "tags": ["t" * 100]}
    (e,) = extension_index.parse(index_json(long)).entries
    assert len(e.name) == 200 and "\n" not in e.description and "\x1b" not in e.description
    assert e.description.startswith("line one line two[31m") and len(e.description) == 2000
    assert e.tags == ("t" * 40,)
    many_tags = {f"tag{i}": "" for i in range(1000)}
    index = extension_index.parse(index_json(entry("x"), tags=many_tags))
    assert len(index.tags) == extension_index.MAX_TAGS
    assert len(index.tag_choices()) == extension_index.MAX_TAGS + 1  # and "installed"


# --- showing ---------------------------------------------------------------------------------------------------------

def test_script_in_name_description_tags_and_url_is_escaped():
    hostile = {"name": "<script>alert('n')</script>", "url": "https://github.com/a/b?x='><script>alert(1)</script>",
               "description": "<img src=x onerror=alert('d')>", "tags": ["<b>tag</b>"], "added": "2023-01-01"}
    index = extension_index.parse(index_json(hostile, tags={"<b>tag</b>": "<i>desc</i>' onmouseover='x"}))
    table = extension_index.table_html(index, [], "newest first", "")
    for raw in ("<script>", "<img", "<b>", "<i>", "' onmouseover", "x='>"):
        assert raw not in table, raw
    assert "&lt;script&gt;alert(&#x27;n&#x27;)&lt;/script&gt;" in table
    assert "&lt;img src=x onerror=alert(&#x27;d&#x27;)&gt;" in table
    assert "href='https://github.com/a/b?x=&#x27;&gt;&lt;script&gt;" in table
    assert "data-url='https://github.com/a/b?x=&#x27;&gt;&lt;script&gt;" in table
    assert "title='&lt;i&gt;desc&lt;/i&gt;&#x27; onmouseover=&#x27;x'" in table


def sample() -> Index:
    return extension_index.parse(index_json(
        entry("beta", added="2023-03-01", stars=5, tags=["script"], commit_time="2024-01-01T00:00:00Z",
              created_at="2022-01-01T00:00:00Z"),
        entry("Alpha", added="2023-01-01", stars=50, tags=["ads"], description="Shows ADS"),
        entry("gamma", added="2023-02-01", stars=1, tags=["localization"], commit_time="2024-06-01T00:00:00Z",
              created_at="2023-01-01T00:00:00Z"),
        entry("delta", stars=9, description="a tool for prompts"),  # no date added
    ))


@pytest.mark.parametrize(("order", "names"), [
    ("newest first", ["beta", "gamma", "Alpha", "delta"]),
    ("oldest first", ["Alpha", "gamma", "beta", "delta"]),
    ("a-z", ["Alpha", "beta", "delta", "gamma"]),
    ("z-a", ["gamma", "delta", "beta", "Alpha"]),
    ("internal order", ["beta", "Alpha", "gamma", "delta"]),
    ("update time", ["gamma", "beta", "Alpha", "delta"]),
    ("create time", ["gamma", "beta", "Alpha", "delta"]),
    ("stars", ["Alpha", "delta", "beta", "gamma"]),
    ("no such order", ["beta", "gamma", "Alpha", "delta"]),
])
def test_orders(order, names):
    shown, hidden = extension_index.visible(sample(), [], order, "")
    assert [e.name for e in shown] == names and hidden == 0


def test_tag_filter_and_search():
    index = sample()
    shown, hidden = extension_index.visible(index, list(extension_index.DEFAULT_HIDDEN), "a-z", "")
    assert [e.name for e in shown] == ["beta", "delta"] and hidden == 2
    assert [e.name for e in extension_index.visible(index, [], "a-z", "ads")[0]] == ["Alpha"]  # description
    assert [e.name for e in extension_index.visible(index, [], "a-z", " PROMPT ")[0]] == ["delta"]
    assert [e.name for e in extension_index.visible(index, ["ads"], "a-z", "ads")[0]] == []
    table = extension_index.table_html(index, ["ads", "localization"], "a-z", "")
    assert "Extensions hidden: 2" in table and table.count("<tr>") == 3  # head + 2 rows
    assert extension_index.table_html(None, [], "a-z", "") == ""


def test_installed_entries_are_marked_and_hidden_by_default(no_extensions):
    index = extension_index.parse(index_json(entry("by-name"), entry("by-remote"), entry("other")))
    (no_extensions / "by-name").mkdir(parents=True)
    clone = no_extensions / "my-folder"
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-C", str(clone)]
    clone.mkdir()
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "first"], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://github.com/someone/By-Remote.git"], check=True)
    index = extension_index.with_installed(index)
    assert [e.name for e in extension_index.visible(index, ["installed"], "a-z", "")[0]] == ["other"]
    table = extension_index.table_html(index, [], "a-z", "")
    assert table.count("<span class='extension-installed'>Installed</span>") == 2
    assert table.count("extension-install'") == 1 and "data-url='https://github.com/someone/other'" in table
    assert "installed</span>" in table  # the tag shows too
    assert "installed" in index.tag_choices()


# --- fetching --------------------------------------------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as s:
        yield s


def test_load_from_a_local_server_with_the_flag(server, no_extensions, monkeypatch):
    server.files["/index.json"] = Entry(index_json(GOOD, "bad").encode())
    with pytest.raises(IndexFailure, match=r"loopback address .* need --allow-private-downloads"):
        extension_index.load(server.url("/index.json"))
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--allow-private-downloads"]))
    index = extension_index.load(server.url("/index.json"))
    assert [e.name for e in index.entries] == ["Good One"] and index.skipped == 1
    assert server.requests == [("/index.json", None)]


def test_redirects_are_followed_and_checked(server):
    server.files["/index.json"] = Entry(index_json(GOOD).encode())
    server.files["/moved"] = Entry(redirect="/index.json")
    assert json.loads(extension_index.fetch(server.url("/moved"), LOCAL))["extensions"][0]["name"] == "Good One"
    server.files["/to-http-public"] = Entry(redirect="http://93.184.216.34/index.json")
    with pytest.raises(DownloadRefused, match="use https"):
        extension_index.fetch(server.url("/to-http-public"), LOCAL)


@pytest.mark.parametrize("url", ["http://93.184.216.34/index.json", "ftp://93.184.216.34/index.json",
                                 "file:///etc/passwd", "index.json"])
def test_anything_but_https_is_refused_without_a_connection(url):
    with pytest.raises(DownloadRefused, match="https"):
        extension_index.fetch(url, Policy(max_bytes=extension_index.MAX_BYTES))


def test_loopback_is_refused_without_the_flag(server):
    server.files["/index.json"] = Entry(index_json(GOOD).encode())
    with pytest.raises(DownloadRefused, match="allow-private-downloads"):
        extension_index.fetch(server.url("/index.json"), Policy(max_bytes=extension_index.MAX_BYTES))
    assert server.requests == []


def test_an_oversized_index_is_refused_by_its_length(server):
    server.files["/big.json"] = Entry(b" " * (extension_index.MAX_BYTES + 1))
    with pytest.raises(DownloadRefused, match="larger than 5 MB"):
        extension_index.fetch(server.url("/big.json"), LOCAL)
    server.files["/ok.json"] = Entry(b" " * extension_index.MAX_BYTES)
    assert len(extension_index.fetch(server.url("/ok.json"), LOCAL)) == extension_index.MAX_BYTES


def test_an_oversized_index_without_a_length_is_cut_off():
    sent = []

    class Endless(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no Content-Length

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(200):  # 12.5 MB at most
                    self.wfile.write(b" " * 65536)
                    sent.append(65536)
            except OSError:
                pass  # the client stopped reading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadRefused, match="larger than 5 MB"):
            extension_index.fetch(f"http://127.0.0.1:{httpd.server_address[1]}/", LOCAL)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sum(sent) < 200 * 65536  # the reader gave up; the server did not get to send everything


def test_an_error_status_is_one_readable_line(server, no_extensions, monkeypatch):
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--allow-private-downloads"]))
    with pytest.raises(IndexFailure, match="^Could not load the index: the server answered 404"):
        extension_index.load(server.url("/missing.json"))
    server.files["/bad.json"] = Entry(b"<html>not json</html>")
    with pytest.raises(IndexFailure, match="not valid JSON"):
        extension_index.load(server.url("/bad.json"))


def test_loading_is_refused_where_managing_extensions_is(server, no_extensions, monkeypatch):
    server.files["/index.json"] = Entry(index_json(GOOD).encode())
    monkeypatch.setattr(shared, "cmd_opts", shared.parser.parse_args(["--listen", "--allow-private-downloads"]))
    with pytest.raises(IndexFailure, match="--enable-insecure-extension-access"):
        extension_index.load(server.url("/index.json"))
    assert server.requests == []  # a server others reach fetches nothing for them


def test_the_default_url_and_the_environment_variable(monkeypatch):
    monkeypatch.delenv(extension_index.ENV_VAR, raising=False)
    assert extension_index.index_url() == extension_index.DEFAULT_URL
    monkeypatch.setenv(extension_index.ENV_VAR, "https://mirror.example/index.json")
    assert extension_index.index_url() == "https://mirror.example/index.json"


def test_dirname_rules_are_shared_with_install_from_url():
    assert extension_manager.dirname_refusal("ok-name") is None
    assert extension_index.link_refusal("https://github.com/a/.git") is not None  # "" after .git: no name
