"""Daemon throughput on a file at full speed: today's latest-frame capture vs capture with backpressure.

    .venv/bin/python bench/daemon_backpressure.py MODEL.tflite VIDEO [--seconds 8] [--repeats 2]

With a file source and no real-time pacing, the capture thread decodes as fast as it can and the
one-slot mailbox drops every frame the pipeline has not taken yet: most decoded frames are thrown
away, and the decoding competes with inference for the cores. The variant here wraps the source so
`read()` waits until the pipeline took the previous frame (no decode-ahead); everything else is the
daemon's own Capture and Pipeline. Runs alternate A, B, A, B; each also measures the raw invoke rate
just before, so the ratio is taken under the same machine load. An experiment for the daemon (it
reads Capture's private slot); nothing depends on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.capture import Capture
from edge_resnet.classify import Classifier
from edge_resnet.engine import Engine
from edge_resnet.pipeline import Pipeline
from edge_resnet.sources.opencv import OpenCvFrames


class Backpressure:
    """A FrameSource whose read() first waits (up to 1 s) until the capture slot is empty."""

    def __init__(self, src: OpenCvFrames) -> None:
        self.src = src
        self.description = src.description
        self.capture: Capture | None = None

    def open(self) -> None:
        self.src.open()

    def close(self) -> None:
        self.src.close()

    def read(self) -> Any:
        t0 = time.monotonic()
        while self.capture is not None and self.capture._slot is not None and time.monotonic() - t0 < 1.0:
            time.sleep(0.0005)
        return self.src.read()


def run(model: Path, video: Path, threads: int, backpressure: bool, seconds: float) -> dict[str, float]:
    engine = Engine.load(model, threads=threads)
    x = np.zeros(engine.input.shape, engine.input.dtype)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3.0:
        engine.invoke(x)
        n += 1
    raw = n / (time.perf_counter() - t0)
    src: Any = OpenCvFrames(str(video), "file", realtime=False, loop=True)
    if backpressure:
        src = Backpressure(src)
    capture = Capture(src, retry=False)
    if backpressure:
        src.capture = capture
    pipe = Pipeline(capture, Classifier(engine), sinks=[])
    capture.start()
    pipe.start()
    try:
        pipe.wait_first(30.0)
        n0, m0 = pipe.classified, pipe.last_classified_mono or time.monotonic()
        time.sleep(seconds)
        n1, m1 = pipe.classified, pipe.last_classified_mono or time.monotonic()
        stats, (age50, _) = capture.stats(), pipe.frame_age_ms()
    finally:
        pipe.stop()
        capture.stop()
    fps = (n1 - n0) / (m1 - m0) if m1 > m0 else 0.0
    return {"fps": fps, "raw": raw, "decoded": stats.captured, "dropped": stats.dropped, "age50": age50}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("video", type=Path)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    for _ in range(args.repeats):
        for t in (int(v) for v in args.threads.split(",")):
            for bp in (False, True):
                r = run(args.model, args.video, t, bp, args.seconds)
                print(
                    f"{t} thread(s), {'backpressure' if bp else 'latest-frame'}: {r['fps']:5.1f} frames/s = "
                    f"{r['fps'] / r['raw']:.2f} x raw invoke ({r['raw']:.1f}/s); decoded {r['decoded']:.0f}, "
                    f"dropped {r['dropped']:.0f}, frame age p50 {r['age50']:.0f} ms",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
