"""Download ONNX model zoo ResNets into a cache, resuming interrupted transfers with HTTP Range.

A finished download is only moved into place after it parses as an ONNX image classifier, so a
Git LFS pointer or an HTML error page never poses as a model.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge_resnet.errors import InputError, ModelError

from . import onnx_model

log = logging.getLogger(__name__)

ZOO_URL = "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model"
MODELS = tuple(f"resnet{d}-v{v}-7" for v in (1, 2) for d in (18, 34, 50, 101, 152))
CHUNK = 1 << 20
RETRIES = 3


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("EDGE_RESNET_CACHE", Path(base) / "edge-resnet")) / "models"


def canonical(name: str) -> str:
    """'resnet50', 'ResNet50-v2', 'resnet50-v2-7.onnx' -> the zoo file stem."""
    m = re.fullmatch(r"resnet(\d+)(?:[-_]?v([12]))?(?:-7)?(?:\.onnx)?", name.strip().lower())
    stem = f"resnet{m.group(1)}-v{m.group(2) or '1'}-7" if m else ""
    if stem not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return stem


def _download(url: str, part: Path, timeout: float, progress: Callable[[int, int], None] | None) -> None:
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


def fetch(
    name: str,
    cache: Path | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Path of the cached, validated model, downloading (or finishing a download) when needed."""
    stem = canonical(name)
    folder = cache or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{stem}.onnx"
    if dest.is_file():
        return dest
    url = f"{(base_url or os.environ.get('EDGE_RESNET_ZOO_URL') or ZOO_URL).rstrip('/')}/{stem}.onnx"
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, RETRIES + 1):
        try:
            _download(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            raise InputError(f"download of {url} failed: HTTP {e.code}; check the name or --base-url") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            if attempt == RETRIES:
                raise InputError(
                    f"download of {url} failed after {RETRIES} tries ({e}); run the same command again "
                    "to resume"
                ) from None
            log.warning("download interrupted (%s); resuming (%d/%d)", e, attempt, RETRIES)
            time.sleep(0.5 * attempt)
    try:
        onnx_model.load_classifier(part)
    except ModelError as e:
        part.unlink(missing_ok=True)
        raise ModelError(f"downloaded {stem} is not a usable ONNX classifier ({e}); fetch it again") from None
    os.replace(part, dest)
    return dest
