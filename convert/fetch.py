"""Download ONNX model zoo ResNets, and the ImageNet class names they were trained on, through the one
downloader (edge_resnet.download: HTTP Range resume, retries). A finished download is only moved into
place after it parses as an ONNX image classifier (or as the zoo's 1000-line synset list), so a Git
LFS pointer or an HTML error page never poses as a model or as labels.

Files land in the folder the user names (default: the current one), so the README's next command,
`edge-resnet convert resnet50-v1-7.onnx ... --labels imagenet_labels.txt`, finds them as pasted.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from edge_resnet.download import download
from edge_resnet.errors import InputError, ModelError

from . import onnx_model

ZOO_URL = "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model"
MODELS = tuple(f"resnet{d}-v{v}-7" for v in (1, 2) for d in (18, 34, 50, 101, 152))
LABELS_FILE = "imagenet_labels.txt"
IMAGENET_CLASSES = 1000
OFFLINE = (
    "copy the .onnx file here from a machine that has a network, or point --base-url (or EDGE_RESNET_ZOO_URL) "
    "at a mirror of the model zoo's resnet/model folder"
)


def canonical(name: str) -> str:
    """'resnet50', 'ResNet50-v2', 'resnet50-v2-7.onnx' -> the zoo file stem."""
    m = re.fullmatch(r"resnet(\d+)(?:[-_]?v([12]))?(?:-7)?(?:\.onnx)?", name.strip().lower())
    stem = f"resnet{m.group(1)}-v{m.group(2) or '1'}-7" if m else ""
    if stem not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return stem


def zoo_url(base_url: str | None = None) -> str:
    """The model folder: --base-url, else $EDGE_RESNET_ZOO_URL (a mirror), else the ONNX model zoo."""
    return (base_url or os.environ.get("EDGE_RESNET_ZOO_URL") or ZOO_URL).rstrip("/")


def fetch(
    name: str,
    out: Path | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Path of the validated model in `out` (default: the current folder), downloading it (or finishing
    a download) when it is not there yet."""
    stem = canonical(name)
    folder = out or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{stem}.onnx"
    url = f"{zoo_url(base_url)}/{stem}.onnx"

    def classifier(part: Path) -> None:  # a Git LFS pointer or an HTML page never poses as a model
        try:
            onnx_model.load_classifier(part)
        except ModelError as e:
            raise ModelError(f"downloaded {stem} is not a usable ONNX classifier ({e}); fetch it again") from None

    return download(
        url,
        dest,
        timeout=timeout,
        progress=progress,
        verify=classifier,
        http_hint="check the name or --base-url",
        offline_hint=OFFLINE,
    )


def synset_names(text: str) -> list[str]:
    """The zoo's synset.txt ("n01440764 tench, Tinca tinca", one a line, in output order) -> class names."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [ln.split(" ", 1)[1] if re.match(r"^n\d{8} ", ln) else ln for ln in lines]


def fetch_labels(out: Path | None = None, base_url: str | None = None, timeout: float = 30.0) -> Path:
    """`imagenet_labels.txt` in `out`: the 1000 ImageNet class names in the zoo ResNets' output order,
    from the zoo's synset.txt (beside its classification models: two folders above resnet/model)."""
    folder = out or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / LABELS_FILE
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    url = urllib.parse.urljoin(zoo_url(base_url) + "/", "../../synset.txt")

    def synset_list(part: Path) -> None:
        try:
            n = len(synset_names(part.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            n = 0
        if n != IMAGENET_CLASSES:
            raise InputError(f"{url} is not the ImageNet synset list ({n} lines, not 1000); fetch again")

    synset = download(
        url,
        folder / ".synset.txt",
        timeout=timeout,
        verify=synset_list,
        http_hint="check --base-url",
        offline_hint="give convert any labels file, one class name a line in the model's output order",
    )
    tmp = dest.with_name(f".{LABELS_FILE}.tmp")
    tmp.write_text("\n".join(synset_names(synset.read_text(encoding="utf-8"))) + "\n", encoding="utf-8")
    os.replace(tmp, dest)
    synset.unlink()
    return dest
