"""The daemon's configuration: typed dataclasses loaded from TOML, checked at load time.

Every table maps to one dataclass; `configtools.build_table` turns an unknown key, a wrong type or
a value out of range into a line that names the key and the fix, and goes on, so loading a file
names all its problems at once (one ConfigError carrying them all). Two registries, explicit dicts (no plugin
discovery), say what exists: `SOURCES` maps a `[source] type` and `SINKS` a sink's table name to
its config class, its factory and how it is summarised and set by flags. Loading, `run` flags,
`summary`, the daemon (start and reload) and `doctor` all read them, so a new source or sink is
one module plus one registry line. Nothing here imports a sink or source module (factories are
"module:attribute" names resolved only when used), so checking a config never loads paho, cv2 or
http.server. Secrets never live here: passwords are read from the environment variables the
config names.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .configtools import ConfigErrors, ErrorCollector, build_table, check_range, construct, hint
from .devices import Device
from .errors import ConfigError
from .fleetconfig import FleetConfig
from .prepspec import PRESETS, ChannelOrder, Interpolation, PreprocessSpec, merge_preprocess
from .sinkconfig import HttpConfig, MqttConfig, StdoutConfig, VideoConfig
from .sourceconfig import (
    FileSource,
    FolderSource,
    GstreamerSource,
    OpenCvSource,
    Picamera2Source,
    SourceCommon,
    UrlSource,
)
from .trustconfig import TrustConfig

DEFAULT_STATE_DIR = "/var/lib/edge-resnet"
DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Smoothing = Literal["none", "average", "hysteresis"]


def default_state_dir() -> str:
    """systemd's `StateDirectory=` sets $STATE_DIRECTORY (colon-separated when several)."""
    env = os.environ.get("STATE_DIRECTORY", "")
    return env.split(":")[0] if env else DEFAULT_STATE_DIR


def user_state_dir() -> Path:
    """This user's own state folder (XDG): where a run by hand keeps its state when the service's is
    not writable, and where `learn` records then."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edge-resnet"


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
            known = hint(self.preset, PRESETS, f"use one of {', '.join(sorted(PRESETS))}")
            raise ConfigError(f"[model.preprocess] preset: {self.preset!r} is unknown; {known}")
        for i, v in enumerate(self.mean or ()):
            check_range(f"[model.preprocess] mean[{i}]", v, -255, 510, "0..255 pixel units, e.g. 123.675")
        for i, v in enumerate(self.std or ()):
            check_range(f"[model.preprocess] std[{i}]", v, 0.001, 10000, "pixel units, e.g. 58.395")
        self.apply(PRESETS["raw"])  # validates ranges now, not on the first frame

    def apply(self, base: PreprocessSpec) -> PreprocessSpec:
        keys = ("mean", "std", "channel_order", "crop_fraction", "interpolation")
        spec = merge_preprocess(base, self.preset, {k: getattr(self, k) for k in keys}, "config")
        assert spec is not None  # base is never None
        return spec

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


# -- [pipeline], top level ---------------------------------------------------------------------


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


MAX_REGIONS = 16
REGION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The first topic levels the daemon itself uses under <topic_prefix>/<device_id>/ (sinks/mqtt/client.py,
# discovery.topics, fleet/agent.topics; tests/test_region_names.py keeps this list in step with them). A
# region's topics are <prefix>/<device>/<region>/..., so a region of one of these names would share them.
RESERVED_REGION_NAMES = frozenset({"state", "events", "snapshot", "availability", "command", "model", "fleet"})


@dataclass
class RegionConfig:
    """`[[region]]`: a named part of the frame with its own model (a learned head on the shared
    backbone, usually), smoothing state, MQTT topics, Home Assistant sensor and overlay box."""

    name: str
    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
    model: str | None = None  # None: the [model] path

    def __post_init__(self) -> None:
        if not REGION_NAME.fullmatch(self.name):
            raise ConfigError(
                f"[[region]] name: {self.name!r} is not usable in MQTT topics; use 1..32 ASCII letters, digits, "
                "'-' or '_'"
            )
        if self.name in RESERVED_REGION_NAMES:
            raise ConfigError(
                f"[[region]] name {self.name!r} is a topic the daemon uses itself (<prefix>/<device>/{self.name}); "
                f"rename it, e.g. `{self.name}_area`"
            )
        where = f"[[region]] {self.name}: roi"
        x0, y0, x1, y1 = self.roi
        for i, v in enumerate(self.roi):
            check_range(f"{where}[{i}]", v, 0, 65535, "frame pixels")
        if x1 <= x0 or y1 <= y0:
            raise ConfigError(f"{where} {list(self.roi)} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")


def check_regions(regions: list[RegionConfig]) -> None:
    if len(regions) > MAX_REGIONS:
        raise ConfigError(f"{len(regions)} [[region]] tables; at most {MAX_REGIONS} (each one is an invoke a frame)")
    seen: set[str] = set()
    for r in regions:
        if r.name in seen:
            raise ConfigError(f"[[region]] name {r.name!r} is used twice; give each region its own name")
        seen.add(r.name)


# -- the registries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceKind:
    """One `[source] type`. `factory` names a callable (table) -> FrameSource; `from_text` reads what a
    user types after `run --source` (None: not this kind); `with_flags` applies `--loop`/`--fast`;
    `doctor` names the probe `edge-resnet doctor` runs for it."""

    config: type[SourceCommon]
    factory: str
    describe: Callable[[Any], str]
    from_text: Callable[[str, bool, bool], SourceCommon | None] | None = None
    with_flags: Callable[[Any, bool, bool], SourceCommon] | None = None
    doctor: str | None = None  # "module:callable(table or None, timeout) -> list[Check]"; None: path check


@dataclass(frozen=True)
class Flag:
    """A `run` flag that sets a sink's table: `apply(table or None, value)` returns the new table."""

    option: str
    help: str
    apply: Callable[[Any, Any], Any]
    metavar: str | None = None  # None: a switch (store_true)

    @property
    def dest(self) -> str:
        """The argparse attribute: `--mqtt` -> `mqtt`."""
        return self.option.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class SinkKind:
    """One sink table. `factory` names a callable (table, sinks.base.SinkContext) -> Sink."""

    config: type[Any]
    factory: str
    describe: Callable[[Any], str]
    flag: Flag | None = None


def _camera_text(t: str, loop: bool, fast: bool) -> SourceCommon | None:
    if t.isdigit():
        return OpenCvSource(device=int(t))
    return OpenCvSource(device=t) if t.startswith("/dev/") else None


def _path_text(kind: str) -> Callable[[str, bool, bool], SourceCommon | None]:
    def parse(t: str, loop: bool, fast: bool) -> SourceCommon | None:
        p = Path(t).expanduser()
        if kind == "folder" and p.is_dir():
            return FolderSource(path=str(p), loop=loop, interval_s=0.0 if fast else 1.0)
        if kind == "file" and p.is_file():
            return FileSource(path=str(p), loop=loop, realtime=not fast)
        return None

    return parse


def _file_flags(s: FileSource, loop: bool, fast: bool) -> SourceCommon:
    return dataclasses.replace(s, loop=s.loop or loop, realtime=s.realtime and not fast)


def _folder_flags(s: FolderSource, loop: bool, fast: bool) -> SourceCommon:
    return dataclasses.replace(s, loop=s.loop or loop, interval_s=0.0 if fast else s.interval_s)


# Order matters for `--source TEXT`: the first kind whose from_text accepts the text wins.
SOURCES: dict[str, SourceKind] = {
    "opencv": SourceKind(
        OpenCvSource,
        "edge_resnet.sources.opencv:OpenCvFrames.from_config",
        lambda s: f"camera {s.device}",
        _camera_text,
        doctor="edge_resnet.doctor:probe_opencv_source",
    ),
    "picamera2": SourceKind(
        Picamera2Source,
        "edge_resnet.sources.picamera2:Picamera2Frames",
        lambda s: f"picamera2 camera {s.camera} (lores {s.lores_size[0]}x{s.lores_size[1]})",
        lambda t, loop, fast: Picamera2Source() if t.lower() == "picamera2" else None,
        doctor="edge_resnet.doctor_picamera2:probe_picamera2_source",
    ),
    "url": SourceKind(
        UrlSource,
        "edge_resnet.sources.opencv:OpenCvFrames.from_config",
        lambda s: f"stream {s.url}",
        lambda t, loop, fast: UrlSource(url=t) if re.match(r"^(rtsps?|https?)://", t, re.IGNORECASE) else None,
    ),
    "gstreamer": SourceKind(
        GstreamerSource,
        "edge_resnet.sources.opencv:OpenCvFrames.from_config",
        lambda s: f"gstreamer {s.pipeline}",
        lambda t, loop, fast: GstreamerSource(pipeline=t) if " ! " in t and "appsink" in t else None,
    ),
    "folder": SourceKind(
        FolderSource,
        "edge_resnet.sources.folder:FolderFrames.from_config",
        lambda s: f"image folder {s.path}",
        _path_text("folder"),
        _folder_flags,
    ),
    "file": SourceKind(
        FileSource,
        "edge_resnet.sources.opencv:OpenCvFrames.from_config",
        lambda s: f"video file {s.path}{' (loop)' if s.loop else ''}{'' if s.realtime else ' (fast)'}",
        _path_text("file"),
        _file_flags,
    ),
}

SINKS: dict[str, SinkKind] = {
    "mqtt": SinkKind(
        MqttConfig,
        "edge_resnet.sinks.mqtt:make_sink",
        lambda c: f"mqtt {', '.join(c.urls)}",
        Flag(
            "--mqtt",
            "publish to this broker: mqtt://HOST[:PORT] or mqtts://...",
            lambda c, v: _set(c, MqttConfig, url=v),
            "URL",
        ),
    ),
    "http": SinkKind(
        HttpConfig,
        "edge_resnet.sinks.http:make_sink",
        lambda c: f"http {c.listen}",
        Flag(
            "--http",
            "serve the live overlay, /metrics and /healthz here",
            lambda c, v: _set(c, HttpConfig, listen=v),
            "HOST:PORT",
        ),
    ),
    "video": SinkKind(
        VideoConfig,
        "edge_resnet.sinks.video:make_sink",
        lambda c: f"video {c.path}",
        Flag(
            "--video",
            "write an annotated video file (.avi, .mp4, .mkv)",
            lambda c, v: _set(c, VideoConfig, path=v),
            "FILE",
        ),
    ),
    "stdout": SinkKind(
        StdoutConfig,
        "edge_resnet.sinks.stdout:make_sink",
        lambda c: "stdout",
        Flag(
            "--stdout", "also print JSON lines when other sinks are configured", lambda c, v: StdoutConfig(enabled=True)
        ),
    ),
}


def _set(table: Any, cls: type[Any], **changes: Any) -> Any:
    """A flag's value on top of the configured table, or a new table with defaults."""
    return dataclasses.replace(table, **changes) if table is not None else cls(**changes)


def resolve(ref: str) -> Callable[..., Any]:
    """A registry factory ("package.module:Name.attr"), imported only now."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


# -- top level -------------------------------------------------------------------------------------


@dataclass
class Config:
    device_id: str = "edge-resnet"
    state_dir: str = field(default_factory=default_state_dir)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceCommon = field(default_factory=OpenCvSource)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sinks: dict[str, Any] = field(default_factory=dict)  # table name (a SINKS key) -> its config
    regions: list[RegionConfig] = field(default_factory=list)  # [[region]]: none = the whole frame (or roi)
    trust: TrustConfig = field(default_factory=TrustConfig)  # [trust]: which signed models may run
    fleet: FleetConfig = field(default_factory=FleetConfig)  # [fleet]: install jobs over MQTT

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        check_regions(self.regions)
        unknown = [name for name in self.sinks if name not in SINKS]
        if unknown:
            known = f"known: {', '.join(SINKS)}"
            raise ConfigError(f"unknown sink table [{unknown[0]}]; {hint(unknown[0], SINKS, known)}")

    @property
    def mqtt(self) -> MqttConfig | None:
        return self.sinks.get("mqtt")

    @property
    def http(self) -> HttpConfig | None:
        return self.sinks.get("http")

    @property
    def video(self) -> VideoConfig | None:
        return self.sinks.get("video")

    @property
    def stdout(self) -> StdoutConfig | None:
        return self.sinks.get("stdout")

    def stdout_enabled(self) -> bool:
        """stdout is on when asked for, or when nothing else would show the results."""
        if self.stdout is not None:
            return self.stdout.enabled
        return all(name == "stdout" for name in self.sinks)

    def active_sinks(self) -> dict[str, Any]:
        """The tables of the sinks that run, in registry order (stdout with its defaults when implied)."""
        out = {name: self.sinks[name] for name in SINKS if name in self.sinks and name != "stdout"}
        if self.stdout_enabled():
            out["stdout"] = self.stdout or StdoutConfig()
        return out


def check_device_id(device_id: str) -> None:
    """The one device_id check (config check, run, flags and the MQTT sink all use it)."""
    if not DEVICE_ID.fullmatch(device_id):
        raise ConfigError(
            f"device_id: {device_id!r} is not usable in MQTT topics; use 1..64 ASCII letters, digits, '-' or '_'"
        )


_SCALARS = ("device_id", "state_dir", "log_level")


def _source(data: Any, errors: ErrorCollector) -> SourceCommon | None:
    """The `[source]` table of its `type` (opencv when it has none)."""
    if not isinstance(data, dict):
        errors.add(f"[source] must be a table, got {type(data).__name__}")
        return None
    kind = data.get("type", "opencv")
    entry = SOURCES.get(kind) if isinstance(kind, str) else None
    if entry is None:
        known = f"use one of {', '.join(SOURCES)}"
        errors.add(f"[source] type: {kind!r} is unknown; {hint(kind, SOURCES, known)}")
        return None
    built: SourceCommon | None = build_table(entry.config, {**data, "type": kind}, "source", errors)
    return built


def _regions(data: Any, errors: ErrorCollector) -> list[RegionConfig]:
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        errors.add("region must be an array of tables: write each one as [[region]] with name and roi")
        return []
    built = [build_table(RegionConfig, r, "[region]", errors) for r in data]
    return [r for r in built if r is not None]


def collect_config(data: dict[str, Any], errors: ErrorCollector) -> Config | None:
    """A Config from parsed TOML, tables in the file's order, every problem put in `errors`; a bad key
    or table falls back to its default so that the rest is still checked, then the checks across
    tables (device_id, regions). None when the whole cannot be built."""
    tables: dict[str, type[Any]] = {
        "model": ModelConfig,
        "pipeline": PipelineConfig,
        "trust": TrustConfig,
        "fleet": FleetConfig,
    }
    top = sorted({*_SCALARS, "source", "region", *tables, *SINKS})
    kw: dict[str, Any] = {"sinks": {}}
    for key, value in data.items():
        if key in _SCALARS:
            scalar = build_table(_Scalars, {key: value}, "", errors)
            if scalar is not None:
                kw[key] = getattr(scalar, key)
        elif key == "source":
            kw[key] = _source(value, errors)
        elif key == "region":
            kw["regions"] = _regions(value, errors)
        elif key in tables or key in SINKS:
            built = build_table(tables[key] if key in tables else SINKS[key].config, value, key, errors)
            (kw if key in tables else kw["sinks"])[key] = built
        else:
            known = f"known keys and tables: {', '.join(top)}"
            errors.add(f"unknown top-level key {key!r}; {hint(key, top, known)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    kw["sinks"] = {name: table for name, table in kw["sinks"].items() if table is not None}
    return construct(Config, kw, "", errors)


def config_from_dict(data: dict[str, Any]) -> Config:
    """A Config from parsed TOML, or one ConfigError naming the first problem and carrying all of them."""
    errors = ErrorCollector()
    cfg = collect_config(data, errors)
    errors.raise_any()
    assert cfg is not None  # nothing was wrong, so it built
    return cfg


@dataclass
class _Scalars:
    device_id: str = ""
    state_dir: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file: every problem found, each line naming the file (a
    ConfigErrors, whose message is the first and `errors` all of them)."""
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
    errors = ErrorCollector()
    cfg = collect_config(data, errors)
    if cfg is not None and not errors.errors:
        try:
            return validate(cfg)
        except ConfigError as e:
            errors.add(str(e))
    raise ConfigErrors([f"{p}: {_with_hint(e)}" for e in errors.errors])


def validate(cfg: Config) -> Config:
    """The one validation path: `config check` (through load) and `run` (after its flags) both end
    here, so a value `config check` accepts cannot fail at `run`. Rebuilding each table re-runs its
    checks on the final, merged values."""
    tables: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            tables[f.name] = dataclasses.replace(value)
    sinks = {name: dataclasses.replace(table) for name, table in cfg.sinks.items()}
    regions = [dataclasses.replace(r) for r in cfg.regions]
    return dataclasses.replace(cfg, **tables, sinks=sinks, regions=regions)


def _with_hint(msg: str) -> str:
    """A quoted number where a number belongs is the most common TOML slip: say how to write it."""
    quoted = msg.rpartition(", got ")[2].strip("'")
    if ("expected an integer, got '" in msg or "expected a number, got '" in msg) and msg.endswith("'"):
        return msg + " (write the number without quotes)" if _numeric(quoted) else msg
    if "expected true or false, got '" in msg:
        return msg + " (write true or false without quotes)"
    return msg


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def summary(cfg: Config) -> str:
    """A few human lines: what `config check` prints after OK."""
    src = cfg.source
    where = SOURCES[src.type].describe(src)
    sinks = [SINKS[name].describe(table) for name, table in cfg.active_sinks().items()]
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
            *[
                f"region:    {r.name} {list(r.roi)}" + (f", model {r.model}" if r.model else "")
                for r in cfg.regions
            ],
        ]
    )
