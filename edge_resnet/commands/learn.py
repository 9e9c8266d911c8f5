"""`edge-resnet learn`: a folder of your own labelled images -> a model that names your classes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..devices import DEVICES
from ..errors import ExitCode


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=helptext, description=helptext + ". EXAMPLES_DIR holds one sub-folder of images per class; "
        "the folder name is the label. Accuracy is always measured on examples the head did not train on."
    )
    p.add_argument("examples", metavar="EXAMPLES_DIR", type=Path, help="one sub-folder of images per class")
    p.add_argument("--model", "-m", required=True, type=Path,
                   help="the backbone: a bundle from `edge-resnet convert` (it carries the embedding output)")
    p.add_argument("--out", "-o", required=True, type=Path, help="the new model file (.tflite)")
    p.add_argument("--unknown-below", type=float, default=None,
                   help="publish `unknown` when no class reaches this probability (default: from cross-validation; "
                   "0 turns it off)")
    p.add_argument("--seed", type=int, default=0, help="cross-validation folds' seed")
    p.add_argument("--no-night", action="store_true",
                   help="train on the examples alone, without a grey low-light copy of each (a camera's night look)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where the backbone runs (cpu, edgetpu, auto)")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all usable cores)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON on stdout")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="the daemon's state_dir: where the record goes that lets this model run under [trust] "
                        "require_signature (default: $STATE_DIRECTORY, else /var/lib/edge-resnet if writable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..learn.report import summary_lines
    from ..learner import learn

    res = learn(args.examples, args.model, args.out, device=args.device, threads=args.threads, seed=args.seed,
                unknown_below=args.unknown_below, variants=not args.no_night, state_dir=args.state_dir)
    for line in summary_lines(res.report):
        print(line, file=sys.stderr)
    print(f"wrote {res.out}", file=sys.stderr)
    if args.json:
        print(json.dumps(res.report, indent=1))
    return int(ExitCode.OK)
