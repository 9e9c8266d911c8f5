"""Fault injection for MQTT store and forward, through the real daemon and a real mosquitto (issue 7).

A long run is a script that prints figures (must-show 1: 10 broker restarts in 3 minutes):

    .venv/bin/python -m tests.fault_mqtt --minutes 3 --restarts 10

The short versions run in CI from tests/test_e2e_mqtt_faults.py. An event counts as lost only if its
seq was assigned (SQLite's sequence) and it neither reached the subscriber nor is still queued on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge_resnet.classify import Classifier, read_labels
from edge_resnet.engine import Engine
from tests.helpers.broker import Broker, Subscriber
from tests.helpers.video import Sample, pick_samples, write_video

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data"))
FPS = 10.0
SIZE = (320, 240)
DEVICE = "fault"
EVENTS = f"edge-resnet/{DEVICE}/events"


def recognisable(samples_dir: Path, model: Path, labels: Path, tmp: Path, n: int) -> list[Sample]:
    """`n` photos the model recognises as frames of an MJPG test video, so labels change with the photo."""
    import cv2

    candidates = pick_samples(samples_dir, 4 * n, start=3, step=23)
    probe = tmp / "probe.avi"
    write_video(probe, candidates, seconds_each=1 / FPS, fps=FPS, size=SIZE)
    cap = cv2.VideoCapture(str(probe))
    clf = Classifier(Engine.load(model), read_labels(labels))
    out = []
    for s in candidates:
        ok, frame = cap.read()
        if ok and clf.classify(frame, k=1).top.class_index == s.class_index:
            out.append(s)
        if len(out) == n:
            break
    cap.release()
    return out


def label_change_video(tmp: Path, seconds_each: float = 0.6, n: int = 8) -> Path:
    """A video whose label changes every `seconds_each` seconds (looped by the daemon)."""
    model, labels = DATA / "models" / "mobilenet_v2_1.0_224_quant.tflite", DATA / "models" / "imagenet_labels_1001.txt"
    photos = recognisable(DATA / "imagenet-samples", model, labels, tmp, n)
    video = tmp / "changes.avi"
    write_video(video, photos, seconds_each=seconds_each, fps=FPS, size=SIZE)
    return video


class Daemon:
    def __init__(self, broker_url: str, video: Path, state_dir: Path) -> None:
        model, labels = (
            DATA / "models" / "mobilenet_v2_1.0_224_quant.tflite",
            DATA / "models" / "imagenet_labels_1001.txt",
        )
        args = ["--model", str(model), "--labels", str(labels), "--source", str(video), "--loop"]
        args += ["--mqtt", broker_url, "--device-id", DEVICE]
        env = dict(os.environ, STATE_DIRECTORY=str(state_dir), PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "edge_resnet", "run", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stderr or []:
            self.err.append(line.rstrip())

    def tail(self) -> str:
        return "\n".join(self.err[-20:])

    def sigterm(self, timeout: float = 10.0) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout)

    def kill9(self) -> None:
        self.p.kill()
        self.p.wait(5)


class Queue:
    """Read the daemon's events.sqlite from outside (WAL: readers do not block the writer)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "events.sqlite"

    def _q(self, sql: str) -> list[tuple[int, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(self.path, timeout=5.0)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet
        finally:
            db.close()

    def queued(self) -> list[int]:
        return [int(r[0]) for r in self._q("SELECT seq FROM events ORDER BY seq")]

    def last_seq(self) -> int:
        rows = self._q("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(rows[0][0]) if rows else 0


@dataclass
class Figures:
    assigned: int = 0
    received: int = 0
    duplicates: int = 0
    lost: list[int] = field(default_factory=list)
    still_queued: list[int] = field(default_factory=list)
    in_order: bool = True
    restarts: int = 0
    seconds: float = 0.0

    def line(self, what: str) -> str:
        return (
            f"{what}: {self.assigned} events over {self.seconds:.0f} s and {self.restarts} broker restarts: "
            f"{self.received} received, {len(self.lost)} lost, {self.duplicates} duplicates, "
            f"{len(self.still_queued)} still queued on disk, in order: {self.in_order}"
        )


def figures(sub: Subscriber, q: Queue) -> Figures:
    got = [int(json.loads(m.payload)["seq"]) for m in sub.on(EVENTS)]
    first: list[int] = []
    seen: set[int] = set()
    for s in got:
        if s not in seen:
            seen.add(s)
            first.append(s)
    queued = q.queued()
    last = q.last_seq()
    lost = sorted(set(range(1, last + 1)) - seen - set(queued))
    dups = sum(c - 1 for c in Counter(got).values())
    return Figures(last, len(seen), dups, lost, queued, first == sorted(first))


def settle_and_stop(d: Daemon, sub: Subscriber, q: Queue, timeout: float = 30.0) -> int:
    """Wait until everything queued has reached the subscriber, then SIGTERM; returns the exit code."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        last = q.last_seq()
        got = {int(json.loads(m.payload)["seq"]) for m in sub.on(EVENTS)}
        if last and not q.queued() and set(range(1, last + 1)) <= got | set(q.queued()) and last in got:
            break
        time.sleep(0.2)
    return d.sigterm()


def broker_restarts(seconds: float, restarts: int, tmp: Path, log: bool = True) -> Figures:
    """Must-show 1: the daemon runs `seconds` with a label change every 0.6 s while the broker is
    restarted `restarts` times (alternately kill -9 and SIGTERM, down 0.3..3 s)."""
    video = label_change_video(tmp)
    broker = Broker(tmp / "broker").start()
    sub = Subscriber(broker.port, [EVENTS]).start()
    q = Queue(tmp / "state")
    d = Daemon(broker.url, video, tmp / "state")
    rnd = random.Random(7)
    t0 = time.monotonic()
    try:
        gap = seconds / (restarts + 1)
        for i in range(restarts):
            time.sleep(max(0.5, gap - 1.5))
            hard = i % 2 == 0
            down = rnd.uniform(0.3, 3.0)
            broker.restart(down_s=down, hard=hard)
            if log:
                print(f"  {time.monotonic() - t0:5.1f} s: broker {'kill -9' if hard else 'SIGTERM'}, "
                      f"down {down:.1f} s; daemon seq so far {q.last_seq()}", flush=True)  # fmt: skip
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        code = settle_and_stop(d, sub, q)
        if code != 0:
            raise RuntimeError(f"daemon exit {code}:\n{d.tail()}")
        f = figures(sub, q)
        f.restarts, f.seconds = broker.restarts, time.monotonic() - t0
        return f
    finally:
        if d.p.poll() is None:
            d.kill9()
        sub.stop()
        broker.stop()


def daemon_kill9_while_broker_down(tmp: Path, down_s: float = 6.0) -> tuple[Figures, int]:
    """Must-show 2: broker down, the daemon queues events, is killed with -9, is restarted; the broker
    returns and everything queued arrives. Returns the figures and how many were queued at the kill."""
    video = label_change_video(tmp)
    broker = Broker(tmp / "broker").start()
    sub = Subscriber(broker.port, [EVENTS]).start()
    broker.kill()
    q = Queue(tmp / "state")
    d = Daemon(broker.url, video, tmp / "state")
    t0 = time.monotonic()
    try:
        end = time.monotonic() + 60
        while len(q.queued()) < 3 or time.monotonic() - t0 < down_s:
            if d.p.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"no events queued while the broker was down:\n{d.tail()}")
            time.sleep(0.2)
        d.kill9()
        at_kill = len(q.queued())
        d = Daemon(broker.url, video, tmp / "state")  # restarted while the broker is still down
        time.sleep(2.0)
        broker.start()
        time.sleep(3.0)
        code = settle_and_stop(d, sub, q)
        if code != 0:
            raise RuntimeError(f"daemon exit {code}:\n{d.tail()}")
        f = figures(sub, q)
        f.seconds = time.monotonic() - t0
        return f, at_kill
    finally:
        if d.p.poll() is None:
            d.kill9()
        sub.stop()
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--restarts", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        f = broker_restarts(a.minutes * 60, a.restarts, Path(t) / "restarts")
        print(f.line("broker restarts"))
        f2, at_kill = daemon_kill9_while_broker_down(Path(t) / "kill9")
        print(f2.line(f"daemon kill -9 with {at_kill} events queued, broker down"))
    ok = not f.lost and f.in_order and not f2.lost and f2.in_order
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
