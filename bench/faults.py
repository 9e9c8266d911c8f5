"""Fault injection with real processes (issue 7): nothing lost through broker outages, camera loss and bad models.

    .venv/bin/python bench/faults.py            # the full suite (~10 minutes)
    .venv/bin/python bench/faults.py --quick    # a short version (~4 minutes)
    .venv/bin/python bench/faults.py --only 1,3 # some scenarios

Every scenario runs the real CLI (`python -m edge_resnet run ...`) as a child process against a real
mosquitto on 127.0.0.1 (tests/helpers/broker.py) and a video made from ImageNet photos the model labels
confidently, each held ~1 s and looped, so the published label changes about once a second:

1.  the broker is killed (SIGKILL) and restarted 10 times during a 3-minute run; a persistent QoS 1
    subscriber counts `events` by `seq`: published (the highest seq the daemon wrote to its SQLite
    queue), received, lost, duplicates, out of order. Variant 1p: the broker is paused (SIGSTOP) and
    resumed (SIGCONT), like a network partition.
2.  the daemon is killed with -9 while the broker is down, restarted on the same state directory; the
    queued events arrive once the broker is back.
3.  the video source disappears for 30 s (the file, or an image folder, renamed away) and comes back:
    the daemon stays up, /healthz says 503 with the reason, classification resumes within 5 s.
4.  a corrupt model is pushed in while running (a truncated copy picked up by the file watcher; a
    bit-flipped copy with SIGHUP, caught by its .sha256 sidecar): refused, logged once each, the old
    model keeps classifying; a good copy pushed afterwards is taken.

Prints a summary table; exits 1 when a requirement fails. Work files live in a temporary folder
(never in the repository); `--keep` keeps it for a look at the daemon and broker logs.
tests/test_faults.py imports the scenario functions with short settings.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.broker import Broker, Subscriber, free_port  # noqa: E402
from tests.helpers.run_child import RunChild, http_get  # noqa: E402
from tests.helpers.video import Sample, pick_samples, write_folder, write_video  # noqa: E402

DATA = Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data")).resolve()
MODEL = DATA / "models" / "mobilenet_v2_1.0_224_quant.tflite"
LABELS = DATA / "models" / "imagenet_labels_1001.txt"
SAMPLES = DATA / "imagenet-samples"
FPS = 10.0
SIZE = (320, 240)
N_PHOTOS = 8
MIN_SCORE = 0.6  # photos the model is sure about: one label change per photo, no flicker
RECOVERY_LIMIT_S = 5.0


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ inputs


_PHOTOS: list[Sample] = []


def confident_photos(n: int = N_PHOTOS, min_score: float = MIN_SCORE) -> list[Sample]:
    """`n` ImageNet photos of distinct classes that the model gets right with >= `min_score` as they come
    out of the test video (fitted to SIZE, MJPG): every photo change is then exactly one label change."""
    if len(_PHOTOS) >= n:
        return _PHOTOS[:n]
    import cv2

    from edge_resnet.classify import Classifier, read_labels
    from edge_resnet.engine import Engine

    candidates = pick_samples(SAMPLES, 60, start=3, step=23)
    clf = Classifier(Engine.load(MODEL), read_labels(LABELS))
    chosen: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="faults-probe-") as tmp:
        probe = Path(tmp) / "probe.avi"
        write_video(probe, candidates, seconds_each=1 / FPS, fps=FPS, size=SIZE)  # one frame per photo
        cap = cv2.VideoCapture(str(probe))
        try:
            for s in candidates:
                ok, frame = cap.read()
                if not ok:
                    break
                top = clf.classify(cast("npt.NDArray[np.uint8]", frame), k=1).top  # 8-bit BGR
                if (
                    top.class_index == s.class_index
                    and top.score >= min_score
                    and s.class_index not in {c.class_index for c in chosen}
                ):
                    chosen.append(s)
                if len(chosen) == n:
                    break
        finally:
            cap.release()
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} photos are labelled with >= {min_score} by {MODEL.name}")
    _PHOTOS[:] = chosen
    return chosen


def make_video(path: Path, photos: Sequence[Sample], seconds_each: float = 1.0) -> Path:
    write_video(path, photos, seconds_each=seconds_each, fps=FPS, size=SIZE)
    return path


# ------------------------------------------------------------------------------------ the daemon


class Daemon(RunChild):
    """`python -m edge_resnet run ARGS` as a child process; stderr kept (and written to `log`)."""

    def __init__(self, args: Sequence[str], state_dir: Path, log: Path, http_port: int | None = None) -> None:
        env = dict(os.environ, STATE_DIRECTORY=str(state_dir), PYTHONUNBUFFERED="1")
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
            env.pop(k, None)
        self.http_port = http_port
        self._log = log.open("a", encoding="utf-8")
        self._log.write(f"--- {time.strftime('%H:%M:%S')} run {' '.join(args)}\n")
        super().__init__(args, env, log=self._log)
        self.pid = self.p.pid
        self._pump_t = self.readers[0]

    @property
    def alive(self) -> bool:
        return self.p.poll() is None

    def lines(self, text: str) -> list[str]:
        return [ln for ln in list(self.err) if text in ln]

    def kill9(self) -> None:
        self.kill(10)

    def terminate(self, timeout: float = 10.0) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        t0 = time.monotonic()
        if self.alive:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            rc = None
        took = time.monotonic() - t0
        self._pump_t.join(2)
        return rc, took

    def close(self) -> None:
        self.kill9()
        self._pump_t.join(2)
        self._log.close()

    # -- HTTP overlay ---------------------------------------------------------------------------
    def http(self, path: str, timeout: float = 3.0) -> tuple[int, str]:
        """(status, body); status 0 when nothing answers."""
        return http_get(f"http://127.0.0.1:{self.http_port}{path}", timeout)

    def healthz(self) -> tuple[int, str]:
        return self.http("/healthz")

    def metrics(self) -> dict[str, float]:
        """/metrics as {name without the edge_resnet_ prefix: value} (the info metric left out)."""
        code, body = self.http("/metrics")
        out: dict[str, float] = {}
        if code != 200:
            return out
        for line in body.splitlines():
            if not line or line.startswith("#") or "{" in line:
                continue
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name.removeprefix("edge_resnet_")] = float(value)
        return out


def daemon_args(
    source: Path, *, device_id: str, mqtt: str | None = None, http_port: int | None = None, model: Path = MODEL
) -> list[str]:
    args = ["--model", str(model), "--labels", str(LABELS), "--source", str(source), "--loop", "--device-id", device_id]
    if mqtt:
        args += ["--mqtt", mqtt]
    if http_port:
        args += ["--http", f"127.0.0.1:{http_port}"]
    return args


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ------------------------------------------------------------------------------------ counting events


def queue_facts(state_dir: Path) -> tuple[int, int, list[int]]:
    """From the daemon's SQLite queue: (highest seq ever written, dropped counter, seqs still queued)."""
    db = state_dir / "events.sqlite"
    if not db.exists():
        return 0, 0, []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        drop = con.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        queued = [int(r[0]) for r in con.execute("SELECT seq FROM events ORDER BY seq")]
    except sqlite3.Error:
        return 0, 0, []
    finally:
        con.close()
    return (int(row[0]) if row else 0), (int(drop[0]) if drop else 0), queued


@dataclass
class Delivery:
    published: int  # the highest seq the daemon wrote (every seq 1..published is an event)
    received: int  # messages the subscriber got
    distinct: int
    lost: list[int]  # neither received nor still queued on disk
    duplicates: int
    out_of_order: int  # first arrivals of a seq lower than one that arrived before
    on_disk: int  # still queued at the end (delivered at the next start: not lost)
    dropped: int  # the queue's own dropped counter (overflow)
    max_delay_s: float  # queued_at -> arrival, worst event

    def line(self) -> str:
        return (
            f"published {self.published} (highest seq), received {self.received} messages / {self.distinct} distinct, "
            f"lost {len(self.lost)}, duplicates {self.duplicates}, out of order {self.out_of_order}, "
            f"left queued on disk {self.on_disk}, dropped {self.dropped}, worst delay {self.max_delay_s:.1f} s"
        )


def event_docs(sub: Subscriber, topic: str) -> list[tuple[float, dict[str, Any]]]:
    out = []
    for m in sub.on(topic):
        with contextlib.suppress(ValueError):
            out.append((m.at, m.json()))
    return out


def delivery(sub: Subscriber, topic: str, state_dir: Path) -> Delivery:
    published, dropped, queued = queue_facts(state_dir)
    docs = event_docs(sub, topic)
    arrivals = [int(d["seq"]) for _, d in docs]
    seen: set[int] = set()
    out_of_order = 0
    top = 0
    for s in arrivals:
        if s in seen:
            continue
        seen.add(s)
        if s < top:
            out_of_order += 1
        top = max(top, s)
    lost = sorted(set(range(1, published + 1)) - seen - set(queued))
    delays = [at - float(d["queued_at"]) for at, d in docs if "queued_at" in d]
    return Delivery(
        published=published,
        received=len(arrivals),
        distinct=len(seen),
        lost=lost,
        duplicates=len(arrivals) - len(seen),
        out_of_order=out_of_order,
        on_disk=len(queued),
        dropped=dropped,
        max_delay_s=max(delays, default=0.0),
    )


def all_delivered(sub: Subscriber, topic: str, state_dir: Path) -> bool:
    published, _, _ = queue_facts(state_dir)
    got = {int(d["seq"]) for _, d in event_docs(sub, topic)}
    return published > 0 and set(range(1, published + 1)) <= got


# ------------------------------------------------------------------------------------ results


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Result:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, what: str, ok: bool, detail: str | Callable[[], str] = "") -> bool:
        """Record a requirement; a callable `detail` (e.g. the daemon's log tail) is used only on failure."""
        if callable(detail):
            detail = "" if ok else detail()
        self.checks.append(Check(what, bool(ok), detail))
        say(f"  {'PASS' if ok else 'FAIL'}: {what}{f' ({detail})' if detail else ''}")
        return bool(ok)

    def failures(self) -> list[str]:
        return [f"{c.what} ({c.detail})" if c.detail else c.what for c in self.checks if not c.ok]


@contextlib.contextmanager
def running(broker: Broker | None, subs: list[Subscriber], daemons: list[Daemon]) -> Iterator[None]:
    """Whatever happens, leave no process behind (only the ones this suite started)."""
    try:
        yield
    finally:
        for d in daemons:
            d.close()
        for s in subs:
            with contextlib.suppress(Exception):
                s.stop()
        if broker is not None:
            broker.stop()


def _events_flowing(sub: Subscriber, topic: str, n: int, timeout: float) -> bool:
    return sub.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= n, timeout)


# ------------------------------------------------------------------------------------ scenario 1


def scenario_broker_faults(
    work: Path,
    *,
    mode: str = "kill",
    faults: int = 10,
    duration_s: float = 180.0,
    outages_s: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 0.2),
    drain_timeout_s: float = 90.0,
) -> Result:
    """Broker killed (SIGKILL) and restarted (`mode="kill"`), or paused with SIGSTOP and resumed
    (`mode="pause"`), `faults` times during a `duration_s` run; every event seq must arrive."""
    name = "1 broker kill -9/restart" if mode == "kill" else "1p broker SIGSTOP/SIGCONT"
    res = Result(name)
    work.mkdir(parents=True, exist_ok=True)
    photos = confident_photos()
    video = make_video(work / "photos.avi", photos, seconds_each=1.0)
    dev = f"faults-{mode}"
    topic = f"edge-resnet/{dev}/events"
    state = work / "state"
    broker = Broker(work / "broker").start()
    sub = Subscriber(broker.port, [topic]).start()
    port = free_port()
    d = Daemon(daemon_args(video, device_id=dev, mqtt=broker.url, http_port=port), state, work / "daemon.log", port)
    with running(broker, [sub], [d]):
        if not res.check("daemon publishes events", _events_flowing(sub, topic, 2, 120), d.tail):
            return res
        outages = [outages_s[i % len(outages_s)] for i in range(faults)]
        gap = max(1.0, (duration_s - sum(outages)) / (faults + 1))
        say(f"{name}: {faults} faults, outages {outages} s, {gap:.1f} s apart, {duration_s:.0f} s run")
        t0 = time.monotonic()
        longest = max(range(len(outages)), key=lambda i: outages[i]) if outages else -1
        during = ""  # /healthz in the longest outage, near its end (informational: MQTT is not fatal)
        for i, down in enumerate(outages):
            time.sleep(max(0.0, t0 + (i + 1) * gap + sum(outages[:i]) - time.monotonic()))
            t_fault = time.monotonic()
            if mode == "kill":
                broker.kill()
            else:
                broker.pause()
            if i == longest:
                time.sleep(max(0.0, down - 0.6))
                code, body = d.healthz()
                during = f"{code} " + " | ".join(body.strip().splitlines())
            time.sleep(max(0.0, t_fault + down - time.monotonic()))
            if mode == "kill":
                broker.start()
                broker.restarts += 1
            else:
                broker.resume()
            if not d.alive:
                break
        res.notes.append(f"/healthz {outages[longest] if outages else 0:g} s into a broker outage: {during[:200]}")
        time.sleep(max(0.0, t0 + duration_s - time.monotonic()))
        ran = time.monotonic() - t0
        res.check("daemon up through every fault", d.alive, f"exit {d.p.poll()}" if not d.alive else "")
        t_drain = time.monotonic()
        drained = wait_until(lambda: all_delivered(sub, topic, state), drain_timeout_s, 0.2)
        drain_s = time.monotonic() - t_drain
        m = d.metrics()
        rc, took = d.terminate()
        time.sleep(1.0)  # what the shutdown flushed
        dv = delivery(sub, topic, state)
    say(f"{name}: {dv.line()}")
    res.figures.update(
        faults=faults,
        run_s=round(ran, 1),
        published=dv.published,
        received=dv.received,
        distinct=dv.distinct,
        lost=len(dv.lost),
        duplicates=dv.duplicates,
        out_of_order=dv.out_of_order,
        left_on_disk=dv.on_disk,
        worst_delay_s=round(dv.max_delay_s, 1),
        caught_up_after_s=round(drain_s, 1),
        mqtt_connects=int(m.get("mqtt_connects_total", -1)),
        mqtt_disconnects=int(m.get("mqtt_disconnects_total", -1)),
        sigterm_exit=rc,
        sigterm_s=round(took, 2),
        healthz_names_mqtt_in_outage="mqtt" in during,
    )
    res.check(f"broker faulted {faults} times", (broker.restarts if mode == "kill" else faults) == faults)
    res.check("events keep coming (>= 1 per 4 s of run)", dv.published >= ran / 4, f"{dv.published} in {ran:.0f} s")
    res.check("0 lost", not dv.lost, f"lost seqs {dv.lost[:20]}" if dv.lost else "")
    res.check("in order (first arrivals)", dv.out_of_order == 0, f"{dv.out_of_order} out of order")
    res.check("0 dropped", dv.dropped == 0 and m.get("mqtt_events_dropped_total", 0.0) == 0.0)
    res.check("subscriber caught up with the queue", drained, f"after {drain_s:.1f} s")
    res.check("/healthz names the broker outage (mqtt line)", "mqtt" in during, during[:120])
    res.check("SIGTERM: exit 0 within 5 s", rc == 0 and took < 5.0, f"exit {rc} in {took:.2f} s")
    return res


# ------------------------------------------------------------------------------------ scenario 2


def scenario_kill9_while_broker_down(
    work: Path, *, before_s: float = 6.0, down_s: float = 15.0, restarted_s: float = 8.0, drain_timeout_s: float = 60.0
) -> Result:
    """Broker down; events queue on disk; the daemon is killed with -9, restarted on the same state
    directory (broker still down, more events queue), then the broker returns: every seq arrives."""
    res = Result("2 daemon kill -9, broker down")
    work.mkdir(parents=True, exist_ok=True)
    photos = confident_photos()
    video = make_video(work / "photos.avi", photos, seconds_each=1.0)
    dev = "faults-kill9"
    topic = f"edge-resnet/{dev}/events"
    state = work / "state"
    broker = Broker(work / "broker").start()
    sub = Subscriber(broker.port, [topic]).start()
    port = free_port()
    args = daemon_args(video, device_id=dev, mqtt=broker.url, http_port=port)
    d1 = Daemon(args, state, work / "daemon.log", port)
    daemons = [d1]
    with running(broker, [sub], daemons):
        if not res.check("daemon publishes events", _events_flowing(sub, topic, 2, 120), d1.tail):
            return res
        time.sleep(before_s)
        got_before = len({int(d["seq"]) for _, d in event_docs(sub, topic)})
        broker.kill()
        say(f"2: broker killed with {got_before} events delivered; daemon keeps classifying for {down_s:.0f} s")
        time.sleep(down_s)
        pub_at_kill, _, queued_before = queue_facts(state)
        d1.kill9()
        pub_after_kill, _, queued_at_kill = queue_facts(state)
        say(f"2: daemon killed -9 with {len(queued_at_kill)} events queued on disk (seq up to {pub_after_kill})")
        d2 = Daemon(args, state, work / "daemon.log", port)
        daemons.append(d2)
        up = wait_until(lambda: d2.healthz()[0] == 200, 90, 0.3)
        res.check("restarted daemon classifies (broker still down)", up, d2.tail)
        time.sleep(restarted_s)
        pub_before_broker, _, queued_before_broker = queue_facts(state)
        n_before_broker = len(sub.on(topic))
        broker.start()
        t_back = time.monotonic()
        must = set(queued_at_kill)
        arrived = sub.wait_for(
            lambda ms: must <= {int(json.loads(m.payload)["seq"]) for m in ms[n_before_broker:] if m.topic == topic},
            drain_timeout_s,
        )
        queued_delivered_s = time.monotonic() - t_back
        drained = wait_until(lambda: all_delivered(sub, topic, state), drain_timeout_s, 0.2)
        m = d2.metrics()
        rc, took = d2.terminate()
        time.sleep(1.0)
        dv = delivery(sub, topic, state)
    say(f"2: {dv.line()}")
    res.figures.update(
        delivered_before_broker_kill=got_before,
        queued_at_kill9=len(queued_at_kill),
        queued_when_broker_back=len(queued_before_broker),
        published=dv.published,
        received=dv.received,
        distinct=dv.distinct,
        lost=len(dv.lost),
        duplicates=dv.duplicates,
        out_of_order=dv.out_of_order,
        left_on_disk=dv.on_disk,
        kill9_queue_delivered_s=round(queued_delivered_s, 1),
        sigterm_exit=rc,
    )
    res.notes.append(
        f"queue before kill -9: {len(queued_before)} (seq <= {pub_at_kill}); after: {len(queued_at_kill)} "
        f"(seq <= {pub_after_kill}); before the broker came back: {len(queued_before_broker)} "
        f"(seq <= {pub_before_broker})"
    )
    res.check("events were queued on disk at kill -9", len(queued_at_kill) >= 3, f"{len(queued_at_kill)} queued")
    res.check("the kill -9 queue arrived after the broker returned", arrived, f"in {queued_delivered_s:.1f} s")
    res.check("0 lost", not dv.lost, f"lost seqs {dv.lost[:20]}" if dv.lost else "")
    res.check("in order (first arrivals)", dv.out_of_order == 0, f"{dv.out_of_order} out of order")
    res.check("0 dropped", dv.dropped == 0 and m.get("mqtt_events_dropped_total", 0.0) == 0.0)
    res.check("subscriber caught up with the queue", drained)
    res.check("SIGTERM: exit 0", rc == 0, f"exit {rc} in {took:.2f} s")
    return res


# ------------------------------------------------------------------------------------ scenario 3


def scenario_source_gone(work: Path, *, kind: str = "file", gone_s: float = 30.0) -> Result:
    """The video file (kind="file") or image folder (kind="folder") is renamed away, stays away
    `gone_s` seconds after the daemon reported it, and is renamed back."""
    res = Result(f"3 source gone ({kind})")
    work.mkdir(parents=True, exist_ok=True)
    photos = confident_photos()[:3]
    if kind == "file":
        # Short (3 s): a file that is open keeps playing until its end even after it was renamed away;
        # the loop's reopen is where a vanished file shows.
        source = make_video(work / "cam.avi", photos, seconds_each=1.0)
    else:
        source = write_folder(work / "cam", [p.path for p in photos], size=SIZE)
    away = source.with_name(source.name + ".away")
    port = free_port()
    d = Daemon(
        daemon_args(source, device_id=f"faults-src-{kind}", http_port=port), work / "state", work / "daemon.log", port
    )
    with running(None, [], [d]):
        if not res.check("daemon healthy", wait_until(lambda: d.healthz()[0] == 200, 90, 0.3), d.tail):
            return res
        time.sleep(3.0)
        source.rename(away)
        t_gone = time.monotonic()
        reported = wait_until(lambda: d.healthz()[0] == 503, 20, 0.2)
        detect_s = time.monotonic() - t_gone
        code, body = d.healthz()
        reason = body.strip().splitlines()[0] if body.strip() else ""
        say(f"3 ({kind}): gone; /healthz {code} after {detect_s:.1f} s: {reason[:150]}")
        res.check("/healthz 503 once the source is gone", reported, f"after {detect_s:.1f} s")
        samples: list[tuple[int, str]] = []
        t_reported = time.monotonic()
        # The daemon retries with a capped backoff (4 s by default): where the return falls in that cycle
        # decides the recovery time, so the return is put at a random point of it (printed).
        phase = random.uniform(0.0, 4.0)
        while time.monotonic() - t_reported < gone_s + phase:
            samples.append(d.healthz())
            if not d.alive:
                break
            time.sleep(max(0.0, min(1.0, t_reported + gone_s + phase - time.monotonic())))
        bad = [(c, b.splitlines()[0] if b else "") for c, b in samples if c != 503 or "lost" not in b]
        res.check("daemon stays up while the source is gone", d.alive, f"exit {d.p.poll()}" if not d.alive else "")
        res.check(
            f"/healthz 503 with the reason the whole {gone_s:.0f} s",
            not bad and bool(samples),
            f"{len(samples)} probes, {len(bad)} not 503/'lost': {bad[:2]}",
        )
        before = d.metrics().get("frames_classified_total", 0.0)
        away.rename(source)
        t_back = time.monotonic()
        reopened: list[float] = []

        def classifying() -> bool:
            m = d.metrics()
            if not reopened and m.get("source_up") == 1.0:
                reopened.append(time.monotonic() - t_back)  # the capture thread opened it again
            return m.get("frames_classified_total", 0.0) > before

        resumed = wait_until(classifying, 30, 0.05)
        resume_s = time.monotonic() - t_back
        healthy = wait_until(lambda: d.healthz()[0] == 200, 30, 0.05)
        healthy_s = time.monotonic() - t_back
        m = d.metrics()
        warnings = d.lines("camera lost")
        rc, took = d.terminate()
    say(
        f"3 ({kind}): classification resumed {resume_s:.2f} s after the source returned; /healthz 200 "
        f"after {healthy_s:.2f} s"
    )
    res.figures.update(
        gone_s=round(t_back - t_gone, 1),
        return_phase_s=round(phase, 2),
        detected_s=round(detect_s, 1),
        healthz_probes_503=len(samples) - len(bad),
        healthz_probes=len(samples),
        reopened_s=round(reopened[0], 2) if reopened else None,
        resumed_s=round(resume_s, 2),
        healthz_200_s=round(healthy_s, 2),
        reconnects=int(m.get("camera_reconnects_total", -1)),
        lost_log_lines=len(warnings),
        reason=reason[:90],
    )
    res.check(
        f"classification resumes within {RECOVERY_LIMIT_S:.0f} s",
        resumed and resume_s < RECOVERY_LIMIT_S,
        f"{resume_s:.2f} s",
    )
    res.check("/healthz 200 again", healthy, f"{healthy_s:.2f} s")
    res.check("SIGTERM: exit 0", rc == 0, f"exit {rc} in {took:.2f} s")
    return res


# ------------------------------------------------------------------------------------ scenario 4


def _push(path: Path, data: bytes) -> None:
    """Replace `path` atomically, as deploy tools do (write beside it, then rename over it)."""
    tmp = path.with_name(path.name + ".push")
    tmp.write_bytes(data)
    tmp.replace(path)


def scenario_corrupt_model(work: Path, *, observe_s: float = 6.0) -> Result:
    """Corrupt models pushed into a running daemon are refused (logged once each); the old model keeps
    classifying, with the labels of the photos; a good model pushed afterwards is taken."""
    res = Result("4 corrupt model pushed")
    work.mkdir(parents=True, exist_ok=True)
    photos = confident_photos()
    classes = {p.class_index for p in photos}
    video = make_video(work / "photos.avi", photos, seconds_each=1.0)
    models = work / "models"
    models.mkdir(exist_ok=True)
    model = models / "model.tflite"
    good = MODEL.read_bytes()
    model.write_bytes(good)
    dev = "faults-model"
    topic = f"edge-resnet/{dev}/events"
    broker = Broker(work / "broker").start()
    sub = Subscriber(broker.port, [topic, f"edge-resnet/{dev}/state"]).start()
    port = free_port()
    d = Daemon(
        daemon_args(video, device_id=dev, mqtt=broker.url, http_port=port, model=model),
        work / "state",
        work / "daemon.log",
        port,
    )

    def refusals() -> list[str]:
        return d.lines("model refused")

    def flow(since: float) -> tuple[int, int, int]:
        """(events after `since`, of them with a photo's class, state messages after `since`)."""
        ev = [doc for at, doc in event_docs(sub, topic) if at >= since]
        st = [m for m in sub.on(f"edge-resnet/{dev}/state") if m.at >= since]
        return len(ev), sum(doc.get("class_index") in classes for doc in ev), len(st)

    steps: list[str] = []
    with running(broker, [sub], [d]):
        if not res.check("daemon publishes events", _events_flowing(sub, topic, 2, 120), d.tail):
            return res
        m0 = d.metrics()

        # a) truncated copy, picked up by the file watcher (no signal)
        _push(model, good[: len(good) // 3])
        t_a = time.time()
        seen = wait_until(lambda: len(refusals()) >= 1, 20, 0.2)
        detect_a = time.time() - t_a
        c0 = d.metrics().get("frames_classified_total", 0.0)
        t_obs = time.time()
        time.sleep(observe_s)
        ev, right, st = flow(t_obs)
        m1 = d.metrics()
        n_a = len(refusals())
        steps.append(
            f"a) truncated copy (file watcher): refused after {detect_a:.1f} s, {n_a} log line(s) in "
            f"{observe_s + detect_a:.0f} s; next {observe_s:.0f} s: {int(m1.get('frames_classified_total', 0) - c0)} "
            f"frames classified, {ev} events ({right} with a photo's label), {st} state messages"
        )
        res.check("truncated model refused by the file watcher", seen, f"after {detect_a:.1f} s")
        res.check("  ... logged once", n_a == 1, f"{n_a} lines")
        res.check(
            "  ... old model keeps classifying (events with the photos' labels)",
            ev >= 2 and right == ev,
            f"{right}/{ev} events",
        )

        # b) bit-flipped copy (same size) + SIGHUP; the deployment ships a .sha256 sidecar
        (models / "model.tflite.sha256").write_text(f"{hashlib.sha256(good).hexdigest()}  model.tflite\n")
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0x10
        _push(model, bytes(flipped))
        d.p.send_signal(signal.SIGHUP)
        t_b = time.time()
        seen = wait_until(lambda: len(refusals()) >= 2, 20, 0.2)
        detect_b = time.time() - t_b
        c1 = d.metrics().get("frames_classified_total", 0.0)
        t_obs = time.time()
        time.sleep(observe_s)  # the file watcher polls every 2 s: it must not refuse (log) it again
        ev, right, st = flow(t_obs)
        m2 = d.metrics()
        n_b = len(refusals()) - n_a
        steps.append(
            f"b) bit-flipped copy + SIGHUP: refused after {detect_b:.1f} s, {n_b} log line(s); next "
            f"{observe_s:.0f} s: {int(m2.get('frames_classified_total', 0) - c1)} frames classified, {ev} events "
            f"({right} with a photo's label), {st} state messages"
        )
        res.check("bit-flipped model refused on SIGHUP (digest)", seen, f"after {detect_b:.1f} s")
        res.check("  ... logged once (not again by the file watcher)", n_b == 1, f"{n_b} lines")
        res.check("  ... old model keeps classifying", ev >= 2 and right == ev, f"{right}/{ev} events")

        # c) the good model again: taken
        _push(model, good)
        t_c = time.time()
        taken = wait_until(lambda: bool(d.lines("swapping it in")), 20, 0.2)
        take_c = time.time() - t_c
        t_obs = time.time()
        time.sleep(3.0)
        ev, right, _ = flow(t_obs)
        m3 = d.metrics()
        steps.append(f"c) good copy (file watcher): taken after {take_c:.1f} s; then {ev} events ({right} right)")
        res.check("a good model pushed afterwards is taken", taken, f"after {take_c:.1f} s")
        res.check("  ... and classifies", ev >= 1 and right == ev, f"{right}/{ev} events")
        others = [ln for ln in d.err if "Traceback" in ln or "crashed" in ln]
        res.check("no crash or traceback", not others and d.alive, "; ".join(others[:2]))
        rc, took = d.terminate()
    for line in refusals():
        steps.append("   log: " + line.strip()[:200])
    for s in steps:
        say("4: " + s)
    res.notes.extend(steps)
    res.figures.update(
        refused_truncated_s=round(detect_a, 1),
        refused_flipped_s=round(detect_b, 1),
        refusal_log_lines=len(refusals()),
        reload_failures=int(m3.get("model_reload_failures_total", -1)),
        reloads=int(m3.get("model_reloads_total", -1)),
        frames_classified=int(m3.get("frames_classified_total", 0) - m0.get("frames_classified_total", 0)),
        sigterm_exit=rc,
    )
    res.check(
        "counters: 2 reload failures, 1 reload",
        m3.get("model_reload_failures_total") == 2.0 and m3.get("model_reloads_total") == 1.0,
    )
    res.check("SIGTERM: exit 0", rc == 0, f"exit {rc} in {took:.2f} s")
    return res


# ------------------------------------------------------------------------------------ the suite


def summary(results: Sequence[Result]) -> str:
    rows = [("scenario", "result", "figures")]
    for r in results:
        figs = ", ".join(f"{k}={v}" for k, v in r.figures.items() if k != "reason")
        rows.append((r.scenario, "PASS" if r.ok else "FAIL", figs))
    w0 = max(len(r[0]) for r in rows)
    out = ["", "=" * 100, "SUMMARY"]
    for i, (a, b, c) in enumerate(rows):
        out.append(f"{a:<{w0}}  {b:<6}  {c}")
        if i == 0:
            out.append("-" * 100)
    for r in results:
        for f in r.failures():
            out.append(f"  FAILED {r.scenario}: {f}")
    out.append("=" * 100)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short version (~4 minutes)")
    ap.add_argument("--only", default="1,1p,2,3,4", help="scenarios to run, e.g. 1,2 (default: all: 1,1p,2,3,4)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (daemon and broker logs)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    if not MODEL.exists():
        print(f"model {MODEL} not found; set EDGE_RESNET_DATA", file=sys.stderr)
        return 2
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    q = args.quick
    work = Path(tempfile.mkdtemp(prefix="edge-resnet-faults-"))
    say(f"work folder {work}; {'quick' if q else 'full'} run of {sorted(only)}")
    say(f"photos: {[p.name for p in confident_photos()]}")
    plan: list[tuple[str, Callable[[], Result]]] = [
        (
            "1",
            lambda: scenario_broker_faults(
                work / "s1", mode="kill", faults=3 if q else 10, duration_s=30 if q else 180
            ),
        ),
        (
            "1p",
            lambda: scenario_broker_faults(
                work / "s1p",
                mode="pause",
                faults=2 if q else 4,
                duration_s=45 if q else 130,
                outages_s=(3.0, 25.0) if q else (5.0, 30.0, 10.0, 30.0),
            ),
        ),
        (
            "2",
            lambda: scenario_kill9_while_broker_down(work / "s2", down_s=10 if q else 20, restarted_s=5 if q else 10),
        ),
        ("3", lambda: scenario_source_gone(work / "s3", kind="file", gone_s=10 if q else 30)),
        ("3f", lambda: scenario_source_gone(work / "s3f", kind="folder", gone_s=10 if q else 30)),
        ("4", lambda: scenario_corrupt_model(work / "s4", observe_s=5 if q else 8)),
    ]
    if "3" in only:
        only.add("3f")
    results: list[Result] = []
    t0 = time.monotonic()
    for key, fn in plan:
        if key not in only:
            continue
        say(f"scenario {key} ...")
        t = time.monotonic()
        try:
            r = fn()
        except Exception as e:  # a broken scenario is a failure, not the end of the suite
            r = Result(f"{key} (crashed)")
            r.check("scenario ran", False, f"{type(e).__name__}: {e}")
        r.figures["took_s"] = round(time.monotonic() - t, 1)
        results.append(r)
        for n in r.notes:
            say(f"  note: {n}")
    print(summary(results))
    print(f"total {time.monotonic() - t0:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "scenario": r.scenario,
                        "ok": r.ok,
                        "figures": r.figures,
                        "notes": r.notes,
                        "failures": r.failures(),
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    if args.keep or not all(r.ok for r in results):
        say(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
