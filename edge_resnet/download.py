"""The one downloader: resumes an interrupted transfer with HTTP Range, retries, and moves the file
into place only after it verifies, so a truncated file or an HTML error page never poses as the
real thing. Device-side (standard library only): `demo` uses it without the convert extra, and the
converter's model zoo fetch (convert/fetch.py) builds on it."""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import EdgeResnetError, InputError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRIES = 3

Progress = Callable[[int, int], None]  # (bytes so far, total or 0)


def resume_into(url: str, part: Path, timeout: float, progress: Progress | None = None) -> None:
    """Fetch `url` into `part`, continuing from its current size when the server honours Range."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "edge-resnet"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # already complete
            return
        raise
    with resp:
        resumed = resp.status == 206
        if have and not resumed:
            log.info("server ignored the Range request; downloading %s from the start", url)
            have = 0
        total = have + int(resp.headers.get("Content-Length") or 0)
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                have += len(chunk)
                if progress:
                    progress(have, total)
        if total and have < total:
            raise ConnectionError(f"connection closed at {have} of {total} bytes")


def download(
    url: str,
    dest: Path,
    *,
    timeout: float = 30.0,
    progress: Progress | None = None,
    verify: Callable[[Path], None] | None = None,
    http_hint: str = "check the URL",
    retry_hint: str = "run the same command again to resume",
    offline_hint: str = "check the network connection",
) -> Path:
    """`dest`, downloading it (or finishing an earlier partial download) when it is not there yet.
    `verify(part)` raises an EdgeResnetError for a file that is not what was asked for; the partial
    file is then removed. Failures are one-line InputErrors ending in the caller's hint. A host name
    that does not resolve fails at once: retrying cannot help a machine without DNS (offline), and
    "interrupted, resuming" would send its user looking at the wrong thing."""
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, RETRIES + 1):
        try:
            resume_into(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            raise InputError(f"download of {url} failed: HTTP {e.code}; {http_hint}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, socket.gaierror):
                host = urllib.parse.urlsplit(url).hostname or url
                raise InputError(
                    f"download of {url} failed: host name {host} not resolved ({reason.strerror}); "
                    f"offline? {offline_hint}"
                ) from None
            if attempt == RETRIES:
                raise InputError(f"download of {url} failed after {RETRIES} tries ({e}); {retry_hint}") from None
            log.warning("download interrupted (%s); resuming (%d/%d)", e, attempt, RETRIES)
            time.sleep(0.5 * attempt)
    if verify is not None:
        try:
            verify(part)
        except EdgeResnetError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    return dest
