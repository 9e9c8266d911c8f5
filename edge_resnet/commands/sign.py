"""`edge-resnet sign`: put a signature into a bundle, on the workstation (in place, atomically)."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

from ..fleet.manifest import SIGNATURES_SINCE, TARGETS


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("model", help="an edge-resnet bundle (.tflite from `edge-resnet convert` or `learn`)")
    p.add_argument("--key", required=True, help="the private ID.key from `edge-resnet keygen`")
    p.add_argument("--version", required=True, type=int,
                   help="the model's version, an integer that only goes up (devices refuse an older one)")
    p.add_argument("--expires", type=_date, help="last day (UTC) the model may run, YYYY-MM-DD (default: never)")
    p.add_argument("--target", choices=TARGETS, help="cpu or edgetpu (default: what the model is compiled for)")
    p.add_argument("--min-edge-resnet", default=SIGNATURES_SINCE, metavar="VERSION",
                   help=f"the oldest edge-resnet that may run it (default {SIGNATURES_SINCE})")
    p.set_defaults(func=run)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-12-31, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..fleet.keys import load_private
    from ..fleet.manifest import sign_model
    from ..fleet.trust import describe

    key = load_private(args.key)
    m = sign_model(args.model, key, args.version, expires=args.expires, target=args.target,
                   min_edge_resnet=args.min_edge_resnet)
    print(f"{args.model}: {describe(m)}")
    return 0
