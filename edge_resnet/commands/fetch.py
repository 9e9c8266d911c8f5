"""`edge-resnet fetch`: download an ONNX model zoo ResNet into the cache (resumable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import DependencyError, ExitCode

ZOO_NAMES = "resnet18|34|50|101|152 with -v1 or -v2, e.g. resnet50-v1"


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=helptext, description=f"{helptext}. Names: {ZOO_NAMES}. Prints the cached path."
    )
    p.add_argument("name", metavar="MODEL_NAME", help=ZOO_NAMES)
    p.add_argument("--cache", type=Path, metavar="DIR", help="cache folder (default ~/.cache/edge-resnet/models)")
    p.add_argument("--base-url", metavar="URL", help="mirror of the ONNX model zoo ResNet folder")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="network timeout in seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from edge_resnet.convert.fetch import fetch
    except ImportError:
        raise DependencyError('fetching models needs the convert extra: pip install "edge-resnet[convert]"') from None

    def progress(have: int, total: int) -> None:
        if sys.stderr.isatty() and total:
            print(f"\r{have / 2**20:7.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr, flush=True)

    path = fetch(args.name, args.cache, args.base_url, args.timeout, progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(path)
    return int(ExitCode.OK)
