"""`edge-resnet run`: the camera daemon. Flags override the config file; secrets come from the environment."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any

from .. import config as configmod
from ..config import SINKS, SOURCES, Config, check_device_id
from ..errors import ConfigError, InputError
from ..sourceconfig import SourceCommon
from .config import first_and_count

log = logging.getLogger(__name__)

DESCRIPTION = """\
Watch a camera (or a video file, stream or image folder) and say what it sees: on MQTT, on a
live overlay page and/or as JSON lines on stdout. Flags override the config file. SIGTERM/SIGINT
stop cleanly, SIGHUP reloads the config and the model without a restart.

examples:
  edge-resnet run --model m.tflite --labels labels.txt --source 0
  edge-resnet run --config /etc/edge-resnet/config.toml
  edge-resnet run --model m.tflite --source video.mp4 --loop --http 127.0.0.1:8080 --mqtt mqtt://localhost
"""


def register(sub: Any, name: str, helptext: str) -> None:
    p = sub.add_parser(name, help=helptext, description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", "-c", metavar="FILE.toml", help="daemon configuration (see deploy/config.example.toml)")
    p.add_argument("--model", "-m", help="a .tflite model or edge-resnet bundle ([model] path)")
    p.add_argument("--labels", help="labels file, one per line; bundles carry their own ([model] labels)")
    p.add_argument("--device", choices=("cpu", "edgetpu", "auto"), help="where the model runs ([model] device)")
    p.add_argument("--threads", type=int, help="interpreter threads ([model] threads)")
    p.add_argument(
        "--source",
        "-s",
        help="camera index (0), /dev/videoN, /dev/v4l/by-id/..., video file, image folder, rtsp://..., "
        "http(s)://..., or picamera2",
    )
    p.add_argument("--loop", action="store_true", help="loop a video file or image folder")
    p.add_argument("--fast", action="store_true", help="read a video file or folder as fast as possible")
    p.add_argument("--max-fps", type=float, help="classify at most this many frames per second")
    p.add_argument("--device-id", help="the name in MQTT topics (letters, digits, - and _)")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="MQTT event queue and taught examples (state_dir; default without --config: ~/.local/state/edge-resnet, "
        "under systemd its StateDirectory=)",
    )
    for kind in SINKS.values():  # one flag per sink that has one: --mqtt, --http, --video, --stdout
        if kind.flag is None:
            continue
        if kind.flag.metavar is None:
            p.add_argument(kind.flag.option, action="store_true", help=kind.flag.help)
        else:
            p.add_argument(kind.flag.option, metavar=kind.flag.metavar, help=kind.flag.help)
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N classified frames (tests)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.set_defaults(func=run)


def parse_source(text: str, loop: bool = False, fast: bool = False) -> SourceCommon:
    """What a user types after --source, as a [source] table: the first registered kind that reads it."""
    t = text.strip()
    for kind in SOURCES.values():
        if kind.from_text is not None and (cfg := kind.from_text(t, loop, fast)) is not None:
            return cfg
    raise InputError(
        f"--source {text!r} is not a camera index, /dev/video device, URL, existing file or folder; "
        "pass e.g. 0, /dev/video0, video.mp4, images/ or rtsp://host/stream"
    )


def apply_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """Command-line flags on top of the file (or the defaults)."""
    model = cfg.model
    changes: dict[str, Any] = {}
    for flag, key in (("model", "path"), ("labels", "labels"), ("device", "device"), ("threads", "threads")):
        v = getattr(args, flag, None)
        if v is not None:
            changes[key] = str(v) if flag in ("model", "labels") else v
    if changes:
        try:
            model = dataclasses.replace(model, **changes)
        except TypeError as e:
            raise ConfigError(str(e)) from None
    source = cfg.source
    if getattr(args, "source", None):
        source = parse_source(args.source, loop=args.loop, fast=args.fast)
    elif args.loop or args.fast:
        with_flags = SOURCES[source.type].with_flags
        if with_flags is not None:
            source = with_flags(source, args.loop, args.fast)
    pipeline = cfg.pipeline
    if getattr(args, "max_fps", None):
        pipeline = dataclasses.replace(pipeline, max_fps=args.max_fps)
    out = dataclasses.replace(cfg, model=model, source=source, pipeline=pipeline)
    if getattr(args, "device_id", None):
        check_device_id(args.device_id)
        out = dataclasses.replace(out, device_id=args.device_id)
    if getattr(args, "state_dir", None):
        out = dataclasses.replace(out, state_dir=args.state_dir)
    sinks = dict(cfg.sinks)
    for name, kind in SINKS.items():
        value = getattr(args, kind.flag.dest, None) if kind.flag is not None else None
        if kind.flag is not None and value:
            sinks[name] = kind.flag.apply(cfg.sinks.get(name), value)
    return dataclasses.replace(out, sinks=sinks)


def state_dir_without_config() -> str:
    """Where a run without --config keeps its state: systemd's StateDirectory= under systemd, else the
    user's own state folder. /var/lib/edge-resnet is the service's (deploy/install.sh makes it, owned
    by the edge-resnet user): a root shell creating it, and a root-owned event queue in it, would
    leave the service unable to write there later."""
    if os.environ.get("STATE_DIRECTORY") or os.environ.get("INVOCATION_ID"):  # both set by systemd
        return configmod.default_state_dir()
    return str(configmod.user_state_dir())


def run(args: argparse.Namespace) -> int:
    from ..daemon import Daemon  # the daemon's modules load only for this command

    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError("--max-frames must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be > 0 seconds")
    try:
        cfg = configmod.load(args.config) if args.config else Config()
    except ConfigError as e:  # the first problem and how many more: `config check` lists them all
        raise ConfigError(first_and_count(e, args.config)) from None
    chosen = not args.config and not args.state_dir
    if chosen:
        cfg = dataclasses.replace(cfg, state_dir=state_dir_without_config())
    cfg = configmod.validate(apply_overrides(cfg, args))  # the same checks as `config check`
    if not cfg.model.path:
        raise ConfigError("no model given; pass --model FILE.tflite or set [model] path in the config")
    if chosen:
        log.info("no --config: state (MQTT event queue, taught examples) in %s (--state-dir DIR)", cfg.state_dir)
    if cfg.log_level != "info" and not getattr(args, "verbose", False):
        logging.getLogger().setLevel(cfg.log_level.upper())
    daemon = Daemon(
        cfg,
        config_path=args.config,
        overrides=lambda c: apply_overrides(c, args),
        max_frames=args.max_frames,
        duration_s=args.duration,
    )
    return daemon.run()
