"""A model server on 127.0.0.1 for download tests: serves bytes by path, with Range support, redirects,
Content-Disposition names and a connection that can be cut half-way. Records every request it gets."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from dataclasses import dataclass, field


def tiny_safetensors(seed: int = 0, floats: int = 4096) -> bytes:
    """A real (tiny) safetensors file: one float32 tensor."""
    import numpy as np
    from safetensors.numpy import save

    values = np.random.default_rng(seed).standard_normal(floats).astype("float32")
    return save({"weight": values})


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    data: bytes = b""
    redirect: str | None = None  # answer 302 to this Location
    disposition: str | None = None  # a Content-Disposition header to send
    cut_times: int = 0  # cut the connection half-way this many times, then serve whole
    ranges: bool = True
    pause_s: float = 0.0  # sent in four pieces with this pause between them (a slow server)
    headers: dict[str, str] = field(default_factory=dict)


class ModelServer:
    def __init__(self) -> None:
        self.files: dict[str, Entry] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                server.requests.append((path, self.headers.get("Range")))
                entry = server.files.get(path)
                if entry is None:
                    self.send_error(404)
                    return
                if entry.redirect:
                    self.send_response(302)
                    self.send_header("Location", entry.redirect)
                    self.send_header("Content-Length", "0")
                    for key, value in entry.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    return
                data, start = entry.data, 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and entry.ranges:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                if entry.disposition:
                    self.send_header("Content-Disposition", entry.disposition)
                for key, value in entry.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                body = data[start:]
                if entry.cut_times > 0:
                    entry.cut_times -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if entry.pause_s:
                    step = max(1, len(body) // 4)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i:i + step])
                        self.wfile.flush()
                        time.sleep(entry.pause_s)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


__all__ = ["Entry", "ModelServer", "sha256_of", "tiny_safetensors"]
