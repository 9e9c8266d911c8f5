"""Download ONNX model zoo ResNets into a cache through the one downloader (edge_resnet.download:
HTTP Range resume, retries). A finished download is only moved into place after it parses as an
ONNX image classifier, so a Git LFS pointer or an HTML error page never poses as a model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from edge_resnet.download import download
from edge_resnet.errors import InputError, ModelError

from . import onnx_model

log = logging.getLogger(__name__)

ZOO_URL = "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model"
MODELS = tuple(f"resnet{d}-v{v}-7" for v in (1, 2) for d in (18, 34, 50, 101, 152))


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
    url = f"{(base_url or os.environ.get('EDGE_RESNET_ZOO_URL') or ZOO_URL).rstrip('/')}/{stem}.onnx"

    def classifier(part: Path) -> None:  # a Git LFS pointer or an HTML page never poses as a model
        try:
            onnx_model.load_classifier(part)
        except ModelError as e:
            raise ModelError(f"downloaded {stem} is not a usable ONNX classifier ({e}); fetch it again") from None

    return download(
        url, dest, timeout=timeout, progress=progress, verify=classifier, http_hint="check the name or --base-url"
    )
