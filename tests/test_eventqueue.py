"""Issue 13: the MQTT event queue degrades instead of dying (full disk, read-only file) and recovers
by itself; a corrupt file is moved aside with one warning and a fresh queue takes over."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_resnet.observation import Frame, Observation, Prediction, Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink, eventqueue
from edge_resnet.sinks.mqtt.eventqueue import EventQueue
from tests.helpers.broker import Broker, Subscriber, broker

__all__ = ["broker"]  # the fixture

BODY = {"label": "x" * 900}  # about 1 KB an event: a 200 KB disk fills within a few hundred


def fake_observation(label: str, seq: int, changed: bool) -> Observation:
    """A label change as the pipeline hands it over (the pixels do not matter to the MQTT sink)."""
    p = Prediction(label=label, class_index=seq, score=0.9)
    frame = Frame(np.zeros((8, 8, 3), np.uint8), seq, time.time(), time.monotonic())
    return Observation(frame, [p], p, changed, 1.0, "m.tflite", time.time())


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KB tmpfs (needs root or CAP_SYS_ADMIN; skipped otherwise)."""
    d = tmp_path / "tiny"
    d.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=200k", "tmpfs", str(d)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture(autouse=True)
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventqueue, "RETRY_S", 0.05)


def poll_until_ok(q: EventQueue, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while q.problem is not None and time.monotonic() < end:
        time.sleep(0.06)
        q.poll()
    assert q.problem is None, q.problem


def fill(q: EventQueue, limit: int = 5000) -> int:
    """Put events until one cannot be stored; returns how many were stored."""
    for i in range(limit):
        if q.put({**BODY, "i": i}) is None:
            return i
    raise AssertionError(f"{limit} events fitted; the disk did not fill")


def test_disk_full_degrades_counts_and_recovers(tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    q = EventQueue(tiny_disk / "events.sqlite", 100000)
    stored = fill(q)
    assert q.problem is not None and "full" in q.problem, q.problem
    assert q.dropped == 1
    for _ in range(5):  # more events while degraded: dropped and counted, never raised
        assert q.put(BODY) is None
    assert q.dropped == 6
    delivered = [e.seq for e in q.after(0, 10)]  # queued events can still be read and sent
    assert len(delivered) == 10
    q.delete(delivered)  # the ack cannot be written now: remembered
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "degraded" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert _mount("-o", "remount,size=4m", str(tiny_disk))  # the disk grows (or space is freed)
    poll_until_ok(q)
    assert len(q) == stored - 10  # the remembered deletes were written
    assert q.put(BODY) is not None
    q.close()
    q = EventQueue(tiny_disk / "events.sqlite", 100000)
    assert q.dropped == 6, "the drops counted while degraded were saved once it recovered"
    print(f"\n200 KB tmpfs: {stored} events stored, then degraded; 6 dropped and counted; recovered after growing")
    q.close()


def test_read_only_queue_degrades_and_recovers(tiny_disk: Path) -> None:
    q = EventQueue(tiny_disk / "events.sqlite", 100)
    assert q.put(BODY) == 1
    q.close()
    assert _mount("-o", "remount,ro", str(tiny_disk))
    q = EventQueue(tiny_disk / "events.sqlite", 100)
    assert q.put(BODY) is None
    assert q.problem is not None and q.dropped == 1
    assert _mount("-o", "remount,rw", str(tiny_disk))
    poll_until_ok(q)
    assert q.put(BODY) == 2 and q.dropped == 1
    q.close()


def test_unwritable_state_dir_is_degraded_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    q = EventQueue(tmp_path / "file" / "events.sqlite", 10)  # a file where the directory should be
    assert q.problem is not None and "cannot open" in q.problem
    assert q.put(BODY) is None and q.dropped == 1 and q.after(0, 10) == []
    (tmp_path / "file").unlink()
    poll_until_ok(q)
    assert q.put(BODY) == 1


def corrupt_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"this is not a database header")


def corrupt_page(path: Path) -> None:
    size = path.stat().st_size
    assert size >= 5 * 4096
    with path.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096)  # a data page in the middle of the events table
        f.write(b"\xa5" * 4096)


@pytest.mark.parametrize("damage", [corrupt_header, corrupt_page])
def test_corrupt_queue_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "events.sqlite"
    q = EventQueue(path, 100000)
    for i in range(200):
        q.put({**BODY, "i": i})
    q.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the pages are in the main file, as after a clean stop
    db.close()
    assert callable(damage)
    damage(path)
    q = EventQueue(path, 100000)
    assert q.problem is None
    assert len(q.set_aside) == 1 and q.set_aside[0].exists(), "the corrupt file is kept for inspection"
    seq = q.put(BODY)
    assert len(q) == 1 and seq is not None and seq > 200, "seq keeps increasing past the lost file's"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "moved it to" in warnings[0], warnings
    q.close()


def test_sink_publishes_live_while_degraded(broker: Broker, tiny_disk: Path) -> None:
    """Disk full under the running MQTT sink: state keeps flowing with the drop count, healthy() says
    degraded; after the disk grows the queue delivers again without a restart."""
    sub = Subscriber(broker.port, ["edge-resnet/full/#"]).start()
    sink = MqttSink(MqttConfig(url=broker.url, heartbeat_s=0.2), "full", lambda: Status(True, "ok"), tiny_disk)
    sink.start()
    try:
        stored = fill(sink.queue)  # fills the disk from the test thread before the sink writes events
        labels = ["a", "b"]
        for i in range(6):
            sink.publish(fake_observation(labels[i % 2], seq=i, changed=i > 0))
            time.sleep(0.05)
        assert sub.wait_for(
            lambda ms: any(m.topic.endswith("/state") and m.json()["events_dropped"] >= 5 for m in ms), 10
        )
        ok, why = sink.healthy()
        assert not ok and "degraded" in why, why
        assert sub.wait_for(lambda ms: any(m.json().get("stored") is False for m in ms if "events" in m.topic), 5)
        live = [m.json() for m in sub.on("edge-resnet/full/events") if m.json().get("stored") is False]
        assert {e["label"] for e in live} <= {"a", "b"} and all(e["seq"] is None for e in live), live
        print(f"\n{len(live)} label changes sent live while the queue could not store them")
        assert _mount("-o", "remount,size=4m", str(tiny_disk))
        sink.publish(fake_observation("c", seq=10, changed=True))
        assert sub.wait_for(lambda ms: any(m.topic.endswith("/events") and m.json()["label"] == "c" for m in ms), 15), (
            "no queued delivery after the disk grew"
        )
        assert sink.healthy()[0]
        print(f"\nsink: {stored} events filled the disk; state kept publishing, drops counted, recovered")
    finally:
        sink.stop()
        sub.stop()


@pytest.mark.parametrize("damage", [corrupt_header, corrupt_page])
def test_daemon_starts_on_a_corrupt_queue(
    broker: Broker,
    tmp_path: Path,
    samples_dir: Path,
    mobilenet_quant: Path,
    labels_1001: Path,
    damage: Callable[[Path], None],
) -> None:
    """Must-show 4: the daemon moves the corrupt file aside, warns once, publishes; no traceback, no exit."""
    import os
    import sys

    state = tmp_path / "state"
    state.mkdir()
    q = EventQueue(state / "events.sqlite", 100000)
    for i in range(200):
        q.put({**BODY, "i": i})
    q.close()
    db = sqlite3.connect(state / "events.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert callable(damage)
    damage(state / "events.sqlite")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("n01440764_tench.JPEG", "n01443537_goldfish.JPEG", "n01484850_great_white_shark.JPEG"):
        if (samples_dir / name).exists():
            (photos / name).symlink_to(samples_dir / name)
    assert len(list(photos.iterdir())) >= 2
    (photos / "labels.json").unlink(missing_ok=True)
    sub = Subscriber(broker.port, ["edge-resnet/cq/events"]).start()
    env = dict(os.environ, STATE_DIRECTORY=str(state), PYTHONUNBUFFERED="1")
    args = ["--model", str(mobilenet_quant), "--labels", str(labels_1001), "--source", str(photos), "--loop"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_resnet",
            "run",
            *args,
            "--mqtt",
            broker.url,
            "--device-id",
            "cq",
            "--duration",
            "8",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    try:
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING")]
        assert len(warnings) == 1 and "corrupt" in warnings[0], r.stderr
        assert list(state.glob("events.sqlite.corrupt-*")), "the corrupt file was not kept"
        assert sub.wait_for(lambda ms: len(ms) >= 2, 5), "no events published"
        print(f"\n{damage.__name__}: {warnings[0][:160]}")
    finally:
        sub.stop()


def test_password_over_plain_mqtt_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EDGE_RESNET_MQTT_PASSWORD", "pw")
    MqttSink(MqttConfig(url="mqtt://broker.lan", username="u"), "cam", lambda: Status(True, "ok"), tmp_path).stop()
    MqttSink(MqttConfig(url="mqtt://127.0.0.1", username="u"), "cam", lambda: Status(True, "ok"), tmp_path).stop()
    clear = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert len(clear) == 1 and "broker.lan:1883" in clear[0] and "mqtts://" in clear[0], clear


def test_a_sick_sink_makes_status_unhealthy_with_its_reason(
    tmp_path: Path, samples_dir: Path, mobilenet_quant: Path, labels_1001: Path
) -> None:
    """The degraded queue reaches every report: Status (-> /healthz 503, edge_resnet_healthy 0, the
    MQTT state's healthy/reason) and systemd's STATUS= line, while frames keep being classified."""
    from edge_resnet.capture import Capture
    from edge_resnet.config import ModelConfig, PipelineConfig
    from edge_resnet.model import load_classifier
    from edge_resnet.pipeline import Pipeline
    from edge_resnet.sources.folder import FolderFrames

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("n01440764_tench.JPEG", "n01443537_goldfish.JPEG"):
        (photos / name).symlink_to(samples_dir / name)
    (tmp_path / "file").write_text("")
    sink = MqttSink(MqttConfig(url="mqtt://127.0.0.1:1"), "sick", lambda: Status(True, "ok"), tmp_path / "file")
    model = ModelConfig(path=str(mobilenet_quant), labels=str(labels_1001), threads=1)
    cap = Capture(FolderFrames(str(photos), interval_s=0.05, loop=True))
    pipe = Pipeline(cap, load_classifier(model), [sink], PipelineConfig(), 5, stall_s=5.0, model=model)
    pipe.start()
    cap.start()
    try:
        end = time.monotonic() + 20
        while pipe.classified < 3:
            assert time.monotonic() < end
            time.sleep(0.05)
        st = pipe.status()
        assert not st.healthy and st.reason.startswith("mqtt event queue degraded"), st.reason
        assert st.counters["mqtt_queue_degraded"] == 1.0
        assert pipe.status_line().startswith("mqtt event queue degraded")
    finally:
        pipe.stop(2.0)
        cap.stop(2.0)
        sink.stop()
