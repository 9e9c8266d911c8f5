"""Soak (issue 7, must-show 5): the daemon on a looped video with MQTT and the HTTP overlay for a long run.

    .venv/bin/python bench/soak.py                 # 30 minutes
    .venv/bin/python bench/soak.py --minutes 5

Runs `python -m edge_resnet run` on a looped video of ImageNet photos (one per second, so the label
changes about once a second) against a real mosquitto on 127.0.0.1, with a QoS 1 subscriber on
`events` and `state` and one viewer on /stream.mjpg (so the overlay encodes all the time). Every 10 s
it samples the daemon process: RSS (VmRSS) and threads from /proc/PID/status, open file descriptors
(/proc/PID/fd), frames classified (/metrics) and MQTT events received. Prints a row per sample and:

- RSS growth after the warm-up minute (last sample against the first after warm-up): must be < 5 %;
- file-descriptor growth over the same span: must be 0;
- the publish rate per 10 s interval (events received, frames classified): min / mean / max; steady
  means no interval below half the mean (nor at 0) and none above 1.5x the mean;
- 0 lost events (every seq the daemon wrote arrived), the daemon alive throughout, SIGTERM exit 0.

Exits 1 when a requirement fails. Work files live in a temporary folder, never in the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import (
    Daemon,
    all_delivered,
    confident_photos,
    daemon_args,
    delivery,
    make_video,
    say,
    wait_until,
)

from tests.helpers.broker import Broker, Subscriber, free_port

SAMPLE_S = 10.0
RSS_LIMIT_PCT = 5.0


@dataclass
class Sample:
    t: float  # seconds since the first sample
    rss_kb: int
    threads: int
    fds: int
    classified: float
    events: int  # events received by the subscriber (messages)
    state: int  # state messages received


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in kB, threads) from /proc/PID/status."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Viewer:
    """One client on /stream.mjpg, reading (and counting) JPEG parts until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.parts = 0
        self.errors = 0
        self.why: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Viewer:
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stream.mjpg", timeout=10) as r:
                    while not self._stop.is_set():
                        chunk = r.read(65536)
                        if not chunk:
                            break
                        self.parts += chunk.count(b"--frame")
            except OSError as e:
                if self._stop.is_set():
                    return
                self.errors += 1
                self.why.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(12)


def rates(values: list[float]) -> tuple[float, float, float]:
    return (min(values), statistics.fmean(values), max(values)) if values else (0.0, 0.0, 0.0)


def steady(values: list[float]) -> bool:
    if not values:
        return False
    mean = statistics.fmean(values)
    return mean > 0 and min(values) >= 0.5 * mean and max(values) <= 1.5 * mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the soak (default 30)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline sample (default 60)")
    ap.add_argument("--no-viewer", action="store_true", help="no /stream.mjpg client")
    ap.add_argument("--json", type=Path, help="also write the samples and figures here")
    args = ap.parse_args(argv)
    total_s = args.minutes * 60.0
    if total_s <= args.warmup + 2 * SAMPLE_S:
        ap.error(f"--minutes must leave at least two samples after the {args.warmup:.0f} s warm-up")

    work = Path(tempfile.mkdtemp(prefix="edge-resnet-soak-"))
    say(f"soak: {args.minutes:g} min, warm-up {args.warmup:.0f} s, sample every {SAMPLE_S:.0f} s; work folder {work}")
    photos = confident_photos()
    video = make_video(work / "photos.avi", photos, seconds_each=1.0)
    dev = "soak"
    topic = f"edge-resnet/{dev}/events"
    state_topic = f"edge-resnet/{dev}/state"
    broker = Broker(work / "broker").start()
    sub = Subscriber(broker.port, [topic, state_topic]).start()
    port = free_port()
    d = Daemon(
        daemon_args(video, device_id=dev, mqtt=broker.url, http_port=port), work / "state", work / "daemon.log", port
    )
    viewer: Viewer | None = None
    samples: list[Sample] = []
    failures: list[str] = []
    rc: int | None = None
    try:
        if not wait_until(lambda: d.healthz()[0] == 200, 120, 0.5):
            print(f"daemon did not become healthy:\n{d.tail()}")
            return 1
        if not args.no_viewer:
            viewer = Viewer(port).start()
        t0 = time.monotonic()
        print(f"{'t_s':>6} {'rss_MB':>8} {'thr':>4} {'fds':>4} {'fps':>6} {'events':>6} {'state':>5}")
        while True:
            due = t0 + len(samples) * SAMPLE_S
            time.sleep(max(0.0, due - time.monotonic()))
            if not d.alive:
                failures.append(f"the daemon exited ({d.p.poll()}) after {time.monotonic() - t0:.0f} s")
                break
            rss, thr = proc_status(d.pid)
            fds = open_fds(d.pid)  # before our own /metrics request, whose socket is not the daemon's leak
            classified = d.metrics().get("frames_classified_total", float("nan"))
            s = Sample(
                round(time.monotonic() - t0, 1), rss, thr, fds, classified, len(sub.on(topic)), len(sub.on(state_topic))
            )
            prev = samples[-1] if samples else None
            samples.append(s)
            fps = (s.classified - prev.classified) / (s.t - prev.t) if prev and s.t > prev.t else 0.0
            ev = s.events - prev.events if prev else 0
            st = s.state - prev.state if prev else 0
            print(f"{s.t:6.0f} {rss / 1024:8.1f} {thr:4d} {fds:4d} {fps:6.2f} {ev:6d} {st:5d}", flush=True)
            if s.t >= total_s:
                break
        drained = wait_until(lambda: all_delivered(sub, topic, work / "state"), 30, 0.2)
        if viewer is not None:
            viewer.stop()  # before the daemon goes: its end of the stream is not a viewer error
        rc, took = d.terminate()
        time.sleep(1.0)
        dv = delivery(sub, topic, work / "state")
    finally:
        if viewer is not None:
            viewer.stop()
        d.close()
        with contextlib.suppress(Exception):
            sub.stop()
        broker.stop()

    post = [s for s in samples if s.t >= args.warmup]
    if len(post) < 2:
        print("not enough samples after the warm-up")
        return 1
    base, last = post[0], post[-1]
    rss_growth = 100.0 * (last.rss_kb - base.rss_kb) / base.rss_kb
    rss_peak = 100.0 * (max(s.rss_kb for s in post) - base.rss_kb) / base.rss_kb
    fd_growth = last.fds - base.fds
    fd_max = max(s.fds for s in post) - base.fds
    thr_growth = last.threads - base.threads
    pairs = list(itertools.pairwise(post))
    ev_rate = [float(b.events - a.events) for a, b in pairs]
    fps_rate = [(b.classified - a.classified) / (b.t - a.t) for a, b in pairs]
    st_rate = [float(b.state - a.state) for a, b in pairs]
    e_min, e_mean, e_max = rates(ev_rate)
    f_min, f_mean, f_max = rates(fps_rate)
    s_min, s_mean, s_max = rates(st_rate)

    print()
    print("=" * 100)
    print(
        f"SOAK {args.minutes:g} min ({samples[-1].t:.0f} s sampled, baseline at {base.t:.0f} s after "
        f"{args.warmup:.0f} s warm-up, {len(post)} samples after it)"
    )
    print(
        f"RSS: {base.rss_kb / 1024:.1f} MB -> {last.rss_kb / 1024:.1f} MB = {rss_growth:+.2f} % "
        f"(peak {rss_peak:+.2f} %; limit < {RSS_LIMIT_PCT:.0f} %)"
    )
    print(
        f"open fds: {base.fds} -> {last.fds} = {fd_growth:+d} (max {fd_max:+d} over baseline); "
        f"threads {base.threads} -> {last.threads} ({thr_growth:+d})"
    )
    print(f"events per {SAMPLE_S:.0f} s: min {e_min:.0f} / mean {e_mean:.1f} / max {e_max:.0f}")
    print(f"frames classified per s: min {f_min:.2f} / mean {f_mean:.2f} / max {f_max:.2f}")
    print(f"state messages per {SAMPLE_S:.0f} s: min {s_min:.0f} / mean {s_mean:.1f} / max {s_max:.0f}")
    if viewer is not None:
        print(f"/stream.mjpg viewer: {viewer.parts} JPEG parts, {viewer.errors} reconnects {viewer.why[:3]}")
    print(f"events: {dv.line()}")
    print(f"SIGTERM: exit {rc} in {took:.2f} s")

    checks = [
        (f"RSS growth < {RSS_LIMIT_PCT:.0f} %", rss_growth < RSS_LIMIT_PCT, f"{rss_growth:+.2f} %"),
        ("no fd growth", fd_growth <= 0, f"{fd_growth:+d}"),
        ("steady event rate", steady(ev_rate) and e_min > 0, f"{e_min:.0f}/{e_mean:.1f}/{e_max:.0f}"),
        ("steady classification rate", steady(fps_rate), f"{f_min:.2f}/{f_mean:.2f}/{f_max:.2f}"),
        ("0 lost events", not dv.lost and drained, f"{len(dv.lost)} lost"),
        ("daemon up all along, SIGTERM exit 0", not failures and rc == 0, "; ".join(failures) or f"exit {rc}"),
    ]
    for what, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {detail}")
    print("=" * 100)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "minutes": args.minutes,
                    "samples": [s.__dict__ for s in samples],
                    "rss_growth_pct": rss_growth,
                    "fd_growth": fd_growth,
                    "events_per_interval": [e_min, e_mean, e_max],
                    "fps": [f_min, f_mean, f_max],
                    "checks": [{"what": w, "ok": o, "detail": x} for w, o, x in checks],
                },
                indent=2,
            )
        )
    ok = all(c[1] for c in checks)
    if ok:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
