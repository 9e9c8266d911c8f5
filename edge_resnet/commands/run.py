"""`edge-resnet run`: the camera daemon. Flags override the config file; secrets come from the environment."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from .. import config as configmod
from ..config import (
    Config,
    FileSource,
    FolderSource,
    OpenCvSource,
    Picamera2Source,
    SourceConfig,
    UrlSource,
    check_device_id,
)
from ..errors import ConfigError, InputError
from ..sinks.http import HttpConfig
from ..sinks.mqtt import MqttConfig
from ..sinks.video import VideoConfig

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
    p.add_argument("--mqtt", metavar="URL", help="publish to this broker: mqtt://HOST[:PORT] or mqtts://...")
    p.add_argument("--device-id", help="the name in MQTT topics (letters, digits, - and _)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve the live overlay, /metrics and /healthz here")
    p.add_argument("--video", metavar="FILE", help="write an annotated video file (.avi, .mp4, .mkv)")
    p.add_argument("--stdout", action="store_true", help="also print JSON lines when other sinks are configured")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N classified frames (tests)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.set_defaults(func=run)


def parse_source(text: str, loop: bool = False, fast: bool = False) -> SourceConfig:
    """What a user types after --source, as a [source] table."""
    t = text.strip()
    if t.isdigit():
        return OpenCvSource(device=int(t))
    if t.lower() == "picamera2":
        return Picamera2Source()
    if re.match(r"^(rtsps?|https?)://", t, re.IGNORECASE):
        return UrlSource(url=t)
    if t.startswith("/dev/"):
        return OpenCvSource(device=t)
    if " ! " in t and "appsink" in t:
        from ..config import GstreamerSource

        return GstreamerSource(pipeline=t)
    p = Path(t).expanduser()
    if p.is_dir():
        return FolderSource(path=str(p), loop=loop, interval_s=0.0 if fast else 1.0)
    if p.is_file():
        return FileSource(path=str(p), loop=loop, realtime=not fast)
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
        if isinstance(source, FileSource):
            realtime = source.realtime and not args.fast
            source = dataclasses.replace(source, loop=source.loop or args.loop, realtime=realtime)
        elif isinstance(source, FolderSource):
            interval = 0.0 if args.fast else source.interval_s
            source = dataclasses.replace(source, loop=source.loop or args.loop, interval_s=interval)
    pipeline = cfg.pipeline
    if getattr(args, "max_fps", None):
        pipeline = dataclasses.replace(pipeline, max_fps=args.max_fps)
    out = dataclasses.replace(cfg, model=model, source=source, pipeline=pipeline)
    if getattr(args, "device_id", None):
        check_device_id(args.device_id)
        out = dataclasses.replace(out, device_id=args.device_id)
    if getattr(args, "mqtt", None):
        base = cfg.mqtt or MqttConfig()
        out = dataclasses.replace(out, mqtt=dataclasses.replace(base, url=args.mqtt))
    if getattr(args, "http", None):
        base_http = cfg.http or HttpConfig()
        out = dataclasses.replace(out, http=dataclasses.replace(base_http, listen=args.http))
    if getattr(args, "video", None):
        base_video = cfg.video or VideoConfig(path=args.video)
        out = dataclasses.replace(out, video=dataclasses.replace(base_video, path=args.video))
    if getattr(args, "stdout", False):
        out = dataclasses.replace(out, stdout=configmod.StdoutConfig(enabled=True))
    return out


def run(args: argparse.Namespace) -> int:
    from ..daemon import Daemon  # the daemon's modules load only for this command

    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError("--max-frames must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be > 0 seconds")
    cfg = configmod.load(args.config) if args.config else Config()
    cfg = configmod.validate(apply_overrides(cfg, args))  # the same checks as `config check`
    if not cfg.model.path:
        raise ConfigError("no model given; pass --model FILE.tflite or set [model] path in the config")
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
