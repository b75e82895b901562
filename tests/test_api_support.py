"""Helpers for the API tests (no tests here): a real uvicorn server on a free loopback port in a background
thread, a data dir with a tiny checkpoint, and small image/PNG helpers."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

CHECKPOINTS = {
    "tiny.safetensors": {"family": "sd1", "seed": 3},
    "other.safetensors": {"family": "sd1", "seed": 9},
}
SETTINGS = {"live_previews_enable": False, "samples_save": False, "grid_save": False}
FAST = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 42}


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> from a daemon thread."""

    def __init__(self, app: Any):
        # port 0: the OS picks a free port, read back once started. (Handing uvicorn a socket of our own made
        # every response wait ~40 ms for a delayed ACK.)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0
        self.url = ""

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def serving(app: Any) -> Iterator[ServerThread]:
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


def client(server: ServerThread, timeout: float = 120, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout, **kwargs)


def b64_png(image: Image.Image, **pnginfo: str) -> str:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in pnginfo.items():
        info.add_text(k, v)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info if pnginfo else None)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_error_json(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """A1111's error shape, with `field` named in `errors` (the one-line summary)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}, body
    if field is not None:
        assert field in body["errors"], body
    return body


def assert_unique_operation_ids(schema: dict[str, Any]) -> None:
    """Client generators (openapi-generator, ...) refuse a schema in which two operations share an id."""
    ids = [op["operationId"] for item in schema["paths"].values() for op in item.values() if "operationId" in op]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
