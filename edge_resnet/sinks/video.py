"""Optional annotated video file, written on its own thread from a bounded queue."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import cv2

from ..annotate import annotate_observation
from ..observation import Observation
from ..sinkconfig import VideoConfig
from .base import SinkContext

log = logging.getLogger(__name__)


FOURCC = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v"}
QUEUE_MAX = 30  # frames waiting for the writer; when full, new frames are dropped (and counted)


class VideoSink:
    """Writes annotated frames to `cfg.path` at `cfg.fps` (frames arriving faster are skipped).

    Annotation and encoding run on the sink's own thread from a bounded queue; the pipeline thread only
    enqueues. A writer that cannot be opened is reported by `healthy()` and logged once, not fatal.
    """

    name = "video"

    def __init__(self, cfg: VideoConfig) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self._queue: queue.Queue[Observation | None] = queue.Queue(maxsize=QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._next_at = 0.0
        self._fps_est: float | None = None
        self._last_at: float | None = None
        self._error: str | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="video-sink", daemon=True)
        self._thread.start()

    def publish(self, obs: Observation) -> None:
        """Pipeline thread: a time check and a non-blocking put."""
        t = obs.classified_at
        if self._last_at is not None and t > self._last_at:
            inst = 1.0 / (t - self._last_at)
            self._fps_est = inst if self._fps_est is None else 0.9 * self._fps_est + 0.1 * inst
        self._last_at = t
        now = time.monotonic()
        if now < self._next_at:
            return
        period = 1.0 / self.cfg.fps
        # keep the cadence without drifting; after a gap (or at the start) restart it from now
        self._next_at = self._next_at + period if now - self._next_at < period else now + period
        try:
            self._queue.put_nowait(obs)
        except queue.Full:
            self.dropped += 1

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def healthy(self) -> tuple[bool, str]:
        if self._error is not None:
            return True, self._error
        return True, f"video {self.path}: {self.written} frames written, {self.dropped} dropped"

    def counters(self) -> dict[str, float]:
        return {"video_frames_written_total": float(self.written), "video_frames_dropped_total": float(self.dropped)}

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._fail(f"video: cannot create {self.path.parent} ({e.strerror}); check [video] path")
            return None
        fourcc = cv2.VideoWriter.fourcc(*FOURCC[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self.path), fourcc, self.cfg.fps, size)
        if not writer.isOpened():
            self._fail(f"video: OpenCV cannot write {self.path}; check [video] path (try .avi)")
            return None
        log.info("video: writing %s (%dx%d at %.1f fps)", self.path, size[0], size[1], self.cfg.fps)
        return writer

    def _fail(self, msg: str) -> None:
        if self._error != msg:
            log.error("%s", msg)
        self._error = msg

    def _run(self) -> None:
        writer: cv2.VideoWriter | None = None
        size: tuple[int, int] | None = None
        try:
            while True:
                obs = self._queue.get()
                if obs is None:
                    return
                img = annotate_observation(obs, self._fps_est)
                if size is None:
                    size = (img.shape[1] & ~1, img.shape[0] & ~1)  # codecs want even sizes
                    writer = self._open(size)
                if writer is None:
                    continue
                if (img.shape[1], img.shape[0]) != size:  # odd size, or the source changed size
                    writer.write(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
                else:
                    writer.write(img)
                self.written += 1
        except Exception as e:
            self._fail(f"video: writing {self.path} failed ({e}); the video stops, the daemon goes on")
        finally:
            if writer is not None:
                writer.release()


def make_sink(cfg: VideoConfig, ctx: SinkContext) -> VideoSink:
    """The registry's factory for `[video]`."""
    return VideoSink(cfg)
