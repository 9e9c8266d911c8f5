"""The capture thread: latest-frame semantics and a camera watchdog, over any `FrameSource`.

One thread owns the source and hands frames over in a one-slot mailbox. A live source (a camera,
a stream, a video file played at its own frame rate) does not wait for us: a frame the pipeline
has not taken yet is overwritten (and counted as dropped), so frames never queue and the pipeline
always classifies the freshest picture. A source that is not live (a video file read as fast as
it decodes, an image folder) waits instead: the next frame is read only once the pipeline took
the previous one, so every frame is classified and no core is spent decoding frames that would be
thrown away. When the source fails to open, stops delivering frames for `watchdog_s`, or errors,
the thread closes it and reopens it with a doubling, capped backoff; `state()` says "camera lost"
meanwhile (logged once per outage), and it recovers by itself. A source that is open but not giving
frames yet for a reason it names (`warming_up()`, see FrameSource) is waited for instead.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .errors import ConfigError, DependencyError, EdgeResnetError, HardwareError
from .observation import Frame

log = logging.getLogger(__name__)


class EndOfStream(Exception):
    """A finite source (a video file or image folder without loop) has no more frames."""


class FrameSource(Protocol):
    """One camera, file, stream or folder. Implementations live in `edge_resnet.sources`.

    A new source is one module plus one registry line: the module holds the FrameSource class and
    a factory taking its `[source]` table; the table (a `sourceconfig.SourceCommon` subclass whose
    `type` is its key) is pure; `config.SOURCES` gets one `SourceKind` naming both (and how
    `run --source TEXT` and `--loop/--fast` map to it). Loading, flags, `config check` and reload
    then pick it up.

    `open` raises an EdgeResnetError with a one-line message when the source is not there;
    `read` returns one BGR uint8 frame, None when no frame came within its own timeout, and
    raises EndOfStream when a finite source is done (OSError/EdgeResnetError mean "reopen me").
    Every call returns within a few seconds; only the capture thread calls them.

    A source may set `live = False` when its frames do not go stale while it waits (files,
    folders): the capture thread then reads the next frame only when the pipeline took the last
    one. Without the attribute a source is live.

    A source may have `warming_up() -> str | None`: while it is alive but cannot give frames yet
    for a reason of its own (the Raspberry Pi AI Camera uploading its network to the sensor, which
    takes minutes the first time), it returns that reason in words, else None. The capture thread
    asks each time `read` returns None; while there is a reason, that time does not count against
    `watchdog_s` (reopening would start the upload again) and the state is WAITING with the reason
    (/healthz, STATUS). The source bounds it (a reason that never ends would hide a dead camera)
    and keeps it cheap (it is asked up to once per frame).
    """

    description: str

    def open(self) -> None: ...

    def read(self) -> npt.NDArray[np.uint8] | None: ...

    def close(self) -> None: ...


class CaptureState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    WAITING = "waiting for the source"  # open and alive, not giving frames yet for a reason it names
    LOST = "camera lost"
    ENDED = "source ended"
    FAILED = "source failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class CaptureStats:
    state: CaptureState
    reason: str
    captured: int  # frames read from the source
    dropped: int  # frames overwritten before the pipeline took them
    reconnects: int  # successful reopens after a loss
    last_frame_age_s: float | None  # since the newest frame was read; None before the first
    fps: float  # frames read per second over the last few seconds


def is_live(source: object) -> bool:
    """A source is live (frames go stale if not read at once) unless it says `live = False`."""
    return bool(getattr(source, "live", True))


class Capture:
    """Runs a FrameSource on its own thread; `get()` hands out the newest frame exactly once.

    A non-live source is read one frame ahead: the next frame is decoded while the pipeline
    classifies the last one, so it is ready when asked for. (Reading only once the pipeline asks
    keeps decoding off the cores during inference, but measured no better for ResNets and 30 %
    worse for MobileNet v2: bench/daemon_backpressure.py.)
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        watchdog_s: float = 5.0,
        retry: bool = True,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.source = source
        self.live = is_live(source)
        # a folder that holds each image for 10 s is not a lost camera after 5 s
        self.watchdog_s = max(watchdog_s, 2.0 * float(getattr(source, "interval_s", 0.0)) + 1.0)
        self.retry = retry
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._taken_mono: float | None = None  # when the pipeline last took a frame
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = CaptureState.STARTING
        self._reason = f"opening {source.description}"
        self._error: EdgeResnetError | None = None
        self._seq = 0
        self._dropped = 0
        self._reconnects = 0
        self._last_mono: float | None = None
        self._recent: list[float] = []  # monotonic times of recent frames, for fps
        self._beat = time.monotonic()  # the capture thread's last sign of life (open attempt, read return)
        self._waiting_since = 0.0  # when the source began to say it is warming up

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("capture already started")
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to stop and join it. A driver stuck in a read is abandoned (daemon thread)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("capture thread did not stop within %.1f s (source read stuck); abandoning it", timeout)
        if self._state not in (CaptureState.ENDED, CaptureState.FAILED):
            self._set_state(CaptureState.STOPPED, "stopped")

    # -- the pipeline side ---------------------------------------------------------------------
    def get(self, timeout: float) -> Frame | None:
        """The newest frame not handed out yet, waiting up to `timeout` s; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._slot is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or self._state in (CaptureState.ENDED, CaptureState.FAILED):
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            self._taken_mono = time.monotonic()
            if not self.live:
                self._cond.notify_all()  # the capture thread waits for the slot to empty
            return frame

    def thread_alive(self, within_s: float = 15.0) -> bool:
        """The capture thread runs and came back from a source call within `within_s` (not stuck in a driver)."""
        t = self._thread
        return t is not None and t.is_alive() and time.monotonic() - self._beat <= within_s

    def state(self) -> CaptureState:
        return self._state

    @property
    def error(self) -> EdgeResnetError | None:
        """Set when the source failed for good (retry = false)."""
        return self._error

    def finished(self) -> bool:
        """True when no frame will ever come again (source ended or failed) and the slot is empty."""
        with self._cond:
            return self._slot is None and self._state in (CaptureState.ENDED, CaptureState.FAILED)

    def stats(self) -> CaptureStats:
        now = time.monotonic()
        with self._cond:
            recent = [t for t in self._recent if now - t <= 5.0]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
            age = now - self._last_mono if self._last_mono is not None else None
            state, reason = self._state, self._reason
            # a non-live source waiting for the pipeline is not lost: count from when it could read
            since = age
            if not self.live and since is not None:
                since = 0.0 if self._slot is not None else min(since, now - (self._taken_mono or now))
            if state is CaptureState.RUNNING and since is not None and since > self.watchdog_s:
                state = CaptureState.LOST
                reason = f"camera lost: no frame for {age:.1f} s from {self.source.description}"
            return CaptureStats(state, reason, self._seq, self._dropped, self._reconnects, age, fps)

    # -- the capture thread --------------------------------------------------------------------
    def _set_state(self, state: CaptureState, reason: str) -> None:
        with self._cond:
            self._state, self._reason = state, reason
            self._cond.notify_all()

    def _put(self, image: npt.NDArray[np.uint8]) -> None:
        mono = time.monotonic()
        frame = Frame(image=image, seq=self._seq, captured_at=time.time(), captured_mono=mono)
        with self._cond:
            if self._slot is not None:
                self._dropped += 1
            self._slot = frame
            self._seq += 1
            self._last_mono = mono
            self._recent.append(mono)
            if len(self._recent) > 256:
                del self._recent[:128]
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        ever_opened = False
        lost_logged = False
        while not self._stop.is_set():
            self._beat = time.monotonic()
            try:
                self.source.open()
            except EdgeResnetError as e:
                if not self.retry or isinstance(e, DependencyError | ConfigError):  # retrying cannot help
                    self._error = e
                    self._set_state(CaptureState.FAILED, str(e))
                    log.debug("source failed for good: %s", e)  # the owner reports `error`
                    return
                self._set_state(CaptureState.LOST, f"camera lost: {e}; retrying in {backoff:.1f} s")
                if not lost_logged:  # one line per outage, not one per retry (SD cards, journald)
                    log.warning("camera lost: %s; retrying with backoff up to %.0f s", e, self.backoff_max_s)
                    lost_logged = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            if ever_opened:
                self._reconnects += 1
                log.info("%s is back", self.source.description)
            ever_opened = True
            self._set_state(CaptureState.RUNNING, "ok")
            outcome = self._read_loop()
            lost_logged = outcome is CaptureState.LOST  # _read_loop logged this outage already
            self._safe_close()
            if outcome is CaptureState.ENDED:
                self._set_state(CaptureState.ENDED, f"{self.source.description} has no more frames")
                log.info("%s ended", self.source.description)
                return
            if outcome is CaptureState.STOPPED:
                return
            backoff = self.backoff_initial_s  # it worked for a while: start the backoff afresh
            if not self._stop.wait(backoff):
                backoff = min(backoff * 2, self.backoff_max_s)

    def _wait_for_pipeline(self) -> bool:
        """Non-live sources: block until the pipeline took the last frame. Wakes every 0.25 s to check
        stop and to show it is alive, so a stalled pipeline never deadlocks this thread. False when
        asked to stop."""
        with self._cond:
            while not self._stop.is_set():
                if self._slot is None:
                    return True
                self._cond.wait(0.25)
                self._beat = time.monotonic()
        return False

    def _read_loop(self) -> CaptureState:
        last_ok = time.monotonic()
        while not self._stop.is_set():
            if not self.live:
                if not self._wait_for_pipeline():
                    break
                last_ok = max(last_ok, self._taken_mono or last_ok)  # waiting for us is not a lost source
            try:
                image = self.source.read()
                self._beat = time.monotonic()
            except EndOfStream:
                return CaptureState.ENDED
            except (OSError, EdgeResnetError, RuntimeError) as e:
                what = str(e) if isinstance(e, EdgeResnetError) else f"{self.source.description} failed ({e})"
                reason = f"camera lost: {what}; reopening"
                log.warning("%s", reason)
                self._set_state(CaptureState.LOST, reason)
                return CaptureState.LOST
            now = time.monotonic()
            if image is None:
                waiting = self._source_waiting()
                if waiting is not None:  # alive and saying why no frame comes: not the watchdog's business
                    last_ok = now
                    self._wait_state(waiting, now)
                    self._stop.wait(0.01)
                    continue
                if self._state is CaptureState.WAITING:  # done waiting: the watchdog counts from here
                    self._set_state(CaptureState.RUNNING, "ok")
                if now - last_ok > self.watchdog_s:
                    reason = (
                        f"camera lost: no frame for {now - last_ok:.1f} s from {self.source.description}; reopening"
                    )
                    log.warning("%s", reason)
                    self._set_state(CaptureState.LOST, reason)
                    return CaptureState.LOST
                self._stop.wait(0.01)
                continue
            last_ok = now
            if self._state is CaptureState.WAITING:
                log.info("%s gives frames after %.0f s of waiting", self.source.description, now - self._waiting_since)
                self._set_state(CaptureState.RUNNING, "ok")
            self._put(image)
        return CaptureState.STOPPED

    def _source_waiting(self) -> str | None:
        """The source's `warming_up()` reason, if it has the method and one."""
        ask = getattr(self.source, "warming_up", None)
        if not callable(ask):
            return None
        try:
            why = ask()
        except Exception as e:  # a source that cannot say is not waiting: the watchdog applies
            log.debug("%s: warming_up() failed: %s", self.source.description, e)
            return None
        return str(why) if why else None

    def _wait_state(self, reason: str, now: float) -> None:
        """WAITING with the source's words (logged once when the wait begins, not at each new figure)."""
        if self._state is not CaptureState.WAITING:
            self._waiting_since = now
            log.info("%s: %s", self.source.description, reason)
        if reason != self._reason or self._state is not CaptureState.WAITING:
            self._set_state(CaptureState.WAITING, reason)

    def _safe_close(self) -> None:
        try:
            self.source.close()
        except Exception as e:  # a driver that fails to close must not kill the thread
            log.debug("closing %s: %s", self.source.description, e)


def open_error(description: str, fix: str) -> HardwareError:
    """The one-line error a source raises when it cannot be opened."""
    return HardwareError(f"cannot open {description}; {fix}")
