"""Daemon throughput on a file at full speed against the raw invoke rate: capture modes and CPU levers.

    .venv/bin/python bench/daemon_backpressure.py VIDEO MODEL.tflite [MODEL2.tflite ...] \
        [--threads 1,2] [--seconds 5] [--repeats 2] [--variants before,after,...]

Everything runs the daemon's own code (`edge_resnet.bench.daemon.bench_daemon`: Capture + Pipeline on a
looped file read as fast as it decodes, no sinks). Variants:

- before:       latest-frame capture forced on the file (decode ahead, drop what the pipeline missed)
- after:        the daemon's behaviour now: the file is not live, capture waits for the pipeline
                and reads the next frame while the current one is classified (read-ahead)
  (reading only once the pipeline asks, so decoding never overlaps inference, was measured at
  commit eb66ccb7 as variant no-ahead: no better for ResNets, 0.53-0.68 vs 0.65-0.99 for MobileNet v2)
- cv1:          as after, with cv2.setNumThreads(1) (OpenCV's own pool off in resize/cvtColor)

For each model and thread count the variants run back to back in one process, in an order that
rotates every repeat; each daemon run measures the raw invoke rate of the same engine just before
and after it, so every ratio is taken under the machine load of its own run. Before the daemon
runs, each model's stage costs are printed: decode, preprocess and invoke ms per frame, and whether
invoke() lets another Python thread run (the GIL).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.bench.daemon import bench_daemon
from edge_resnet.classify import Classifier
from edge_resnet.engine import Engine

VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"live": True, "cv_threads": None},
    "after": {"live": None, "cv_threads": None},
    "cv1": {"live": None, "cv_threads": 1},
}


def _median_ms(fn: Any, n: int) -> float:
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t)


def stage_costs(video: Path, clf: Classifier, engines: dict[int, Engine]) -> str:
    """Decode, preprocess and invoke ms per frame, each on its own (no other work running)."""
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames: list[Any] = []

    def decode() -> None:
        ok, f = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, f = cap.read()
        frames.append(f)

    dec = _median_ms(decode, 60)
    threads = cap.get(cv2.CAP_PROP_N_THREADS)
    cap.release()
    prep = _median_ms(lambda: clf.prepare(frames[len(frames) // 2]), 60)
    inv = {t: _median_ms(lambda e=e: e.invoke(np.zeros(e.input.shape, e.input.dtype)), 15) for t, e in engines.items()}
    return (
        f"decode {dec:.2f} ms/frame (FFmpeg decoder threads: {threads:g}), preprocess {prep:.2f} ms/frame, "
        + ", ".join(f"invoke @{t}T {ms:.2f} ms" for t, ms in inv.items())
    )


def longest_stall(work: Any, calls: int) -> tuple[float, float]:
    """A pure-Python thread notes the time on every loop while the main thread calls `work`: the
    longest gap in its progress is ~ one call's time when `work` holds the GIL, and a few ms
    (scheduling, the 5 ms switch interval) when it releases it. Returns (longest gap, ms per call)."""
    stop, gap = threading.Event(), [0.0]

    def spin() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            gap[0] = max(gap[0], now - last)
            last = now

    th = threading.Thread(target=spin)
    th.start()
    time.sleep(0.05)
    gap[0] = 0.0
    t0 = time.perf_counter()
    for _ in range(calls):
        work()
    ms = (time.perf_counter() - t0) / calls * 1000
    stop.set()
    th.join()
    return gap[0] * 1000, ms


def gil_check(engine: Engine) -> str:
    """invoke() beside a reference C call that holds the GIL (sum over a range) of similar length."""
    x = np.zeros(engine.input.shape, engine.input.dtype)
    gap, ms = longest_stall(lambda: engine.invoke(x), 10)
    n = int(ms * 60_000)  # ~ms of pure C work under the GIL (about 60 k additions per ms)
    ref_gap, ref_ms = longest_stall(lambda: sum(range(n)), 5)
    return (
        f"a Python thread's longest stall: {gap:.1f} ms during invoke() ({ms:.1f} ms each); "
        f"{ref_gap:.1f} ms during a GIL-holding C call ({ref_ms:.1f} ms each)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", type=Path)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=5.0, help="daemon run length per cell")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    threads = [int(v) for v in args.threads.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    cv_default = cv2.getNumThreads()
    print(f"cv2 {cv2.__version__} with {cv_default} threads by default; {len(variants)} variants interleaved\n")
    rows: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for model in args.models:
        engines = {t: Engine.load(model, threads=t) for t in threads}
        clf = {t: Classifier(e) for t, e in engines.items()}
        print(f"{model.name}: {stage_costs(args.video, clf[threads[0]], engines)}")
        for t, e in engines.items():
            print(f"  GIL @{t}T: {gil_check(e)}")
        for rep in range(args.repeats):
            for t in threads:
                shift = (rep + t) % len(variants)
                for name in variants[shift:] + variants[:shift]:
                    v = VARIANTS[name]
                    cv2.setNumThreads(v["cv_threads"] if v["cv_threads"] is not None else cv_default)
                    try:
                        r = bench_daemon(clf[t], args.video, 10**6, args.seconds, live=v["live"])
                    finally:
                        cv2.setNumThreads(cv_default)
                    rows.setdefault((model.name, t, name), []).append(r)
                    print(
                        f"  @{t}T {name:9s}: {r['fps']:6.1f} frames/s = {r['fps_over_raw_invoke']:.2f} x raw "
                        f"{r['raw_invoke_fps']:6.1f}/s | invoke in daemon {r['invoke_p50_ms']:6.2f} ms | "
                        f"decoded {r['frames_decoded']}, dropped {r['frames_dropped']} | "
                        f"age p50 {r['frame_age_p50_ms']:5.0f} ms | cores busy {r['cpu_cores_busy']:.2f}",
                        flush=True,
                    )
        print()
    print("median over repeats (ratio = daemon frames/s over raw invokes/s measured beside it):")
    print("| model | threads | variant | raw invoke fps | daemon fps | ratio | invoke ms in daemon | cores busy |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for (m, t, name), rs in rows.items():
        med = {
            k: statistics.median(r[k] for r in rs) for k in ("raw_invoke_fps", "fps", "invoke_p50_ms", "cpu_cores_busy")
        }
        ratio = statistics.median(r["fps_over_raw_invoke"] for r in rs)
        print(
            f"| {m} | {t} | {name} | {med['raw_invoke_fps']:.1f} | {med['fps']:.1f} | {ratio:.2f} | "
            f"{med['invoke_p50_ms']:.2f} | {med['cpu_cores_busy']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
