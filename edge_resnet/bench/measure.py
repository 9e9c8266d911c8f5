"""Timing and memory primitives for the benchmarks: interleaved latency measurement, percentiles, RSS.

Noise on a shared machine is the enemy of honest ratios, so contenders are loaded once and measured
*interleaved*: every round gives each (backend, threads) a short block of invokes, in an order that
rotates from round to round, and the first invoke of each block is discarded (it pays for thread
pools waking up and for caches another contender evicted). Percentiles then come from all blocks.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Default progress reporter: one line per step on stderr, so stdout stays machine-readable."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class LatencyStats:
    """Latencies in milliseconds; `fps` is 1000 / mean, the rate one thread of callers can sustain."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    fps: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
        mean = float(a.mean())
        return cls(len(a), p50, p90, p99, mean, float(a.min()), float(a.max()), 1000.0 / mean if mean > 0 else 0.0)


@dataclass
class Contender:
    """A runner plus what it cost to get it ready."""

    backend: str  # "tflite", "ort-fp32", "ort-int8"
    threads: int
    run: Callable[[], object]
    load_ms: float
    first_invoke_ms: float
    rss_delta_mb: float
    detail: dict[str, Any] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.backend}@{self.threads}"


def rss_mb() -> float:
    """Current resident set size in MiB (psutil when present, /proc otherwise)."""
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB: VmHWM on Linux (ru_maxrss survives
    exec, so a child would report its parent's peak), ru_maxrss elsewhere (KiB; bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def measure_interleaved(
    contenders: Sequence[Contender],
    runs: int,
    warmup: int,
    block: int = 10,
    progress: Progress = quiet,
) -> None:
    """Give each contender `runs` timed invokes, in rotating interleaved blocks (samples appended)."""
    for c in contenders:
        progress(f"warm-up {c.key} x{warmup}")
        for _ in range(warmup):
            c.run()
    block = max(1, min(block, runs))
    rounds = -(-runs // block)
    for r in range(rounds):
        n = min(block, runs - r * block)
        shift = r % len(contenders)
        order = list(contenders[shift:]) + list(contenders[:shift])
        for c in order:
            c.run()  # discarded: wakes this contender's thread pool after the previous one ran
            for _ in range(n):
                c.samples_ms.append(timed(c.run))
        if r == rounds - 1 or (r + 1) % max(1, rounds // 10) == 0:
            progress(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{c.key} {statistics.median(c.samples_ms):.2f} ms" for c in contenders)
            )
