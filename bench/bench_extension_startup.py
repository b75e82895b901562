"""Start-up cost of installed extensions: time from `python launch.py` to the first page, with N extensions.

Each extension is what a typical one holds: a script with an always-visible accordion (three controls), a
callback, a JavaScript file, a style sheet and a metadata.ini. The model is not loaded (it loads on the queue in
parallel anyway), so the figure is the extensions' own cost on top of building the page.

    python bench/bench_extension_startup.py --extensions 20      # one start; prints seconds to the first page

Compare against no extensions in alternating pairs (start-up times drift with the machine's load):
    for i in 1 2 3 4; do python3 bench/bench_extension_startup.py --extensions 0
                         python3 bench/bench_extension_startup.py --extensions 20; done
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''import gradio as gr
from modules import script_callbacks, scripts


class Ext{n}(scripts.Script):
    def title(self):
        return "Bench extension {n}"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("Bench extension {n}", open=False):
            return [gr.Checkbox(label="On", value=False), gr.Slider(0, 1, value=0.5, label="Strength"),
                    gr.Dropdown(["a", "b", "c"], value="a", label="Mode")]

    def process(self, p, on, strength, mode):
        if on:
            p.extra_generation_params["Bench {n}"] = strength


script_callbacks.on_model_loaded(lambda model: None)
'''


def make_extensions(root: Path, count: int) -> None:
    for n in range(count):
        ext = root / "extensions" / f"bench-ext-{n:02d}"
        (ext / "scripts").mkdir(parents=True)
        (ext / "javascript").mkdir()
        (ext / "scripts" / f"bench_{n}.py").write_text(SCRIPT.format(n=n))
        (ext / "javascript" / f"bench_{n}.js").write_text(f"onUiLoaded(() => {{ window.bench{n} = true; }});\n")
        (ext / "style.css").write_text(f".bench-{n} {{ color: red; }}\n")
        (ext / "metadata.ini").write_text(f"[Extension]\nName = bench-ext-{n}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_first_page(data_dir: Path) -> float:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", VENV_DIR="-")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "launch.py", "--skip-install", "--skip-load-model-at-start",
                                "--data-dir", str(data_dir), "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"the server exited with {process.returncode}")
    finally:
        process.terminate()
        process.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extensions", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models" / "Stable-diffusion").mkdir(parents=True)
        make_extensions(root, args.extensions)
        print(f"{args.extensions} extensions: first page after {time_to_first_page(root):.2f} s")


if __name__ == "__main__":
    main()
