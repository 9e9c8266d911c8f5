"""`edge-resnet verify`: is this model signed by a key the device trusts? Exit 0 and one line, or
exit 4 and the reason in one line. Unlike a device with `require_signature = false`, verify always
asks for a trusted signature: an unsigned model fails it."""

from __future__ import annotations

import argparse
from typing import Any

from ..fleet.manifest import TARGETS


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("model", help="a signed edge-resnet bundle")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="the device's config file: its [trust] keys and retired ids")
    g.add_argument("--trust", nargs="+", metavar="ID.pub", help="trusted public keys")
    p.add_argument("--target", choices=TARGETS, help="refuse a model signed for another target")
    p.add_argument("--min-version", type=int, metavar="N", help="refuse a version below N (the one installed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..fleet.trust import TrustPolicy, check_model, describe, load_policy
    from ..trustconfig import TrustConfig, trust_from_file

    cfg = trust_from_file(args.config) if args.config else TrustConfig(keys=list(args.trust))
    if not cfg.keys:
        raise ConfigError(f"{args.config} has no [trust] keys; add keys = [\"/etc/edge-resnet/keys/ID.pub\"]")
    policy = load_policy(cfg)
    policy = TrustPolicy(policy.keys, policy.retired, require_signature=True)
    m = check_model(args.model, policy, min_version=args.min_version, target=args.target)
    assert m is not None  # require_signature: an unsigned model raised
    print(f"{args.model}: {describe(m)}")
    return 0
