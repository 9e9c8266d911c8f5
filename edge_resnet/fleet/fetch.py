"""Fetching an announced model: into `<fleet>/downloads/<job>.part`, never more than the announced
size, resumable with HTTP Range after a restart (even `kill -9`), checked for size and SHA-256,
then renamed into place, so no half model ever sits under a name that could be run.

A file that is not what the command announced (shorter, longer, another digest, HTTP 404) is a
refusal (FetchRefused, final); a network that fails is retried, resuming, and after a few tries is
FetchFailed. http://, https://, file:///abs and /abs are accepted. `edge_resnet/download.py`
resumes too, but trusts the server about the length; here the announced size is the cap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from ..atomicwrite import DiskProblem, disk_problem, fsync_dir
from ..errors import EdgeResnetError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
RETRIES = 4
TIMEOUT_S = 15.0

Progress = Callable[[int, int], None]  # (bytes so far, announced size)


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class FetchRefused(EdgeResnetError):
    """The file is not what the command announced; final (the job is rejected)."""


class FetchFailed(EdgeResnetError):
    """The network kept failing; the partial file stays for a later resume."""


class FetchStopped(EdgeResnetError):
    """Asked to stop (the daemon is stopping); the partial file stays and the job resumes at the next start."""


def start_delay(max_s: float, stop: threading.Event, rng: random.Random | None = None) -> bool:
    """Wait a random time in [0, max_s] so a thousand devices do not fetch at once; False if asked to
    stop meanwhile."""
    if max_s <= 0:
        return not stop.is_set()
    return not stop.wait((rng or random).uniform(0.0, max_s))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    url: str,
    size: int,
    sha256: str,
    part: Path,
    dest: Path,
    *,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    timeout: float = TIMEOUT_S,
    retries: int = RETRIES,
) -> Path:
    """`dest`, holding exactly `size` bytes with digest `sha256`, fetched from `url` through `part`."""
    stop = stop or threading.Event()
    if dest.is_file() and dest.stat().st_size == size and sha256_of(dest) == sha256:
        return dest  # done before a restart
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 1):
        try:
            _transfer(url, size, part, stop, progress, timeout)
            break
        except (FetchRefused, FetchStopped):
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            if isinstance(e, OSError) and disk_problem(e) in (DiskProblem.FULL, DiskProblem.READ_ONLY):
                part.unlink(missing_ok=True)
                raise FetchRefused(
                    f"no room for the download in {part.parent} ({e.strerror}); free space on the state "
                    "directory's disk"
                ) from None
            if attempt == retries:
                raise FetchFailed(
                    f"download of {url} failed after {retries} tries ({_why(e)}); the partial file is kept for "
                    "a resume: send the command again"
                ) from None
            log.warning("fleet: download interrupted (%s); resuming (%d/%d)", _why(e), attempt, retries - 1)
            if stop.wait(min(8.0, 0.5 * 2**attempt)):
                raise FetchStopped("stopped while waiting to resume the download") from None
    got = sha256_of(part)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise FetchRefused(
            f"the download's SHA-256 {got[:12]}... does not match the announced {sha256[:12]}...; "
            "check the command's sha256 and the file at the URL"
        )
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return str(e) or type(e).__name__


def _local_path(url: str) -> Path | None:
    if url.startswith("/"):
        return Path(url)
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def _transfer(url: str, size: int, part: Path, stop: threading.Event, progress: Progress | None,
              timeout: float) -> None:  # fmt: skip
    """One attempt: continue `part` from its current length up to exactly `size` bytes."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    local = _local_path(url)
    if local is not None:
        try:
            src: BinaryIO = open(local, "rb")  # noqa: SIM115 (closed below, in both branches)
        except OSError as e:
            raise FetchRefused(f"cannot read {local} ({e.strerror}); check the command's path") from None
        with src:
            total = os.fstat(src.fileno()).st_size
            if total > size:
                part.unlink(missing_ok=True)
                raise FetchRefused(f"{local} is longer than announced ({total} bytes, {size} announced); not copied")
            src.seek(have)
            _copy(src, part, have, size, None, stop, progress, append=have > 0)
        return
    req = urllib.request.Request(url, headers={"User-Agent": "edge-resnet-fleet"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the server has nothing after `have`: the file is that long
            part.unlink(missing_ok=True)
            raise FetchRefused(f"download shorter than announced ({have} of {size} bytes)") from None
        if 400 <= e.code < 500:
            part.unlink(missing_ok=True)
            raise FetchRefused(
                f"download of {url} refused: HTTP {e.code} {e.reason}; check the command's url"
            ) from None
        raise
    with resp:
        resumed = resp.status == 206
        if resumed:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                resumed = False  # not the range we asked for: start over
        if have and not resumed:
            log.info("fleet: %s ignored the Range request; downloading from the start", url)
            have = 0
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else None
        if expected is not None and expected > size:
            part.unlink(missing_ok=True)
            raise FetchRefused(
                f"download longer than announced (the server sends {expected} bytes, {size} announced); "
                f"stopped at {have} bytes"
            )
        _copy(resp, part, have, size, expected, stop, progress, append=resumed)


def _copy(src: _Readable, part: Path, have: int, size: int,
          expected: int | None, stop: threading.Event, progress: Progress | None, append: bool) -> None:  # fmt: skip
    """Copy `src` into `part` up to `size` bytes: a byte more is "longer than announced" (stopped at the
    cap); an end before `size` is "shorter" when the source said it was complete, else a broken
    connection (raised as ConnectionError, so the caller resumes)."""
    with open(part, "ab" if append else "wb") as f:
        while True:
            if stop.is_set():
                f.flush()
                os.fsync(f.fileno())
                raise FetchStopped("stopped during the download; it resumes at the next start")
            chunk = src.read(min(CHUNK, size - have + 1))
            if not chunk:
                break
            if have + len(chunk) > size:
                f.close()
                part.unlink(missing_ok=True)
                raise FetchRefused(f"download longer than announced (more than {size} bytes); stopped at the cap")
            f.write(chunk)
            have += len(chunk)
            if progress is not None:
                progress(have, size)
        f.flush()
        os.fsync(f.fileno())
    if have < size:
        if expected is not None and have < expected:
            raise ConnectionError(f"connection closed at {have} of {expected} bytes")
        part.unlink(missing_ok=True)
        raise FetchRefused(f"download shorter than announced ({have} of {size} bytes)")
