"""`edge-resnet` command line: a thin layer that parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import ClassVar

from . import __version__
from .errors import EdgeResnetError, ExitCode

# name -> module under edge_resnet.commands; each module has register(subparsers, name).
# Explicit, so a reader sees every command here; modules load lazily to keep start-up fast and
# optional dependencies (the convert extra) optional.
COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("classify", "classify images or folders of images"),
    "info": ("info", "describe a .tflite model: tensors, quantization, ops, metadata"),
    "convert": ("convert", "convert an ONNX classifier to a verified INT8 TFLite bundle"),
    "learn": ("learn", "learn your own classes from a few labelled images of yours, on the device"),
    "fetch": ("fetch", "download an ONNX model zoo ResNet into the cache"),
    "run": ("run", "run the camera daemon: frames to labels on MQTT and a live overlay"),
    "config": ("config", "check a daemon configuration file"),
    "demo": ("demo", "convert a ResNet and run the daemon on a test video with the overlay"),
    "bench": ("bench", "benchmark a model: latency, throughput, memory, preprocessing"),
    "doctor": ("doctor", "check cameras, model, Edge TPU, broker, temperature and disk"),
    "fleet": ("fleet", "roll a model out to a group of devices in waves over MQTT; the fleet's status"),
    "keygen": ("keygen", "make an Ed25519 key pair for signing models (on the workstation)"),
    "sign": ("sign", "sign a bundle in place: version, expiry, target (on the workstation)"),
    "verify": ("verify", "check a bundle's signature against trusted keys (exit 4 with the reason)"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in COMMANDS.items()
        if importlib.util.find_spec(f"edge_resnet.commands.{spec[0]}") is not None
    }


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-resnet",
        description="Classify what a camera sees with INT8 TFLite ResNets, offline.",
    )
    parser.add_argument("--version", action="version", version=f"edge-resnet {__version__}")
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = _available()
    # Register only the command being run (plus help text for all): importing every command
    # would pull in the daemon's modules just to classify one image.
    wanted = next((a for a in argv if a in available), None)
    for name, (module, helptext) in available.items():
        if name == wanted:
            mod = importlib.import_module(f"edge_resnet.commands.{module}")
            mod.register(sub, name, helptext)
            # after the sub-command too (`classify ... -v`): SUPPRESS keeps a value given before it
            _add_verbosity(sub.choices[name], argparse.SUPPRESS)
        else:
            sub.add_parser(name, help=helptext, add_help=False)
    return parser


def _add_verbosity(p: argparse.ArgumentParser, default: object) -> None:
    """-v / -q, accepted before or after the sub-command."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="log debug detail, including TensorFlow's and the interpreter's own messages")
    g.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


class JournalFormatter(logging.Formatter):
    """Under systemd (JOURNAL_STREAM set) each record becomes one line with an `<N>` priority
    prefix, so `journalctl -p warning` works and a multi-line message stays one journal entry."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}"


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(JournalFormatter(fmt) if os.environ.get("JOURNAL_STREAM") else logging.Formatter(fmt))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    _setup_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return int(ExitCode.USAGE)
    try:
        return int(args.func(args))
    except EdgeResnetError as e:
        print(f"edge-resnet: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
