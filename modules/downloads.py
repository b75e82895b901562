"""Model downloads a person asks for: `--download` at start-up, the Settings tab's "Download model" box.

A download is a URL (https; http only to a local mirror with --allow-private-downloads) or a Hugging Face hub
repo id + file. Every hop goes through `download_guard` (scheme, address pinned after one resolution, redirects
checked one by one). The file is written to `NAME.part` in its folder and renamed at the end; a `.part` left
by a cut connection is resumed with an HTTP Range request (by this call's own retries, or a later call). The
size limit is checked against Content-Length before the body and against the bytes while they stream; the
sha256 is checked when known (given, `#sha256=` in the URL, or the hub's LFS etag) and a file that does not
match is not kept. Then the folder of its type is rescanned, so the model is listed at once.

Hub files: `huggingface_hub.hf_hub_url` builds the URL (honouring HF_ENDPOINT) and the bytes come through the
same guarded client. So the launcher's HF_HUB_OFFLINE stays set for everything else in the process: no global
switch is flipped for the length of a download, and hub files get the same limits, progress and resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import IncompleteRead as _IncompleteRead
from typing import Any

from modules import download_files, download_guard, shared
from modules.download_guard import DownloadRefused, Policy

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
ATTEMPTS = 3  # a cut connection is resumed this many times in one call before giving up
DEFAULT_MAX_GB = 30.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

ProgressFn = Callable[[str, int, int | None], None]  # (file name, bytes so far, total or None)


@dataclass
class DownloadRequest:
    """What a person asked for. Either `url`, or `repo_id` + `filename` (with an optional `revision`)."""

    kind: str = "checkpoint"
    url: str = ""
    repo_id: str = ""
    filename: str = ""
    revision: str | None = None
    upscaler: str | None = None  # for kind "upscaler": ESRGAN, RealESRGAN, ...
    sha256: str | None = None
    name: str | None = None  # save under this name instead of the server's
    overwrite: bool = False


@dataclass
class DownloadResult:
    path: str
    kind: str
    size: int
    sha256: str
    resumed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


class _Cut(Exception):
    """The connection ended before the whole file came; the .part file is kept for a resume."""


def policy_from_cmd_opts() -> Policy:
    opts = shared.cmd_opts
    max_gb = getattr(opts, "download_max_gb", None) or DEFAULT_MAX_GB
    return Policy(allow_private=bool(getattr(opts, "allow_private_downloads", False)),
                  max_bytes=int(float(max_gb) * 1024**3))


def format_size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- what to fetch -------------------------------------------------------------------------------------------

def _expected_sha(req: DownloadRequest, url: str) -> tuple[str, str | None]:
    """(URL without a #sha256= fragment, the expected sha256 in lower case or None)."""
    base, _, fragment = url.partition("#")
    found = req.sha256.strip() if req.sha256 and req.sha256.strip() else None
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if found is None and match:
        found = match.group(1)
    if found is not None and not _SHA256.match(found):
        raise DownloadRefused("the sha256 must be 64 hexadecimal digits")
    return base, found.lower() if found else None


def hub_url(repo_id: str, filename: str, revision: str | None = None) -> str:
    """The hub's download URL of one file, checked for names that would change which file it is."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id.strip())
    except HFValidationError as e:
        raise DownloadRefused(f"not a hub repo id: {e}") from None
    parts = filename.strip().split("/")
    if not filename.strip() or any(p in ("", ".", "..") for p in parts):
        raise DownloadRefused(f"not a file in the repo: {filename!r}")
    return hf_hub_url(repo_id.strip(), filename.strip(), revision=(revision or None))


def _hub_token_headers(url: str) -> dict[str, str]:
    """The person's hub token (HF_TOKEN or `hf auth login`), for gated repos: only ever sent to the hub itself."""
    with contextlib.suppress(Exception):
        from huggingface_hub import constants, get_token

        token = get_token()
        if token and urllib.parse.urlsplit(url).hostname == urllib.parse.urlsplit(constants.ENDPOINT).hostname:
            return {"Authorization": f"Bearer {token}"}
    return {}


def _etag_sha(headers: Any) -> str | None:
    """The hub names an LFS file's sha256 in X-Linked-Etag (on the redirect) or ETag."""
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").strip().removeprefix("W/").strip('"')
        if _SHA256.match(value):
            return value.lower()
    return None


# --- the transfer --------------------------------------------------------------------------------------------

class _Transfer:
    """One download of one URL into one folder, with its retries."""

    def __init__(self, url: str, folder: str, req: DownloadRequest, policy: Policy, expected: str | None,
                 hub: bool, progress: ProgressFn | None, should_stop: Callable[[], bool] | None):
        self.url, self.folder, self.req, self.policy = url, folder, req, policy
        self.expected, self.hub = expected, hub
        self.progress, self.should_stop = progress, should_stop
        self.name = req.name.strip() if req.name and req.name.strip() else None
        self.resumed = False
        self.notes: list[str] = []

    def _final_path(self, name: str) -> str:
        path = download_files.destination(self.folder, name)
        if os.path.exists(path) and not self.req.overwrite:
            raise DownloadRefused(f"{name} already exists in {self.folder}; tick overwrite to replace it")
        return path

    def run(self) -> DownloadResult:
        if self.name is None:
            guess = download_files.name_from_url(self.url)
            with contextlib.suppress(DownloadRefused):
                self.name = download_files.check_name(guess)  # else the server's Content-Disposition names it
        if self.name is not None:
            self._final_path(self.name)  # refused before any byte is fetched
        os.makedirs(self.folder, exist_ok=True)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._attempt()
            except _Cut as e:
                if attempt == ATTEMPTS:
                    raise DownloadRefused(f"{e}; run the download again to resume it") from None
                log.warning("%s; resuming (%d of %d)", e, attempt, ATTEMPTS - 1)
        raise AssertionError("unreachable")

    def _open(self, offset: int) -> tuple[Any, Any, dict[str, str]]:
        """Follow redirects, each hop checked; (connection, final response, hop notes)."""
        url = self.url
        headers = _hub_token_headers(url) if self.hub else {}
        seen: dict[str, str] = {}
        for _hop in range(self.policy.max_redirects + 1):
            target = download_guard.check_url(url, self.policy)
            hop_headers = dict(headers)
            if offset:
                hop_headers["Range"] = f"bytes={offset}-"
            conn, resp = download_guard.request(target, self.policy, hop_headers)
            sha = _etag_sha(resp.headers) if self.hub else None
            if sha and "sha" not in seen:
                seen["sha"] = sha
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                conn.close()
                if not location:
                    raise DownloadRefused(f"{target.host} redirected without a Location")
                new = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(new).hostname != target.host:
                    headers.pop("Authorization", None)  # a token is for the hub, never for where it points
                url = new
                continue
            return conn, resp, seen
        raise DownloadRefused(f"more than {self.policy.max_redirects} redirects")

    def _attempt(self) -> DownloadResult:
        part_name = self.name
        offset = self._part_size(part_name)
        conn, resp, seen = self._open(offset)
        try:
            if self.name is None:
                header_name = download_files.name_from_disposition(resp.headers.get("Content-Disposition"))
                self.name = download_files.check_name(header_name or download_files.name_from_url(self.url))
                self._final_path(self.name)
                if self._part_size(self.name):  # a .part of this name is there: ask again for the rest only
                    conn.close()
                    return self._attempt()
            if self.expected is None and seen.get("sha"):
                self.expected = seen["sha"]
            return self._receive(resp, offset)
        finally:
            conn.close()

    def _part_path(self, name: str | None) -> str | None:
        return download_files.destination(self.folder, name) + download_files.PART_SUFFIX if name else None

    def _part_size(self, name: str | None) -> int:
        part = self._part_path(name)
        return os.path.getsize(part) if part and os.path.isfile(part) else 0

    def _receive(self, resp: Any, offset: int) -> DownloadResult:
        assert self.name is not None
        part = self._part_path(self.name)
        assert part is not None
        total: int | None = None
        if resp.status == 206 and offset:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise DownloadRefused("the server answered the resume with another part of the file")
            total = int(match.group(3)) if match.group(3) != "*" else None
            self.resumed = True
        elif resp.status == 416 and offset:
            os.unlink(part)  # the .part is not a prefix of this file any more: start again
            raise _Cut("the partial file did not match the server's; starting again")
        elif resp.status == 200:
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadRefused(f"the server answered {resp.status} {resp.reason}".strip())
        if total is not None and total > self.policy.max_bytes:
            raise DownloadRefused(f"{self.name} is {format_size(total)}, over the download limit of "
                                  f"{format_size(self.policy.max_bytes)} (--download-max-gb)")
        return self._stream(resp, part, offset, total)

    def _stream(self, resp: Any, part: str, offset: int, total: int | None) -> DownloadResult:
        assert self.name is not None
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:  # the bytes already there count towards the hash
                for block in iter(lambda: f.read(CHUNK), b""):
                    digest.update(block)
        done = offset
        bar = _console_bar(self.name, total, offset)
        try:
            with open(part, "ab" if offset else "wb") as out:
                while True:
                    if self.should_stop is not None and self.should_stop():
                        raise DownloadRefused(f"Download of {self.name} stopped; run it again to resume")
                    try:
                        block = resp.read1(CHUNK)  # what has come: the bar moves on a slow link
                    except TimeoutError:
                        raise _Cut(f"{self.name}: the server stopped sending after {format_size(done)}") from None
                    except OSError as e:
                        raise _Cut(f"{self.name}: the connection broke after {format_size(done)} ({e})") from None
                    if not block:
                        break
                    done += len(block)
                    if done > self.policy.max_bytes:
                        out.close()
                        os.unlink(part)
                        raise DownloadRefused(f"{self.name} is larger than the download limit of "
                                              f"{format_size(self.policy.max_bytes)} (--download-max-gb); "
                                              "nothing was kept")
                    out.write(block)
                    digest.update(block)
                    if bar is not None:
                        bar.update(len(block))
                    if self.progress is not None:
                        self.progress(self.name, done, total)
                out.flush()
                os.fsync(out.fileno())
        except _IncompleteRead as e:
            raise _Cut(f"{self.name}: the connection was cut after {format_size(done)} of "
                       f"{format_size(total)}") from e
        finally:
            if bar is not None:
                bar.close()
        if total is not None and done < total:
            raise _Cut(f"{self.name}: the connection was cut after {format_size(done)} of {format_size(total)}")
        return self._finish(part, done, digest.hexdigest())

    def _finish(self, part: str, size: int, sha: str) -> DownloadResult:
        assert self.name is not None
        if self.expected is not None and sha != self.expected:
            os.unlink(part)
            raise DownloadRefused(f"{self.name}: sha256 mismatch (expected {self.expected}, got {sha}); "
                                  "the file was not kept")
        final = download_files.destination(self.folder, self.name)
        _move_into_place(part, final, self.req.overwrite)
        return DownloadResult(final, self.req.kind, size, sha, self.resumed, self.notes)


def _move_into_place(part: str, final: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(part, final)
        return
    try:  # a hard link fails when the name exists: nothing that appeared meanwhile is overwritten
        os.link(part, final)
    except FileExistsError:
        raise DownloadRefused(f"{os.path.basename(final)} appeared while it downloaded; kept as "
                              f"{os.path.basename(part)}") from None
    except OSError:  # file systems without hard links (some network and cloud drives)
        if os.path.exists(final):
            raise DownloadRefused(f"{os.path.basename(final)} already exists") from None
        os.replace(part, final)
        return
    os.unlink(part)


def _console_bar(name: str, total: int | None, initial: int) -> Any:
    from modules import console_progress

    if not console_progress.enabled():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"Downloading {name}", leave=True, file=None)


# --- entry points --------------------------------------------------------------------------------------------

def download(req: DownloadRequest, policy: Policy | None = None, progress: ProgressFn | None = None,
             should_stop: Callable[[], bool] | None = None) -> DownloadResult:
    """Fetch one model into the folder of its type and rescan that folder. Raises DownloadRefused."""
    policy = policy or policy_from_cmd_opts()
    folder = download_files.folder_for(req.kind, req.upscaler)
    if req.name and req.name.strip():
        download_files.check_name(req.name.strip())
    hub = bool(req.repo_id.strip())
    if hub and req.url.strip():
        raise DownloadRefused("give either a URL or a hub repo id + file, not both")
    if hub:
        url, expected = _expected_sha(req, hub_url(req.repo_id, req.filename, req.revision))
        if not (req.name and req.name.strip()):
            req.name = download_files.check_name(req.filename.strip().rsplit("/", 1)[-1])
    elif req.url.strip():
        url, expected = _expected_sha(req, req.url.strip())
    else:
        raise DownloadRefused("give a URL, or a hub repo id and a file name")
    result = _Transfer(url, folder, req, policy, expected, hub, progress, should_stop).run()
    download_files.rescan(req.kind)
    log.info("Downloaded %s (%s) to %s", result.name, format_size(result.size), folder)
    return result


_CLI_KINDS = {**{k: (k, None) for k in download_files.KINDS if k != "upscaler"},
              **{u.lower(): ("upscaler", u) for u in download_files.UPSCALERS}}


def parse_spec(spec: str) -> DownloadRequest:
    """One `--download` value: `[TYPE=]URL` or `[TYPE=]hf:OWNER/REPO/PATH/FILE[@REVISION]`.

    TYPE is checkpoint (the default), lora, vae, controlnet, embedding, or an upscaler folder (esrgan,
    realesrgan, swinir, dat, hat, scunet); a URL may end in `#sha256=HEX`."""
    spec = spec.strip()
    kind, upscaler = "checkpoint", None
    prefix, sep, rest = spec.partition("=")
    if sep and prefix.lower() in _CLI_KINDS:
        kind, upscaler = _CLI_KINDS[prefix.lower()]
        spec = rest.strip()
    elif sep and "://" not in prefix and not prefix.startswith("hf:"):
        raise DownloadRefused(f"unknown model type {prefix!r} in --download; one of {', '.join(_CLI_KINDS)}")
    if spec.startswith("hf:"):
        body, _, revision = spec[3:].partition("@")
        pieces = body.strip("/").split("/")
        if len(pieces) < 3:
            raise DownloadRefused(f"{spec!r}: write a hub file as hf:OWNER/REPO/FILE")
        return DownloadRequest(kind=kind, upscaler=upscaler, repo_id="/".join(pieces[:2]),
                               filename="/".join(pieces[2:]), revision=revision or None)
    return DownloadRequest(kind=kind, upscaler=upscaler, url=spec)


def startup_downloads(specs: list[str] | None) -> list[str]:
    """Run each `--download` before the model folders are scanned; a failure is printed, never fatal (the
    server still starts with what it has). Returns the error lines."""
    errors: list[str] = []
    for spec in specs or []:
        shown = spec.split("?", 1)[0]  # a query string may hold a token
        try:
            result = download(parse_spec(spec))
        except DownloadRefused as e:
            errors.append(f"--download {shown}: {e}")
            print(f"Download refused or failed: {errors[-1]}")
            continue
        print(f"Downloaded {result.name} ({format_size(result.size)}, sha256 {result.sha256[:10]}) "
              f"to {os.path.dirname(result.path)}")
    return errors
