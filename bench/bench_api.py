"""Per-request overhead of the HTTP API against calling `process_images` directly (tiny model, CPU).

The same txt2img (64x64, 4 steps, Euler, CFG 7, batch 1, nothing saved) is run N times each way, alternating
so that drift in machine load hits both alike: directly through `processing.process_images`, and as
`POST /sdapi/v1/txt2img` to a real uvicorn server on loopback (in this process, API-only app, no auth) whose
job runs on the shared queue's worker and whose response carries the base64 PNG with its infotext.

Two figures, both against the median direct time (goal: under 5%):
- end to end: median API time minus median direct time (on a busy machine this moves with the noise);
- per request: each API request's wall time minus the time `process_images` itself took inside that request's
  job (timed by a wrapper), i.e. exactly what the API adds: HTTP, JSON, validation, queue hand-off, PNG/base64.
Also the bare round trip of `GET /internal/ping`.

    python bench/bench_api.py [--requests 40] [--steps 4] [--size 64] [--auth]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from tiny_models import write_tiny_checkpoint  # noqa: E402

from modules import processing, sd_models, shared  # noqa: E402
from modules.api.auth import BasicAuth  # noqa: E402
from modules.api.server import create_app  # noqa: E402
from modules.models import registry  # noqa: E402


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="timed requests each way")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--auth", action="store_true", help="serve with --api-auth on (Basic credentials sent)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    data = tempfile.mkdtemp()
    os.makedirs(os.path.join(data, "models", "Stable-diffusion"))
    write_tiny_checkpoint(os.path.join(data, "models", "Stable-diffusion", "tiny.safetensors"), "sd1", seed=1)
    shared.set_cmd_opts(shared.parser.parse_args(["--data-dir", data]))
    shared.opts.data.update(live_previews_enable=False, samples_save=False, grid_save=False)
    registry.list_models()
    sd_models.load_model()

    inner: list[float] = []  # how long each process_images call took, wherever it ran
    real_process_images = processing.process_images

    def timed_process_images(p):
        started = time.perf_counter()
        try:
            return real_process_images(p)
        finally:
            inner.append(time.perf_counter() - started)

    processing.process_images = timed_process_images  # the API's job calls processing.process_images too

    body = {"prompt": "a small red circle", "negative_prompt": "blurry", "steps": args.steps, "width": args.size,
            "height": args.size, "sampler_name": "Euler", "cfg_scale": 7.0}

    def direct(seed: int) -> float:
        started = time.perf_counter()
        p = processing.StableDiffusionProcessingTxt2Img(**body, seed=seed, do_not_save_samples=True,
                                                        do_not_save_grid=True)
        processing.process_images(p)
        return time.perf_counter() - started

    auth = BasicAuth([("bench", "secret")]) if args.auth else None
    headers = {"Authorization": "Basic " + base64.b64encode(b"bench:secret").decode()} if args.auth else {}
    server, thread, url = start_server(create_app(auth=auth, log_requests=False))
    client = httpx.Client(base_url=url, headers=headers, timeout=300)

    server_times: list[float] = []  # X-Process-Time: the route's own time, auth to response

    def api(seed: int) -> float:
        started = time.perf_counter()
        r = client.post("/sdapi/v1/txt2img", json={**body, "seed": seed})
        r.raise_for_status()
        assert len(r.json()["images"]) == 1
        server_times.append(float(r.headers["x-process-time"]))
        return time.perf_counter() - started

    for i in range(args.warmup):
        direct(i)
        api(i)
    direct_times, api_times, added, in_server = [], [], [], []
    for i in range(args.requests):
        direct_times.append(direct(100 + i))
        api_times.append(api(100 + i))
        added.append(api_times[-1] - inner[-1])
        in_server.append(server_times[-1] - inner[-1])
    ping = []
    for _ in range(200):
        started = time.perf_counter()
        client.get("/internal/ping").raise_for_status()
        ping.append(time.perf_counter() - started)
    client.close()
    server.should_exit = True
    thread.join(10)

    d, a, x = statistics.median(direct_times), statistics.median(api_times), statistics.median(added)
    result = {
        "requests": args.requests, "steps": args.steps, "size": args.size, "auth": args.auth,
        "direct_median_s": round(d, 5), "api_median_s": round(a, 5),
        "end_to_end_overhead_ms": round((a - d) * 1000, 2), "end_to_end_overhead_percent": round((a - d) / d * 100, 2),
        "per_request_overhead_ms": round(x * 1000, 2), "per_request_overhead_percent": round(x / d * 100, 2),
        "of_which_in_route_ms": round(statistics.median(in_server) * 1000, 2),
        "ping_median_ms": round(statistics.median(ping) * 1000, 3),
    }
    print(f"txt2img {args.size}x{args.size}, {args.steps} steps, {args.requests} requests each way "
          f"(torch threads {__import__('torch').get_num_threads()})")
    print(f"  process_images directly: median {d * 1000:.1f} ms")
    print(f"  POST /sdapi/v1/txt2img:  median {a * 1000:.1f} ms")
    print(f"  end to end: +{result['end_to_end_overhead_ms']} ms = {result['end_to_end_overhead_percent']}%")
    print(f"  added by the API per request (wall time minus process_images inside the job): median "
          f"{result['per_request_overhead_ms']} ms = {result['per_request_overhead_percent']}%  (goal < 5%)")
    print(f"    of which inside the route (validation, queue hand-off, PNG + base64): "
          f"{result['of_which_in_route_ms']} ms; the rest is HTTP, JSON and the client")
    print(f"  GET /internal/ping round trip: median {result['ping_median_ms']} ms")
    if args.out:
        with open(args.out, "w", encoding="utf8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
