"""Helpers for the browser tests: the server under test (`launch.py` on loopback) and page actions."""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .warm_start import ForkedProcess, WarmStarter

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 90.0  # seconds; a cold start on a busy 2-core machine, with torch and gradio to import


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
              "PYTHONUNBUFFERED": "1"}
_warm_starter: WarmStarter | None = None


def server_env() -> dict[str, str]:
    env = dict(os.environ, **SERVER_ENV)
    env.pop("COMMANDLINE_ARGS", None)
    return env


def warm_starter() -> WarmStarter:
    """This test process's warm starter (see warm_start.py), started on first use."""
    global _warm_starter
    if _warm_starter is None or not _warm_starter.alive():
        _warm_starter = WarmStarter(server_env())
        atexit.register(_warm_starter.stop)
    return _warm_starter


class Server:
    """`python3 launch.py` on loopback, as a person starts it; stopped by its own process id.

    warm: fork it from the warm starter, whose process has the third-party libraries imported already (the
    browser tests' servers; see warm_start.py). Off, a cold `python launch.py` (the launcher's own tests)."""

    def __init__(self, data_dir: Path, *extra_args: str, warm: bool = False):
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.warm = warm
        self.port = 0
        self.process: subprocess.Popen | ForkedProcess | None = None
        self.log_path = data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Server:
        self.port = free_port()
        env = server_env()
        args = ["launch.py", "--skip-install", "--data-dir", str(self.data_dir), "--port", str(self.port),
                *self.extra_args]
        deadline = time.monotonic() + START_TIMEOUT
        if self.warm:
            self.process = warm_starter().start(args, env, self.log_path, START_TIMEOUT)
        else:
            log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
            self.process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
            self._log = log
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


def make_data_dir(root: Path) -> Path:
    from tiny_models import write_tiny_checkpoint

    ckpt_dir = root / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    write_tiny_checkpoint(ckpt_dir / "tiny.safetensors", "sd1", seed=3)
    return root


VIEWPORT = {"width": 1400, "height": 1000}
_tab_contexts: dict[int, object] = {}  # id(browser) -> the context tests open their pages in


def new_page(browser):
    """A fresh browser context (its own cookies and session, like another person) and a page in it."""
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    return context, pg


def opened_page(browser, url: str):
    """A fixture body: a new tab open on `url` (yielded), closed afterwards. Tabs share one context without
    cookies, as one person opens tabs: the browser's cache keeps the page's scripts, so the server does not send
    and compress them again and the browser does not compile them again (0.3-0.7 s less per page here).
    A test that needs another person uses `new_page`."""
    context = _tab_contexts.get(id(browser))
    if context is None:
        context = _tab_contexts[id(browser)] = browser.new_context(viewport=VIEWPORT)
    context.clear_cookies()
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    try:
        open_page(pg, url)
        yield pg
    finally:
        pg.close()


def open_page(pg, url: str, model: str = "tiny") -> None:
    pg.goto(url)
    pg.wait_for_selector("#txt2img_generate")
    # The page's load events fill the quicksettings from the server; wait until the model title is there.
    pg.wait_for_function("(model) => { const i = document.querySelector('#setting_sd_model_checkpoint input');"
                         " return i !== null && i.value.includes(model); }", arg=model)


def set_number(pg, elem_id: str, value: int | float) -> None:
    """Type into a slider's number box, as a person does, and confirm with Enter.

    A tab that has just opened may still fill its boxes with the stored values and overwrite what was typed;
    like a person, type again until the value stays.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = pg.locator(f"#{elem_id} input[type=number]")
    box.wait_for(state="visible")
    check = f"() => document.querySelector('#{elem_id} input[type=number]').value == '{value}'"
    for _ in range(4):
        box.fill(str(value))
        box.press("Enter")
        try:
            pg.wait_for_function(check, timeout=10_000)
            pg.wait_for_timeout(300)  # still there a moment later: not overwritten by a late refresh
            if box.input_value() == str(value):
                return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"#{elem_id} did not keep the value {value}")


def wait_for_saved(config: Path, key: str, value: object, timeout: float = 30.0) -> None:
    """Until config.json holds `value` for `key`: two Applies in a row both say "1 setting changed", so the
    page's text alone cannot tell the second one has run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if config.exists() and json.loads(config.read_text() or "{}").get(key) == value:
            return
        time.sleep(0.2)
    raise AssertionError(f"config.json did not get {key}={value!r}: {config.read_text() if config.exists() else None}")


def open_settings_section(pg, label: str) -> None:
    """Settings has more sections than fit in a row: the last ones are in gradio's overflow menu (⋯)."""
    pg.click("#tab_settings-button")
    pg.locator("#settings .overflow-menu > button").click()
    pg.locator("#settings .overflow-dropdown button", has_text=label).click()


def fill_prompt(pg, tab: str, text: str) -> None:
    """Type a prompt, as a person does, again if a late send-to or paste put the old one back."""
    box = pg.locator(f"#{tab}_prompt textarea")
    for _ in range(4):
        box.fill(text)
        pg.wait_for_timeout(500)  # still there a moment later: not overwritten by a late event
        if box.input_value() == text:
            return
    raise AssertionError(f"the {tab} prompt did not keep {text!r}")


def press_during_job(pg, selector: str) -> None:
    """Press a button (Interrupt, Skip) while a job's live previews keep the page busy: through the button's own
    click event, since a mouse click through the browser's input pipeline waited 90 s for such a page on a busy
    2-core CI host (twice)."""
    pg.locator(selector).dispatch_event("click", timeout=90_000)


def wait_for_run_end(pg, tab: str) -> None:
    """A run has ended when its time line appears in the log (after success, interrupt or error)."""
    pg.wait_for_selector(f"#html_log_{tab} .time, #html_log_{tab} .error", timeout=60_000)


def small_run(pg, tab: str, steps: int = 4) -> None:
    set_number(pg, f"{tab}_width", 64)
    set_number(pg, f"{tab}_height", 64)
    set_number(pg, f"{tab}_steps", steps)


def gallery_png(pg, tab: str):
    """The first result image as the browser fetched it (the file a person would save)."""
    import io

    from PIL import Image

    src = pg.locator(f"#{tab}_gallery img").first.get_attribute("src")
    response = pg.request.get(src)
    assert response.ok
    return Image.open(io.BytesIO(response.body()))


def source_png(path: Path, parameters: str | None = None) -> Path:
    """A small picture (a yellow disc on blue), with an infotext chunk when `parameters` is given."""
    from PIL import Image, ImageDraw, PngImagePlugin

    image = Image.new("RGB", (64, 64), (30, 90, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(240, 200, 20))
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    image.save(path, pnginfo=info)
    return path


def upload_into(pg, component, path: Path) -> None:
    """Drop a file into an image widget and wait until the server has it (the upload request answered)."""
    with pg.expect_response(lambda r: "/upload" in r.url and r.request.method == "POST"):
        component.locator("input[type=file]").set_input_files(str(path))
    component.locator(".empty").wait_for(state="hidden")


def drop_into_editor(pg, editor_id: str, path: Path) -> None:
    """Drop a picture into an image editor and wait until the editor shows it: it keeps the picture in the page (no
    request to wait on) and, once it has it, turns Undo on. A drop the editor missed (seen once in CI, on a loaded
    host, with the editor's sub-tab just opened) is made again, as a person who sees an empty editor would."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    editor = pg.locator(f"#{editor_id}")
    editor.locator(".pixi-target canvas").first.wait_for(state="visible")
    shown = editor.locator("button[aria-label=Undo]:not([disabled])")
    for _ in range(3):
        editor.locator("input[type=file]").set_input_files(str(path))
        try:
            shown.wait_for(state="visible", timeout=20_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"#{editor_id} never showed the dropped picture")


# Counts finished Generate events per tab: the page calls window.studioAfterGenerate(tab) after each one
# (modules/ui/generation.py), whether it ended in pictures or in an error line.
COUNT_RUNS = """() => {
    if (window.__runsEnded) return;
    window.__runsEnded = {};
    const original = window.studioAfterGenerate;
    window.studioAfterGenerate = (tab) => {
        window.__runsEnded[tab] = (window.__runsEnded[tab] || 0) + 1;
        return original && original(tab);
    };
}"""


def press_generate(pg, tab: str) -> str:
    """Press Generate and wait until this run has ended (pictures or an error line shown).

    Returns the text of the run's message area (the error, notices and the time taken)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    pg.evaluate(COUNT_RUNS)
    before = pg.evaluate(f"() => window.__runsEnded['{tab}'] || 0")
    first_picture = f"() => document.querySelector('#{tab}_gallery img')?.getAttribute('src') || null"
    picture_before = pg.evaluate(first_picture)
    pg.click(f"#{tab}_generate")
    pg.wait_for_function(f"() => (window.__runsEnded['{tab}'] || 0) > {before}", timeout=90_000)
    if "Time taken" in pg.inner_text(f"#html_log_{tab}") and pg.locator(f"#html_log_{tab} .error").count() == 0:
        try:  # a run that made pictures: the gallery may show them a moment after the message (busy machine)
            pg.wait_for_function(f"() => ({first_picture})() !== {json.dumps(picture_before)}", timeout=10_000)
        except PlaywrightTimeoutError:
            pass  # the same picture, or none: the test's own checks say whether that is right
    return pg.inner_text(f"#html_log_{tab}")


def paint_and_generate(pg, editor_id: str = "img2maskimg", tab: str = "img2img") -> str:
    """Paint a stroke in the inpaint editor and press Generate; returns the run's message. The editor draws the sent
    or uploaded picture a moment after its canvas shows (seen once in CI: a stroke made in that moment was dropped
    and the run said the mask was empty); like a person who reads that line, paint again, at most twice more."""
    for _ in range(3):
        paint_stroke(pg, editor_id)
        log = press_generate(pg, tab)
        if "the mask is empty" not in log:
            break
        pg.wait_for_timeout(1000)
    return log


def paint_stroke(pg, editor_id: str) -> None:
    """Paint a horizontal brush stroke across the middle of an image editor's canvas, as a person drags."""
    editor = pg.locator(f"#{editor_id}")
    canvas = editor.locator(".pixi-target canvas").first
    canvas.wait_for(state="visible")
    editor.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(x - 60, y)
    pg.mouse.down()
    # the brush joins successive points, so four moves draw the same 120-pixel zigzag as many; each event costs
    # the headless browser a software-rendered repaint (about 0.25 s here)
    for i in range(1, 5):
        pg.mouse.move(x - 60 + i * 30, y + (i % 2) * 6)
    pg.mouse.up()
