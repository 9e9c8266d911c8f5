"""End-to-end daemon throughput: the daemon's own capture and pipeline threads on a video file at full
speed, against the raw invoke rate of the same engine measured beside it (same machine load)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..engine import Engine
from ..errors import InputError
from .measure import Progress, quiet


def raw_invoke_fps(engine: Engine, seconds: float = 1.5) -> float:
    """Back-to-back invokes of a zero input on this engine for about `seconds`: invokes per second.
    Taken right beside a daemon run, so the daemon's ratio to it sees the same machine load."""
    x = np.zeros(engine.input.shape, engine.input.dtype)
    engine.invoke(x)  # wakes the thread pool after whatever ran before
    n, t0 = 0, time.perf_counter()
    while (t := time.perf_counter()) - t0 < seconds or n < 3:
        engine.invoke(x)
        n += 1
    return n / (t - t0)


def bench_daemon(
    classifier: Any,
    video: str | os.PathLike[str],
    max_frames: int = 300,
    max_seconds: float = 20.0,
    progress: Progress = quiet,
    *,
    live: bool | None = None,
    raw_seconds: float = 1.5,
) -> dict[str, Any]:
    """The daemon's own capture thread and pipeline thread on a video file read at full speed
    (no real-time pacing, looped, no sinks) until `max_frames` are classified or `max_seconds`
    pass: classified frames/s from the first result on, and frame age (capture -> result handed
    to the sinks) as the pipeline itself measures it. The raw invoke rate of the same engine is
    measured just before and just after (`raw_seconds` each), and the ratio taken to their mean.

    `live=True` forces the old latest-frame capture on the file (decode ahead, drop what the
    pipeline did not take) for before/after comparisons; None keeps the source's own (not live)."""
    from ..capture import Capture
    from ..pipeline import Pipeline
    from ..sources.opencv import OpenCvFrames

    src = OpenCvFrames(str(video), "file", realtime=False, loop=True)
    if live is not None:
        src = _AsLive(src, live)  # type: ignore[assignment]
    raw_before = raw_invoke_fps(classifier.engine, raw_seconds)
    capture = Capture(src, retry=False)
    pipe = Pipeline(capture, classifier, sinks=[])
    capture.start()
    pipe.start()
    try:
        if not pipe.wait_first(timeout=30.0):
            raise InputError(f"no frame classified from {video} within 30 s; check that OpenCV can decode it")
        n0, t0 = pipe.classified, pipe.last_classified_mono or time.monotonic()
        cpu0 = time.process_time()
        deadline = time.monotonic() + max_seconds
        while not pipe.ended and pipe.classified - n0 < max_frames and time.monotonic() < deadline:
            time.sleep(0.02)
        n1, t1 = pipe.classified, pipe.last_classified_mono or time.monotonic()
        cpu = time.process_time() - cpu0
        age50, age99 = pipe.frame_age_ms()
        inv50, _ = pipe.invoke_ms()
        stats = capture.stats()
    finally:
        pipe.stop()
        capture.stop()
    raw_after = raw_invoke_fps(classifier.engine, raw_seconds)
    raw = (raw_before + raw_after) / 2
    frames = n1 - n0
    fps = frames / (t1 - t0) if t1 > t0 else 0.0
    progress(f"end to end: {n1} frames classified, {stats.captured} decoded, {fps:.1f} frames/s")
    return {
        "method": "edge_resnet.pipeline (capture thread + pipeline thread), looped file source, no real-time pacing",
        "video": str(video),
        "capture": "latest-frame" if capture.live else "backpressure",
        "frames_classified": n1,
        "frames_decoded": stats.captured,
        "frames_dropped": stats.dropped,
        "seconds": t1 - t0,
        "fps": fps,
        "frame_age_p50_ms": age50,
        "frame_age_p99_ms": age99,
        "invoke_p50_ms": inv50,  # inside the daemon: shows what decoding beside it costs the interpreter
        "cpu_cores_busy": cpu / (t1 - t0) if t1 > t0 else 0.0,
        "raw_invoke_fps": raw,
        "raw_invoke_fps_before_after": [raw_before, raw_after],
        "fps_over_raw_invoke": fps / raw if raw > 0 else 0.0,
    }


class _AsLive:
    """A source with its `live` overridden (benchmarks compare capture modes on one file)."""

    def __init__(self, src: Any, live: bool) -> None:
        self._src, self.live, self.description = src, live, src.description

    def open(self) -> None:
        self._src.open()

    def read(self) -> Any:
        return self._src.read()

    def close(self) -> None:
        self._src.close()
