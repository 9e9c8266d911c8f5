"""Daemon configuration: the example validates, bad keys and types fail with the key named, flags override."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge_resnet import config as configmod
from edge_resnet import sinkconfig
from edge_resnet.commands.run import apply_overrides, parse_source
from edge_resnet.errors import ConfigError, InputError
from edge_resnet.fleetconfig import FleetConfig
from edge_resnet.sourceconfig import FileSource, FolderSource, OpenCvSource, Picamera2Source, UrlSource
from edge_resnet.trustconfig import TrustConfig

from .conftest import REPO, run_cli

EXAMPLE = REPO / "deploy" / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_example_config_validates() -> None:
    cfg = configmod.load(EXAMPLE)
    assert cfg.mqtt is not None and cfg.http is not None
    assert isinstance(cfg.source, OpenCvSource)
    assert not cfg.stdout_enabled()


def test_config_check_cli_ok() -> None:
    r = run_cli("config", "check", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK")
    assert "source:" in r.stdout and "camera 0" in r.stdout


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[model]\npath = "m.tflite"\nthred = 4\n', ["[model] unknown key 'thred'", "threads"]),
        ('[model]\npath = "m.tflite"\nthreads = "4"\n', ["[model] threads", "without quotes"]),
        ('[modle]\npath = "m"\n', ["unknown top-level key 'modle'"]),
        ('[source]\ntype = "webcam"\n', ["[source] type", "'webcam'", "opencv"]),
        ('[source]\ntype = "file"\n', ["[source] missing key 'path'"]),
        ('[source]\ntype = "file"\npath = "a.mp4"\nloops = true\n', ["[source] unknown key 'loops'", "loop"]),
        ('[pipeline]\nsmoothing = "median"\n', ["[pipeline] smoothing", "'hysteresis'"]),
        ("[pipeline]\nroi = [0, 0, 10]\n", ["[pipeline] roi"]),
        ('[mqtt]\nurl = "http://broker"\n', ["[mqtt] url", "mqtt://"]),
        ('[http]\nlisten = "8080"\n', ["[http] listen", "HOST:PORT"]),
        ('device_id = "my device"\n', ["device_id", "letters, digits"]),
        ("[model\n", ["not valid TOML"]),
    ],
)
def test_bad_config_names_key_and_fix(tmp_path: Path, text: str, needles: list[str]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        configmod.load(p)
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


@pytest.mark.parametrize(
    ("url", "warned"),
    [("mqtt://broker.lan", True), ("mqtt://10.0.0.5:1884", True), ("mqtts://broker.lan", False),
     ("mqtt://127.0.0.1", False), ("mqtt://localhost:1883", False)],
)
def test_config_check_warns_of_a_password_over_plain_mqtt(tmp_path: Path, url: str, warned: bool) -> None:
    """Before the device is set up: the password need not be in this environment to be warned about."""
    p = write(tmp_path, f'[model]\npath = "m.tflite"\n[mqtt]\nurl = "{url}"\nusername = "cam"\n')
    r = run_cli("config", "check", str(p))
    assert r.returncode == 0, r.stderr
    clear = [ln for ln in r.stdout.splitlines() if "clear text" in ln]
    assert len(clear) == int(warned), r.stdout
    if warned:
        assert clear[0].startswith("warning: [mqtt] the password for 'cam' goes to ") and "mqtts://" in clear[0]
    p = write(tmp_path, f'[model]\npath = "m.tflite"\n[mqtt]\nurl = "{url}"\n')
    assert "clear text" not in run_cli("config", "check", str(p)).stdout, "no username, no password to leak"


def test_config_check_cli_bad_exit_3(tmp_path: Path) -> None:
    p = write(tmp_path, '[source]\ntype = "file"\npath = "a.mp4"\nspeed = 2\n')
    r = run_cli("config", "check", str(p))
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("edge-resnet: error:") and "unknown key 'speed'" in lines[-1]
    print(lines[-1])


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("config", "check", str(tmp_path / "nope.toml"))
    assert r.returncode == 3 and "does not exist" in r.stderr


def test_every_source_type_and_defaults(tmp_path: Path) -> None:
    cases = {
        'type = "opencv"\ndevice = "/dev/v4l/by-id/usb-cam-video-index0"\nwidth = 640\nheight = 480': OpenCvSource,
        'type = "file"\npath = "v.mp4"\nrealtime = false\nloop = true': FileSource,
        'type = "url"\nurl = "rtsp://cam/stream"': UrlSource,
        'type = "folder"\npath = "imgs"\ninterval_s = 0': FolderSource,
        'type = "picamera2"\nlores_size = [320, 240]': Picamera2Source,
    }
    for body, cls in cases.items():
        cfg = configmod.load(write(tmp_path, f"[source]\n{body}\n"))
        assert isinstance(cfg.source, cls)
    cfg = configmod.load(write(tmp_path, ""))
    assert cfg.stdout_enabled() and cfg.pipeline.smoothing == "hysteresis"


def test_state_dir_from_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert configmod.load(write(tmp_path, "")).state_dir == f"{tmp_path}/a"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert configmod.load(write(tmp_path, "")).state_dir == configmod.DEFAULT_STATE_DIR


def test_preprocess_overrides() -> None:
    from edge_resnet.preprocess import PRESETS

    o = configmod.PreprocessOverrides(preset="imagenet", crop_fraction=1.0)
    spec = o.apply(PRESETS["raw"])
    assert spec.mean == PRESETS["imagenet"].mean and spec.crop_fraction == 1.0
    with pytest.raises(ConfigError, match="preset"):
        configmod.PreprocessOverrides(preset="torch")


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "model": None,
        "labels": None,
        "device": None,
        "threads": None,
        "source": None,
        "loop": False,
        "fast": False,
        "max_fps": None,
        "device_id": None,
        "mqtt": None,
        "http": None,
        "video": None,
        "stdout": False,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_flags_override_file(tmp_path: Path) -> None:
    video = tmp_path / "v.avi"
    video.write_bytes(b"x")
    cfg = configmod.load(EXAMPLE)
    out = apply_overrides(
        cfg,
        _args(
            model="m.tflite",
            source=str(video),
            fast=True,
            mqtt="mqtt://10.0.0.2:1884",
            device_id="kitchen",
            http="0.0.0.0:9000",
            threads=2,
        ),
    )
    assert out.model.path == "m.tflite" and out.model.threads == 2
    assert isinstance(out.source, FileSource) and not out.source.realtime
    assert out.mqtt is not None and out.mqtt.url == "mqtt://10.0.0.2:1884" and out.mqtt.topic_prefix == "edge-resnet"
    assert out.http is not None and out.http.listen == "0.0.0.0:9000"
    assert out.device_id == "kitchen"
    with pytest.raises(ConfigError, match="mqtt"):
        apply_overrides(cfg, _args(mqtt="tcp://x"))


def test_parse_source(tmp_path: Path) -> None:
    assert parse_source("0") == OpenCvSource(device=0)
    assert parse_source("/dev/video2") == OpenCvSource(device="/dev/video2")
    assert isinstance(parse_source("rtsp://cam/s"), UrlSource)
    assert isinstance(parse_source("http://cam/video.mjpg"), UrlSource)
    assert isinstance(parse_source("picamera2"), Picamera2Source)
    assert isinstance(parse_source(str(tmp_path), loop=True), FolderSource)
    with pytest.raises(InputError, match="not a camera index"):
        parse_source(str(tmp_path / "missing.mp4"))


def test_example_documents_every_key() -> None:
    """Every field of every config table appears in deploy/config.example.toml (set or commented)."""
    import dataclasses
    import re

    text = EXAMPLE.read_text()
    keys = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))
    tables = [
        configmod.Config,
        configmod.ModelConfig,
        configmod.PreprocessOverrides,
        configmod.PipelineConfig,
        configmod.RegionConfig,
        sinkconfig.StdoutConfig,
        *(kind.config for kind in configmod.SOURCES.values()),
        sinkconfig.MqttConfig,
        sinkconfig.HttpConfig,
        sinkconfig.VideoConfig,
        TrustConfig,
        FleetConfig,
    ]
    nested = {"model", "source", "pipeline", "sinks", *configmod.SINKS, "preprocess", "regions", "trust", "fleet"}
    missing = sorted(
        {f"{cls.__name__}.{f.name}" for cls in tables for f in dataclasses.fields(cls) if f.name not in keys | nested}
    )
    assert not missing, f"document these keys in {EXAMPLE.name}: {missing}"


# -- issue 13: one validation path, every numeric key range-checked -------------------------------

HOSTILE_CONFIGS = [
    ("[pipeline]\nmax_fps = 1e-300\n", "[pipeline] max_fps"),
    ('device_id = "caméra-ü"\n', "device_id"),
    ('[source]\ntype = "opencv"\nfps = -30.0\n', "[source] fps"),
    ('[source]\ntype = "opencv"\nwidth = -640\nheight = 480\n', "[source] width"),
    ('[source]\ntype = "opencv"\nwidth = 640\nheight = -480\n', "[source] height"),
    ('[source]\ntype = "picamera2"\nlores_size = [0, 0]\n', "[source] lores_size[0]"),
    ("[pipeline]\nheartbeat_s = nan\n", "[pipeline] heartbeat_s"),
    ("[mqtt]\nqueue_max = 0\n", "[mqtt] queue_max"),
    ('[source]\ntype = "url"\nurl = "rtsp://cam/s"\ntimeout_s = inf\n', "[source] timeout_s"),
    ("[model.preprocess]\nmean = [nan, 1.0, 1.0]\n", "[model.preprocess] mean[0]"),
    ("[model.preprocess]\nstd = [1.0, inf, 1.0]\n", "[model.preprocess] std[1]"),
]


@pytest.mark.parametrize(("text", "key"), HOSTILE_CONFIGS)
def test_config_check_and_run_reject_alike(tmp_path: Path, text: str, key: str) -> None:
    """`config check` and `run` give the same single line and exit 3 (before, several of these
    passed the check and crashed or failed differently at run time)."""
    p = write(tmp_path, text)
    outs = []
    for argv in (("config", "check", str(p)), ("run", "--config", str(p), "--model", "m.tflite")):
        r = run_cli(*argv, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 3, (argv, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("edge-resnet: error:"), r.stderr
        assert key in lines[0], lines[0]
        outs.append(lines[0])
    assert outs[0] == outs[1]


def test_run_flags_go_through_the_same_checks() -> None:
    r = run_cli("run", "--model", "m.tflite", "--source", "0", "--max-fps", "1e-300", timeout=60)
    assert r.returncode == 3 and "[pipeline] max_fps" in r.stderr, r.stderr
    r = run_cli("run", "--model", "m.tflite", "--source", "0", "--device-id", "caméra", timeout=60)
    assert r.returncode == 3 and "device_id" in r.stderr, r.stderr


def test_validate_rechecks_merged_values() -> None:
    cfg = configmod.Config()
    object.__setattr__(cfg.pipeline, "max_fps", 1e-300)  # as a flag or a reload could leave it
    with pytest.raises(ConfigError, match="max_fps"):
        configmod.validate(cfg)
