"""`edge-resnet keygen`: a signing key pair for `sign`, made on the workstation."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("--out", required=True, help="folder for ID.key (private, mode 0600) and ID.pub")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..fleet.keys import generate

    kid, key, pub = generate(args.out)
    print(f"key {kid}: {key} (private: keep it off the devices) and {pub} (copy to each device's [trust] keys)")
    return 0
