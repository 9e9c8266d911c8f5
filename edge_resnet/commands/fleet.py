"""`edge-resnet fleet rollout|status`: roll a model out to a group of devices in waves through the MQTT
broker, and read the fleet's retained statuses into a table (issue 23; library: edge_resnet.fleet)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from typing import Any

from ..errors import ConfigError, ExitCode
from ..sinkconfig import MqttConfig

ROLLOUT_EXIT = """exit codes:
  0  every device of the group applied the version (or already ran it)
  2  bad arguments
  3  bad --config, or the broker cannot be reached
  4  MODEL_URL unreadable, or its digest, size or version not what was given
  5  no device in the group
  8  stopped by the failure gate: more than --max-failed-percent of the devices sent the job
     failed; the devices after them were not sent it
  9  every wave was sent, but some devices failed (within the gate) or were offline and skipped
     (listed); run the same command again later: it reaches those, the others answer from
     their status"""

STATUS_EXIT = """exit codes:
  0  the table was printed (possibly empty)
  2  bad arguments
  3  bad --config, or the broker cannot be reached"""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"{v:g} is not a percentage in 0..100")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v:g} must be more than 0 seconds")
    return v


def _broker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker (default mqtt://127.0.0.1:1883, prefix edge-resnet)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--broker", metavar="URL", help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    where.add_argument("--config", metavar="FILE.toml", help="take the broker from a daemon config's [mqtt] table "
                       "(url, username, ca_file, topic_prefix)")
    g.add_argument("--username", help="broker user (password from $EDGE_RESNET_MQTT_PASSWORD, or the config's "
                   "password_env)")
    g.add_argument("--ca-file", metavar="PEM", help="CA certificate of an mqtts:// broker")
    g.add_argument("--topic-prefix", metavar="PREFIX", help="the devices' [mqtt] topic_prefix")


def register(sub: Any, name: str, helptext: str) -> None:
    p = sub.add_parser(name, help=helptext, description="Roll a model out to devices in waves through the MQTT "
                       "broker, and read the fleet's status. The broker holds everything (no server of our own).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    r = actions.add_parser(
        "rollout",
        help="send a model to a group in waves, stopping at a failure gate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Send the install job to the group's devices in waves: the canary wave (--canary devices) first, "
            "then waves of --step-percent of the group. Each wave waits for every device's terminal state "
            "(applied, rolled_back, rejected); a device that says nothing within --wave-timeout counts as "
            "failed. When the failures so far are more than --max-failed-percent of the devices sent the job, "
            "the rollout stops. Devices already running the version (or newer) and offline devices are "
            "skipped. Prints one line per wave.", 100),
        epilog=ROLLOUT_EXIT,
    )
    r.add_argument("model_url", metavar="MODEL_URL", help="http(s):// URL, file:// URL or path of the bundle, as "
                   "the devices will fetch it (a path must exist on the devices)")
    r.add_argument("--group", required=True, help="the devices whose [fleet] groups contain this name")
    r.add_argument("--canary", type=_positive_int, default=1, metavar="N", help="devices in the first wave "
                   "(default 1)")
    r.add_argument("--step-percent", type=_percent, default=10.0, metavar="P", help="each later wave is P%% of "
                   "the group (default 10)")
    r.add_argument("--max-failed-percent", type=_percent, default=10.0, metavar="F", help="stop when more than "
                   "F%% of the devices sent the job so far failed (default 10)")
    r.add_argument("--wave-timeout", type=_seconds, default=600.0, metavar="S", help="seconds a wave may take, "
                   "download and health window included (default 600)")
    m = r.add_argument_group("the model (read from MODEL_URL when not all given)")
    m.add_argument("--version", type=_positive_int, metavar="N", help="the bundle's version (default: from its "
                   "signature)")
    m.add_argument("--sha256", metavar="HEX", help="the bundle's SHA-256")
    m.add_argument("--size", type=_positive_int, metavar="BYTES", help="the bundle's size")
    r.add_argument("--job-id", help="the job's id (default v<version>-<sha256 prefix>: the same model is the "
                   "same job, so running the rollout again installs nothing twice)")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress on stderr)")
    _broker_args(r)
    r.set_defaults(func=rollout)

    s = actions.add_parser(
        "status",
        help="the fleet's retained statuses as one table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "One row per device from the broker's retained documents: device, running model and version, "
            "last job and its state, health (offline when the device's availability says so) and when it "
            "was last seen.", 100),
        epilog=STATUS_EXIT,
    )
    s.add_argument("--group", help="only the devices of this group")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    _broker_args(s)
    s.set_defaults(func=status)


def mqtt_config(args: argparse.Namespace) -> MqttConfig:
    """The broker from --config's [mqtt] table or --broker, with the other flags on top."""
    if args.config:
        from .. import config as configmod

        cfg = configmod.load(args.config).mqtt
        if cfg is None:
            raise ConfigError(f"{args.config} has no [mqtt] table; add one, or give --broker URL")
    else:
        cfg = MqttConfig(**({"url": args.broker} if args.broker else {}))
    changes = {k: v for k, v in (("username", args.username), ("ca_file", args.ca_file),
                                 ("topic_prefix", args.topic_prefix)) if v is not None}  # fmt: skip
    return MqttConfig(**{**vars(cfg), **changes}) if changes else cfg


def rollout(args: argparse.Namespace) -> int:
    from ..fleet.artifact import describe
    from ..fleet.controller import Plan, rollout, summary
    from ..fleet.view import FleetView

    cfg = mqtt_config(args)
    plan = Plan(args.group, args.canary, args.step_percent, args.max_failed_percent, args.wave_timeout, args.job_id)
    model = describe(args.model_url, args.sha256, args.size, args.version)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    with FleetView(cfg) as view:
        result = rollout(view, model, plan, say)
    for line in summary(result):
        say(line)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    if result.stopped:
        return int(ExitCode.VERIFY)
    return int(ExitCode.OK if result.all_applied else ExitCode.PROBLEMS)


def status(args: argparse.Namespace) -> int:
    from ..fleet.status import counts, rows, table
    from ..fleet.view import FleetView

    cfg = mqtt_config(args)
    with FleetView(cfg) as view:
        rs = rows(view.devices(), args.group)
    if args.json:
        print(json.dumps({"at": round(time.time(), 3), "devices": [r.to_json() for r in rs]}))  # one line: C speed
        return 0
    print(table(rs))
    print(counts(rs))
    if not rs:
        where = f"group {args.group!r}" if args.group else "any group"
        print(f"no device of {where} under {cfg.topic_prefix!r} on {cfg.url}; devices publish "
              f"{cfg.topic_prefix}/<device>/fleet when their fleet agent runs", file=sys.stderr)
    return 0
