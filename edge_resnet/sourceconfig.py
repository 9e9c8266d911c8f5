"""The `[source]` tables, one dataclass per `type`: pure (no camera or OpenCV import), so loading a
config never opens anything. The registry that maps a `type` to its table and factory is
`config.SOURCES`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .configtools import check_range
from .errors import ConfigError

# -- [source] -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SourceCommon:
    """Keys every source has: the camera watchdog and what to do when the source cannot be opened.
    Every source's table subclasses it and narrows `type` to its registry key."""

    type: str
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
    """A Raspberry Pi camera through picamera2; the daemon classifies the small `lores` stream, or with
    mode = "imx500" reads the AI Camera's on-sensor network outputs with each frame."""

    type: Literal["picamera2"] = "picamera2"
    camera: int = 0
    main_size: tuple[int, int] = (1280, 720)
    lores_size: tuple[int, int] = (320, 240)
    lores_format: Literal["YUV420", "RGB888"] = "YUV420"  # Pi 4 and older support only YUV420 for lores
    use_lores: bool = True
    fps: float | None = None
    # "imx500": the Raspberry Pi AI Camera runs the network on its sensor; each frame arrives with the
    # network's outputs, and [model] path names the <name>_imx500.json that convert wrote
    mode: Literal["camera", "imx500"] = "camera"
    network: str = ""  # mode = "imx500": the network.rpk that `imx500-package` made

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("[source] camera", self.camera, 0, 15, "a camera number such as 0")
        if self.mode == "imx500" and not self.network:
            raise ConfigError('[source] network: mode = "imx500" needs the network file, e.g. '
                              '"/var/lib/edge-resnet/models/network.rpk" (made by imx500-package)')
        if self.network and self.mode != "imx500":
            raise ConfigError('[source] network: only for mode = "imx500" (the Raspberry Pi AI Camera); '
                              "remove it or set the mode")
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
