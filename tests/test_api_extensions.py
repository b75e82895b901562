"""GET /sdapi/v1/extensions as A1111 answers it: the installed extensions that are git clones, with remote,
branch, commit, version, date and whether they are enabled; a token in a clone URL never leaves the server."""

from __future__ import annotations

import subprocess

import pytest
from test_api_support import client, serving

from modules import paths, shared
from modules.api.server import create_app
from modules.extension_git import without_credentials


def git(folder, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(folder), *args],
                   check=True, capture_output=True)


@pytest.fixture
def http(tmp_path, isolated_data_dir, monkeypatch):
    with isolated_data_dir(tmp_path / "data", {}, {}):
        root = tmp_path / "data" / "extensions"
        monkeypatch.setattr(paths, "extensions_dir", str(root))
        monkeypatch.setattr(paths, "extensions_builtin_dir", str(tmp_path / "no-builtin"))
        for name, remote in (("private-ext", "https://me:ghp_SECRET123@example.invalid/me/private-ext.git"),
                             ("off-ext", "https://example.invalid/a/off-ext")):
            folder = root / name
            folder.mkdir(parents=True)
            (folder / "README").write_text(name)
            git(folder, "init", "-q", "-b", "main")
            git(folder, "add", "-A")
            git(folder, "commit", "-qm", "first")
            git(folder, "remote", "add", "origin", remote)
        (root / "local-only").mkdir()  # not a git clone: A1111 leaves it out
        monkeypatch.setitem(shared.opts.data, "disabled_extensions", ["off-ext"])
        with serving(create_app(auth=None)) as running, client(running) as c:
            yield c


def test_extensions_list_in_a1111_shape_without_credentials(http):
    r = http.get("/sdapi/v1/extensions")
    assert r.status_code == 200, r.text
    items = {item["name"]: item for item in r.json()}
    assert set(items) == {"private-ext", "off-ext"}
    private = items["private-ext"]
    assert private["remote"] == "https://example.invalid/me/private-ext.git"
    assert "SECRET" not in r.text and "me:" not in r.text
    assert private["branch"] == "main" and len(private["commit_hash"]) == 40
    assert private["version"] == private["commit_hash"][:8] and isinstance(private["commit_date"], int)
    assert private["enabled"] is True and items["off-ext"]["enabled"] is False


def test_without_credentials_keeps_what_is_not_a_secret():
    assert without_credentials("https://tok@github.com/a/b") == "https://github.com/a/b"
    assert without_credentials("https://github.com/a/b.git") == "https://github.com/a/b.git"
    assert without_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"
    assert without_credentials("/srv/repos/ext") == "/srv/repos/ext"
