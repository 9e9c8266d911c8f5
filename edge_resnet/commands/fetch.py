"""`edge-resnet fetch`: download an ONNX model zoo ResNet and the ImageNet class names into a folder
(default: the current one, so the README's next line, `convert resnet50-v1-7.onnx ...`, finds it)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import DependencyError, ExitCode

log = logging.getLogger(__name__)

ZOO_NAMES = "resnet18|34|50|101|152 with -v1 or -v2, e.g. resnet50-v1"


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=helptext,
        description=f"Download an ONNX model zoo ResNet ({ZOO_NAMES}) into --out (default: the current "
        "folder), with imagenet_labels.txt (the 1000 ImageNet class names, in the model's output order) "
        "beside it. Prints the model's path; an interrupted download resumes when run again.",
    )
    p.add_argument("name", metavar="MODEL_NAME", help=ZOO_NAMES)
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="where to save (default: here)")
    p.add_argument("--cache", type=Path, dest="out", help=argparse.SUPPRESS)  # its name before --out
    p.add_argument("--base-url", metavar="URL", help="mirror of the ONNX model zoo ResNet folder")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="network timeout in seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from edge_resnet.convert.fetch import fetch, fetch_labels
    except ImportError:
        raise DependencyError('fetching models needs the convert extra: pip install "edge-resnet[convert]"') from None

    def progress(have: int, total: int) -> None:
        if sys.stderr.isatty() and total:
            print(f"\r{have / 2**20:7.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr, flush=True)

    path = fetch(args.name, args.out, args.base_url, args.timeout, progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    labels = fetch_labels(args.out, args.base_url, args.timeout)
    size_mb = path.stat().st_size / 1e6
    log.info("saved %s (%.1f MB) and %s in %s", path.name, size_mb, labels.name, path.parent.resolve())
    print(path)
    return int(ExitCode.OK)
