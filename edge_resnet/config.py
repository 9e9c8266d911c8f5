"""The daemon's configuration: typed dataclasses loaded from TOML, checked at load time.

Every table maps to one dataclass; `configtools.from_dict` turns an unknown key or a wrong type
into a ConfigError that names the key and the fix. `[source]` is a union chosen by its `type`
key (an explicit dict below, no plugin discovery). Secrets never live here: the MQTT and HTTP
passwords are read from the environment variables the config names.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .configtools import check_range, from_dict
from .errors import ConfigError
from .preprocess import PRESETS, ChannelOrder, Interpolation, PreprocessSpec
from .sinks.http import HttpConfig
from .sinks.mqtt import DEVICE_ID, MqttConfig
from .sinks.video import VideoConfig

DEFAULT_STATE_DIR = "/var/lib/edge-resnet"
Device = Literal["cpu", "edgetpu", "auto"]
Smoothing = Literal["none", "average", "hysteresis"]


def default_state_dir() -> str:
    """systemd's `StateDirectory=` sets $STATE_DIRECTORY (colon-separated when several)."""
    env = os.environ.get("STATE_DIRECTORY", "")
    return env.split(":")[0] if env else DEFAULT_STATE_DIR


# -- [model] ------------------------------------------------------------------------------------


@dataclass
class PreprocessOverrides:
    """`[model.preprocess]`: override what the model bundle says (or the defaults for a plain .tflite)."""

    preset: str | None = None  # imagenet | inception | caffe | raw, then the keys below on top
    mean: tuple[float, float, float] | None = None  # 0..255 pixel units, model channel order
    std: tuple[float, float, float] | None = None
    channel_order: ChannelOrder | None = None
    crop_fraction: float | None = None
    interpolation: Interpolation | None = None

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"[model.preprocess] preset: {self.preset!r} is unknown; use one of {sorted(PRESETS)}")
        for i, v in enumerate(self.mean or ()):
            check_range(f"[model.preprocess] mean[{i}]", v, -255, 510, "0..255 pixel units, e.g. 123.675")
        for i, v in enumerate(self.std or ()):
            check_range(f"[model.preprocess] std[{i}]", v, 0.001, 10000, "pixel units, e.g. 58.395")
        self.apply(PRESETS["raw"])  # validates ranges now, not on the first frame

    def apply(self, base: PreprocessSpec) -> PreprocessSpec:
        spec = PRESETS[self.preset] if self.preset else base
        changes = {
            k: getattr(self, k)
            for k in ("mean", "std", "channel_order", "crop_fraction", "interpolation")
            if getattr(self, k) is not None
        }
        return dataclasses.replace(spec, **changes, preset="config") if changes else spec

    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


@dataclass
class ModelConfig:
    """`[model]`: the .tflite (a bundle carries its labels and preprocessing) and where it runs."""

    path: str = ""
    labels: str | None = None  # a text file, one label per line; not needed for bundles
    device: Device = "cpu"
    threads: int | None = None
    top_k: int = 5
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)

    def __post_init__(self) -> None:
        if self.threads is not None and not 1 <= self.threads <= 64:
            raise ConfigError(f"[model] threads: {self.threads} is out of range; use 1..64 or leave it out")
        if not 1 <= self.top_k <= 100:
            raise ConfigError(f"[model] top_k: {self.top_k} is out of range; use 1..100, e.g. 5")


# -- [source] -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SourceCommon:
    """Keys every source has: the camera watchdog and what to do when the source cannot be opened."""

    watchdog_s: float = 5.0  # no frame for this long -> "camera lost", reopen
    retry: bool = True  # false: a source that cannot be opened stops the daemon (exit 6)
    backoff_max_s: float = 2.0  # reopen delay doubles from 0.5 s up to this: a returning camera is seen within it

    def __post_init__(self) -> None:
        check_range("[source] watchdog_s", self.watchdog_s, 0.1, 3600, "seconds, e.g. 5")
        check_range("[source] backoff_max_s", self.backoff_max_s, 0.5, 3600, "seconds, e.g. 4")


@dataclass(kw_only=True)
class OpenCvSource(SourceCommon):
    """A V4L2 camera: index (0), /dev/videoN, or a stable /dev/v4l/by-id/... path."""

    type: Literal["opencv"] = "opencv"
    device: int | str = 0
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = "MJPG"  # most USB cameras reach full frame rate only with MJPG

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.device, int) and self.device < 0:
            raise ConfigError(f"[source] device: {self.device} is not a camera index; use 0, 1, ... or /dev/videoN")
        if isinstance(self.device, int):
            check_range("[source] device", self.device, 0, 255, "a camera index such as 0")
        if self.width is not None:
            check_range("[source] width", self.width, 16, 8192, "pixels, e.g. 640")
        if self.height is not None:
            check_range("[source] height", self.height, 16, 8192, "pixels, e.g. 480")
        if self.fps is not None:
            check_range("[source] fps", self.fps, 0.1, 1000, "frames per second, e.g. 30; or leave it out")
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise ConfigError(f"[source] fourcc: {self.fourcc!r} must be four characters, e.g. MJPG or YUYV")
        if (self.width is None) != (self.height is None):
            raise ConfigError("[source] width and height go together; set both or neither")


@dataclass(kw_only=True)
class FileSource(SourceCommon):
    """A video file, at its own frame rate (realtime = true) or as fast as it decodes."""

    type: Literal["file"] = "file"
    path: str
    realtime: bool = True
    loop: bool = False


@dataclass(kw_only=True)
class UrlSource(SourceCommon):
    """A network stream: rtsp://, rtsps://, http:// or https:// (e.g. MJPEG)."""

    type: Literal["url"] = "url"
    url: str
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    timeout_s: float = 5.0  # open and read timeout

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("[source] timeout_s", self.timeout_s, 0.5, 300, "seconds, e.g. 5")
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme not in ("rtsp", "rtsps", "http", "https"):
            raise ConfigError(f"[source] url: {self.url!r} is not an rtsp:// or http(s):// URL")


@dataclass(kw_only=True)
class GstreamerSource(SourceCommon):
    """A GStreamer pipeline ending in `appsink` (only where OpenCV was built with GStreamer)."""

    type: Literal["gstreamer"] = "gstreamer"
    pipeline: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if "appsink" not in self.pipeline:
            raise ConfigError("[source] pipeline: must end in `appsink`, e.g. '... ! videoconvert ! appsink'")


@dataclass(kw_only=True)
class FolderSource(SourceCommon):
    """A folder of images, shown in name order, each for `interval_s` seconds (0 = as fast as possible)."""

    type: Literal["folder"] = "folder"
    path: str
    interval_s: float = 1.0
    loop: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("[source] interval_s", self.interval_s, 0, 86400, "seconds, e.g. 1 (0 = as fast as possible)")


@dataclass(kw_only=True)
class Picamera2Source(SourceCommon):
    """A Raspberry Pi camera through picamera2; the daemon classifies the small `lores` stream."""

    type: Literal["picamera2"] = "picamera2"
    camera: int = 0
    main_size: tuple[int, int] = (1280, 720)
    lores_size: tuple[int, int] = (320, 240)
    lores_format: Literal["YUV420", "RGB888"] = "YUV420"  # Pi 4 and older support only YUV420 for lores
    use_lores: bool = True
    fps: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("[source] camera", self.camera, 0, 15, "a camera number such as 0")
        for key, (w, h) in (("main_size", self.main_size), ("lores_size", self.lores_size)):
            check_range(f"[source] {key}[0]", w, 16, 8192, "pixels, e.g. [640, 480]")
            check_range(f"[source] {key}[1]", h, 16, 8192, "pixels, e.g. [640, 480]")
        if self.use_lores and (self.lores_size[0] > self.main_size[0] or self.lores_size[1] > self.main_size[1]):
            raise ConfigError(
                f"[source] lores_size: {list(self.lores_size)} is larger than main_size {list(self.main_size)}; "
                "make lores_size the smaller one, e.g. [320, 240]"
            )
        if self.fps is not None:
            check_range("[source] fps", self.fps, 0.1, 1000, "frames per second, e.g. 30; or leave it out")


SourceConfig = OpenCvSource | FileSource | UrlSource | GstreamerSource | FolderSource | Picamera2Source
SOURCE_TYPES: dict[str, type[Any]] = {
    "opencv": OpenCvSource,
    "file": FileSource,
    "url": UrlSource,
    "gstreamer": GstreamerSource,
    "folder": FolderSource,
    "picamera2": Picamera2Source,
}


# -- [pipeline], [stdout], top level ------------------------------------------------------------


@dataclass
class PipelineConfig:
    """`[pipeline]`: how often to classify, what to look at, and how to keep the label steady."""

    max_fps: float | None = None  # None: as fast as frames arrive
    roi: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in frame pixels
    smoothing: Smoothing = "hysteresis"
    window: int = 3  # frames (average: window size; hysteresis: frames a new label must lead)
    min_score: float = 0.0  # a new label must reach this score to be adopted
    heartbeat_s: float = 30.0  # re-publish the unchanged state this often (stdout)

    def __post_init__(self) -> None:
        if self.max_fps is not None:
            check_range("[pipeline] max_fps", self.max_fps, 0.01, 1000, "frames per second; leave it out for no limit")
        if not 1 <= self.window <= 1000:
            raise ConfigError(f"[pipeline] window: {self.window} is out of range; use 1..1000, e.g. 3")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"[pipeline] min_score: {self.min_score} must be in 0..1")
        check_range("[pipeline] heartbeat_s", self.heartbeat_s, 0.1, 86400, "seconds, e.g. 30")
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            for i, v in enumerate(self.roi):
                check_range(f"[pipeline] roi[{i}]", v, 0, 65535, "frame pixels")
            if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
                raise ConfigError(f"[pipeline] roi: {list(self.roi)} must be [x0, y0, x1, y1] with x1 > x0 >= 0")


@dataclass
class StdoutConfig:
    """`[stdout]`: JSON lines on standard output (on by default when no other sink is configured)."""

    enabled: bool = True
    every_frame: bool = False  # false: on label change and every pipeline.heartbeat_s


@dataclass
class Config:
    device_id: str = "edge-resnet"
    state_dir: str = field(default_factory=default_state_dir)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=OpenCvSource)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    mqtt: MqttConfig | None = None
    http: HttpConfig | None = None
    video: VideoConfig | None = None
    stdout: StdoutConfig | None = None

    def __post_init__(self) -> None:
        check_device_id(self.device_id)

    def stdout_enabled(self) -> bool:
        """stdout is on when asked for, or when nothing else would show the results."""
        if self.stdout is not None:
            return self.stdout.enabled
        return self.mqtt is None and self.http is None and self.video is None


def check_device_id(device_id: str) -> None:
    """The one device_id check (config check, run, flags and the MQTT sink all use DEVICE_ID)."""
    if not DEVICE_ID.fullmatch(device_id):
        raise ConfigError(
            f"device_id: {device_id!r} is not usable in MQTT topics; use 1..64 ASCII letters, digits, '-' or '_'"
        )


def _build(cls: type[Any], data: Any, section: str) -> Any:
    """from_dict, with a missing required key named as such."""
    if isinstance(data, dict):
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"[{section}] missing key {missing[0]!r}; add it (see deploy/config.example.toml)")
    return from_dict(cls, data, section)


def source_from_dict(data: Any) -> SourceConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"[source] must be a table, got {type(data).__name__}")
    kind = data.get("type", "opencv")
    cls = SOURCE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"[source] type: {kind!r} is unknown; use one of {', '.join(SOURCE_TYPES)}")
    built: SourceConfig = _build(cls, {**data, "type": kind}, "source")
    return built


_SINKS: dict[str, type[Any]] = {"mqtt": MqttConfig, "http": HttpConfig, "video": VideoConfig, "stdout": StdoutConfig}


def config_from_dict(data: dict[str, Any]) -> Config:
    """A Config from parsed TOML; every problem is one ConfigError naming the key."""
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; known keys and tables: {', '.join(sorted(top))}")
    kw: dict[str, Any] = {}
    for key in ("device_id", "state_dir", "log_level"):
        if key in data:
            scalar = from_dict(_Scalars, {key: data[key]}, "")
            kw[key] = getattr(scalar, key)
    if "model" in data:
        kw["model"] = from_dict(ModelConfig, data["model"], "model")
    if "source" in data:
        kw["source"] = source_from_dict(data["source"])
    if "pipeline" in data:
        kw["pipeline"] = from_dict(PipelineConfig, data["pipeline"], "pipeline")
    for name, cls in _SINKS.items():
        if name in data:
            kw[name] = _build(cls, data[name], name)
    try:
        return Config(**kw)
    except TypeError as e:
        raise ConfigError(str(e)) from None


@dataclass
class _Scalars:
    device_id: str = ""
    state_dir: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; pass the path of a .toml file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read ({e}); check permissions and encoding") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    try:
        return validate(config_from_dict(data))
    except ConfigError as e:
        raise ConfigError(f"{p}: {_with_hint(str(e))}") from None


def validate(cfg: Config) -> Config:
    """The one validation path: `config check` (through load) and `run` (after its flags) both end
    here, so a value `config check` accepts cannot fail at `run`. Rebuilding each table re-runs its
    checks on the final, merged values."""
    tables: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            tables[f.name] = dataclasses.replace(value)
    return dataclasses.replace(cfg, **tables)


def _with_hint(msg: str) -> str:
    """A quoted number where a number belongs is the most common TOML slip: say how to write it."""
    if ("expected an integer, got '" in msg or "expected a number, got '" in msg) and msg.endswith("'"):
        return msg + " (write the number without quotes)"
    if "expected true or false, got '" in msg:
        return msg + " (write true or false without quotes)"
    return msg


def summary(cfg: Config) -> str:
    """A few human lines: what `config check` prints after OK."""
    src = cfg.source
    where = {
        "opencv": lambda s: f"camera {s.device}",
        "file": lambda s: f"video file {s.path}{' (loop)' if s.loop else ''}{'' if s.realtime else ' (fast)'}",
        "url": lambda s: f"stream {s.url}",
        "gstreamer": lambda s: f"gstreamer {s.pipeline}",
        "folder": lambda s: f"image folder {s.path}",
        "picamera2": lambda s: f"picamera2 camera {s.camera} (lores {s.lores_size[0]}x{s.lores_size[1]})",
    }[src.type](src)
    sinks = [
        *([f"mqtt {cfg.mqtt.url}"] if cfg.mqtt else []),
        *([f"http {cfg.http.listen}"] if cfg.http else []),
        *([f"video {cfg.video.path}"] if cfg.video else []),
        *(["stdout"] if cfg.stdout_enabled() else []),
    ]
    p = cfg.pipeline
    return "\n".join(
        [
            f"device_id: {cfg.device_id}   state_dir: {cfg.state_dir}",
            f"model:     {cfg.model.path or '(none: pass --model)'} on {cfg.model.device}"
            + (f", labels {cfg.model.labels}" if cfg.model.labels else ""),
            f"source:    {where}",
            f"pipeline:  smoothing {p.smoothing} over {p.window}, max_fps {p.max_fps or 'unlimited'}"
            + (f", roi {list(p.roi)}" if p.roi else ""),
            f"sinks:     {', '.join(sinks) or '(none)'}",
        ]
    )
