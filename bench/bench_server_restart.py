"""Restart of the real server to its first picture (issue #18 point 2), as a person restarting it meets it: a fresh
`launch.py --nowebui` process (the API alone; `--skip-install`, this Python), the checkpoint already on disk in its
models folder, timed from the process start to the API answering and to the response of its first
`POST /sdapi/v1/txt2img` (sent as soon as the API answers, so it waits in the queue behind the model load), then
one steady request. SD1.5 at 512x512 or SDXL at 1024x1024, 30 steps, Euler, CFG 7, random weights at real sizes
(bench/full_size.py). `bench_restart.py` times the engine alone (no launcher, settings, extensions or API).

    python bench/bench_server_restart.py --workdir /tmp/bench --family sd15 --runs 3 --out restart-server.json
    python bench/bench_server_restart.py --small     # the bundled default model on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.jobs import NEGATIVE, PROMPT, SEED, SIZES  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_dir(args: argparse.Namespace) -> str:
    """A data folder whose models folder holds the bench checkpoint (none with --small: the bundled model)."""
    folder = os.path.join(args.workdir, f"server-data-{'small' if args.small else args.family}")
    models = os.path.join(folder, "models", "Stable-diffusion")
    os.makedirs(models, exist_ok=True)
    if args.small:
        return folder
    source = os.path.join(args.workdir, f"{args.family}.safetensors")
    if not os.path.exists(source):
        from bench.full_size import write_checkpoint_and_config

        write_checkpoint_and_config(args.family, source, os.path.join(args.workdir, f"{args.family}-config"))
    target = os.path.join(models, os.path.basename(source))
    if not os.path.exists(target):
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return folder


def request(port: int, path: str, body: dict | None = None, timeout: float = 900) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_for_api(port: int, process: subprocess.Popen, limit: float) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            request(port, "/internal/ping", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise TimeoutError("the API did not answer")


def one_restart(args: argparse.Namespace, folder: str, log_path: str) -> dict:
    port = free_port()
    argv = [sys.executable, os.path.join(ROOT, "launch.py"), "--skip-install", "--nowebui", "--port", str(port),
            "--data-dir", folder, "--skip-version-check"] + (["--use-cpu", "all"] if args.small else [])
    size, steps = (64, 4) if args.small else (SIZES[args.family], 30)
    payload = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": steps, "cfg_scale": 7,
               "width": size, "height": size, "sampler_name": "Euler", "send_images": True, "save_images": False}
    env = dict(os.environ, VENV_DIR="-", PYTHONUNBUFFERED="1")
    start = time.time()
    with open(log_path, "a") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_api(port, process, args.limit)
            marks = {"api_answers": time.time() - start}
            result = request(port, "/sdapi/v1/txt2img", payload)
            marks["first_image"] = time.time() - start
            assert result.get("images"), "no picture in the response"
            steady = time.time()
            request(port, "/sdapi/v1/txt2img", payload)
            marks["steady_image_s"] = time.time() - steady
            return marks
        except Exception as e:  # a broken run is reported; the server's output is in the .log beside --out
            return {"error": repr(e)[:300]}
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench-models"))
    parser.add_argument("--family", default="sd15", choices=sorted(SIZES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=float, default=300, help="seconds to wait for the API to answer")
    parser.add_argument("--small", action="store_true", help="the bundled model on the CPU, 64x64, 4 steps")
    parser.add_argument("--out", default="restart-server.json")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    folder = data_dir(args)
    log_path = os.path.splitext(args.out)[0] + ".log"
    results: dict = {"family": "bundled default (CPU)" if args.small else args.family, "runs": []}
    for i in range(args.runs):
        marks = one_restart(args, folder, log_path)
        results["runs"].append(marks)
        print(f"run {i + 1}: {json.dumps(marks)}", flush=True)
        with open(args.out, "w") as f:  # a cut-off run keeps what finished
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
