"""`edge-resnet classify`: images or folders -> top-k labels (text or JSON lines)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..errors import ExitCode, InputError
from ..images import list_images, load_image
from ..model import load_classifier_from_args
from .modelargs import add_model_args

log = logging.getLogger(__name__)


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    add_model_args(p)
    p.add_argument("--top-k", "-k", type=int, default=3, help="how many classes to show (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = list_images(args.images)
    if not paths:
        raise InputError(f"no images found in {' '.join(args.images)}; pass JPEG/PNG/BMP files or folders")
    clf = load_classifier_from_args(args)
    log.debug("model: %s", clf.engine.describe())
    failed = 0
    for path in paths:
        try:
            image = load_image(path)
        except InputError as e:
            print(f"edge-resnet: error: {e}", file=sys.stderr)
            failed += 1
            continue
        res = clf.classify(image, k=args.top_k)
        if args.json:
            rec = {
                "path": str(path),
                "top_k": [
                    {"label": p.label, "class_index": p.class_index, "score": round(p.score, 6)}
                    for p in res.predictions
                ],
                "latency_ms": round(res.latency_ms, 3),
            }
            print(json.dumps(rec), flush=False)
        else:
            tops = "  ".join(f"{p.label} ({p.score:.3f})" for p in res.predictions)
            print(f"{path}: {tops}  [{res.latency_ms:.1f} ms]")
    sys.stdout.flush()
    return int(ExitCode.INPUT) if failed else int(ExitCode.OK)
