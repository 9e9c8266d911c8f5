"""`edge-resnet doctor`: check cameras, model, Edge TPU, broker, temperature and disk; exit 9 on problems."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .. import doctor as d
from ..devices import DEVICES
from ..errors import ConfigError, EdgeResnetError, ExitCode

DEFAULT_CONFIG = "/etc/edge-resnet/config.toml"

DESCRIPTION = (
    "Check that this device can run the daemon: cameras that open and deliver a frame, the model "
    "loads (and on which delegate), Edge TPU present (/dev/apex_0, USB 1a6e:089a / 18d1:9302, "
    "libedgetpu), the interpreter, the Raspberry Pi AI Camera (picamera2's IMX500 support, the sensor's "
    "firmware and node, the network.rpk and that it matches the model), the MQTT broker reachable, "
    "Raspberry Pi throttling and temperature, disk space and a writable state directory. Prints a "
    "table with the fix for each "
    f"problem; exits {int(ExitCode.PROBLEMS)} when a check fails, 0 otherwise. Changes nothing."
)


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=DESCRIPTION)
    p.add_argument("--config", "-c", help=f"daemon config to check against (default: {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--model", "-m", help="model to load (default: [model] path, else the first in the models dir)")
    p.add_argument("--device", choices=DEVICES, help="where to run the model (default: [model] device, else auto)")
    p.add_argument(
        "--source",
        "-s",
        help="the source to check, as `run --source` takes it: 0, /dev/videoN, a video file, a folder, rtsp://... "
        "(default: [source]; without either, cameras are listed for information only)",
    )
    p.add_argument("--mqtt", metavar="URL", help="broker to reach, mqtt://HOST[:PORT] (default: [mqtt] url)")
    p.add_argument(
        "--state-dir",
        help="state directory to check (default: state_dir; without a config, the one `run` would use)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per camera/broker probe (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = gather(args)
    problems = d.failed(checks)
    if args.json:
        print(
            json.dumps(
                {"ok": not problems, "problems": len(problems), "checks": [c.to_dict() for c in checks]},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(d.format_table(checks))
    return int(ExitCode.PROBLEMS if problems else ExitCode.OK)


def gather(args: argparse.Namespace) -> list[d.Check]:
    from ..config import SOURCES, Config, default_state_dir, load, resolve
    from ..doctor_picamera2 import check_model_and_source
    from ..imx500 import is_sensor_model
    from .run import parse_source, state_dir_without_config

    checks: list[d.Check] = d.check_user()
    cfg: Config | None = None
    config_path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if config_path:
        try:
            cfg = load(config_path)
            checks.append(d.Check("config", d.Result.OK, f"{config_path} is valid (device_id {cfg.device_id})"))
        except ConfigError as e:
            checks.append(
                d.Check("config", d.Result.FAIL, str(e), f"fix the file; `edge-resnet config check {config_path}`")
            )
    else:
        checks.append(d.Check("config", d.Result.SKIP, f"no --config and no {DEFAULT_CONFIG}"))

    # the source decides which camera checks matter: its registry entry names its probe
    source = cfg.source if cfg else None
    if args.source:
        try:
            source = parse_source(args.source)
        except EdgeResnetError as e:
            source = None
            checks.append(d.Check("source", d.Result.FAIL, str(e), "pass a source `edge-resnet run --source` takes"))
    if source is not None:
        kind = SOURCES[source.type]
        probe = resolve(kind.doctor) if kind.doctor else d.probe_path_source
        checks += probe(source, args.timeout)
    elif not args.source:
        checks += d.probe_without_source(args.timeout)

    checks += d.check_interpreter()
    model = args.model or (cfg.model.path if cfg else None) or None
    device = args.device or (cfg.model.device if cfg else "auto")
    # without a config, the folder `run` would use (the user's own outside systemd)
    fallback = default_state_dir() if config_path else state_dir_without_config()
    state_dir = args.state_dir or (cfg.state_dir if cfg else fallback)
    checks += d.check_model(model, device, os.path.join(state_dir, "models"))
    checks += check_model_and_source(model, source)  # an IMX500 network's metadata and network.rpk agree
    needs_tpu = device == "edgetpu" or bool(model and model.endswith("_edgetpu.tflite"))
    if model and is_sensor_model(model):
        checks.append(d.Check("edgetpu", d.Result.SKIP, "not used: the model runs on the IMX500 sensor"))
    else:
        checks += d.check_edgetpu(required=needs_tpu)
    mqtt_url = args.mqtt or (cfg.mqtt.url if cfg and cfg.mqtt else None)
    ca_file = cfg.mqtt.ca_file if cfg and cfg.mqtt else None
    checks += d.check_broker(mqtt_url, timeout=args.timeout, ca_file=ca_file, mqtt=cfg.mqtt if cfg else None)
    checks += d.check_throttling()
    checks += d.check_temperature()
    checks += d.check_disk(state_dir)
    checks += d.check_state_dir(state_dir, created_by_run=not args.state_dir and cfg is None and not config_path)
    return checks
