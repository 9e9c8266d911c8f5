"""OpenCV sources: V4L2 cameras (index, /dev/videoN, /dev/v4l/by-id), video files, RTSP/HTTP
streams and GStreamer pipelines. Frames come out BGR, as OpenCV delivers them."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from ..capture import EndOfStream, open_error
from ..errors import DependencyError, HardwareError, InputError

if TYPE_CHECKING:
    from ..sourceconfig import SourceConfig

log = logging.getLogger(__name__)

Kind = Literal["camera", "file", "url", "gstreamer"]

if not logging.getLogger().isEnabledFor(logging.DEBUG):  # OpenCV's own warnings repeat on every retry
    with contextlib.suppress(AttributeError):
        cv2.setLogLevel(0)  # 0 = silent


def has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class OpenCvFrames:
    """A cv2.VideoCapture behind the FrameSource protocol."""

    def __init__(
        self,
        target: int | str,
        kind: Kind,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        realtime: bool = True,
        loop: bool = False,
        timeout_s: float = 5.0,
        rtsp_transport: str = "tcp",
    ) -> None:
        self.target = target
        self.kind = kind
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.realtime = realtime
        self.loop = loop
        self.timeout_s = timeout_s
        self.rtsp_transport = rtsp_transport
        self._cap: Any = None
        self._undecodable: tuple[int, int] | None = None  # (mtime, size) of a file FFmpeg could not open
        self._t0 = 0.0
        self._n = 0
        self._period = 0.0
        if kind == "gstreamer" and not has_gstreamer():
            raise DependencyError(
                "this OpenCV build has no GStreamer support; use the distribution's python3-opencv "
                "(built with GStreamer) or a [source] of type opencv/url instead"
            )
        if kind == "file" and not Path(str(target)).is_file():
            raise InputError(f"video file {target} does not exist; pass the path of a video file")
        self.description = {
            "camera": f"camera {target}",
            "file": f"video file {target}",
            "url": f"stream {_redact(str(target))}",
            "gstreamer": "gstreamer pipeline",
        }[kind]

    @property
    def live(self) -> bool:
        """A file read as fast as it decodes is not live: the capture thread reads its next frame
        only when the pipeline is ready for it (every frame classified, none decoded in vain). A
        file played at its own frame rate stands in for a camera and keeps latest-frame semantics."""
        return not (self.kind == "file" and not self.realtime)

    @classmethod
    def from_config(cls, cfg: SourceConfig) -> OpenCvFrames:
        if cfg.type == "opencv":
            return cls(cfg.device, "camera", width=cfg.width, height=cfg.height, fps=cfg.fps, fourcc=cfg.fourcc)
        if cfg.type == "file":
            return cls(cfg.path, "file", realtime=cfg.realtime, loop=cfg.loop)
        if cfg.type == "url":
            return cls(cfg.url, "url", timeout_s=cfg.timeout_s, rtsp_transport=cfg.rtsp_transport)
        if cfg.type == "gstreamer":
            return cls(cfg.pipeline, "gstreamer")
        raise ValueError(f"not an OpenCV source: {cfg.type}")

    # -- FrameSource ---------------------------------------------------------------------------
    def open(self) -> None:
        self.close()
        cap = self._open_capture()
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise self._not_opened()
        self._cap = cap
        if self.kind == "camera":
            self._configure_camera(cap)
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._period = 1.0 / native if self.kind == "file" and self.realtime and 0 < native < 1000 else 0.0
        if self.kind == "file" and self.realtime and self._period == 0.0:
            self._period = 1.0 / 25.0
            log.warning("%s does not state its frame rate; playing it at 25 fps", self.description)
        self._t0 = time.monotonic()
        self._n = 0

    def read(self) -> npt.NDArray[np.uint8] | None:
        if self._cap is None:
            raise OSError(f"{self.description} is not open")
        if self._period:
            due = self._t0 + self._n * self._period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 1.0))
            elif delay < -1.0:  # fell far behind (machine suspended): do not race to catch up
                self._t0, self._n = time.monotonic(), 0
        ok, frame = self._cap.read()
        self._n += 1
        if not ok or frame is None:
            if self.kind == "file":
                if self.loop:
                    self.open()  # reopen rather than seek: a file that was replaced or removed shows up here
                    return self.read()
                raise EndOfStream(self.description)
            if self.kind == "url":
                raise OSError(f"no frame within {self.timeout_s:g} s: the stream stalled or closed")
            raise OSError("no frame: the device stopped streaming (unplugged?)")
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        if self._cap is not None:
            cap, self._cap = self._cap, None
            cap.release()

    # -- helpers ---------------------------------------------------------------------------------
    def _open_capture(self) -> Any:
        if self.kind == "camera":
            dev = self.target
            if isinstance(dev, str):
                if not os.path.exists(dev):
                    raise open_error(
                        f"camera {dev}",
                        "it does not exist (unplugged?); list cameras with `v4l2-ctl --list-devices` "
                        "and prefer the stable /dev/v4l/by-id/... path",
                    )
                dev = os.path.realpath(dev)  # by-id symlinks follow the camera across re-enumeration
            elif platform.system() == "Linux" and not os.path.exists(f"/dev/video{dev}"):
                raise open_error(
                    f"camera index {dev}",
                    f"/dev/video{dev} does not exist (no camera attached?); list cameras with "
                    "`v4l2-ctl --list-devices` or use another index",
                )
            api = cv2.CAP_V4L2 if platform.system() == "Linux" else cv2.CAP_ANY
            return cv2.VideoCapture(dev, api)
        if self.kind == "file":
            path = Path(str(self.target))
            if not path.is_file():
                raise open_error(f"video file {self.target}", "it does not exist (any more); check the path")
            st = path.stat()
            if st.st_size == 0:  # no FFmpeg call (and no FFmpeg noise on stderr) for an empty file
                raise open_error(self.description, "it is empty (0 bytes; still being copied?); it is tried again")
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._undecodable:  # FFmpeg said no to this very file already: ask again once it changes
                raise self._not_opened()
            cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG)
            self._undecodable = None if cap.isOpened() else stamp
            return cap
        if self.kind == "url":
            if str(self.target).startswith("rtsp"):
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.rtsp_transport}"
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            return cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(str(self.target), cv2.CAP_GSTREAMER)

    def _not_opened(self) -> HardwareError:
        if self.kind == "camera":
            return open_error(
                self.description,
                "the device exists but does not stream (busy in another program, or not a capture "
                "node: try the other /dev/videoN of the same camera)",
            )
        if self.kind == "file":
            return open_error(self.description, "OpenCV cannot decode it; convert it to MJPG .avi or H.264 .mp4")
        if self.kind == "url":
            return open_error(self.description, "check the URL, the network and that the stream is up")
        return open_error(self.description, "check the pipeline with gst-launch-1.0 and that it ends in appsink")

    def _configure_camera(self, cap: Any) -> None:
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver should not queue stale frames either
        got = (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            float(cap.get(cv2.CAP_PROP_FPS)),
        )
        if self.width and (got[0], got[1]) != (self.width, self.height):
            log.warning(
                "%s gives %dx%d, not the requested %dx%d", self.description, got[0], got[1], self.width, self.height
            )
        log.info("%s open: %dx%d at %.1f fps", self.description, *got)


def _redact(url: str) -> str:
    """rtsp://user:pass@host/... -> rtsp://***@host/... for logs and status."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
