"""Browser tests: the real page in headless Chromium (Debian's package), driven by Playwright, against a server
started with `launch.py` on loopback with a tiny random-weight checkpoint in a temporary data dir.

`tests/browser/install-chromium.sh` (run by the README's test command and .ci/run) installs Chromium. Without
it these tests are skipped with the reason, except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .helpers import CHROMIUM, CHROMIUM_ARGS, Server, make_data_dir, opened_page


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def playwright_browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (run the README's test command, or: "
                 "venv/bin/python -m pip install -r requirements-test.txt)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (run tests/browser/install-chromium.sh)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory, playwright_browser) -> Iterator[Server]:
    data_dir = make_data_dir(tmp_path_factory.mktemp("webui"))
    srv = Server(data_dir, warm=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(playwright_browser, server):
    yield from opened_page(playwright_browser, server.url)


