"""MQTT sink against a real mosquitto: topics, retained state, Last Will, discovery, store and forward."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_resnet.errors import ConfigError
from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink, tls_problem
from edge_resnet.sinks.mqtt.eventqueue import EventQueue
from tests.helpers.broker import Broker, Message, Subscriber, broker, free_port, retained
from tests.helpers.observations import Classified, classify_samples, observation, synthetic_samples, to_json

__all__ = ["broker"]  # the fixture

REPO = Path(__file__).resolve().parents[1]
HA_KEYS = {
    "name",
    "unique_id",
    "state_topic",
    "value_template",
    "json_attributes_topic",
    "availability_topic",
    "device",
}


@pytest.fixture(scope="module")
def photos() -> list[Classified]:
    """Synthetic observations: no model, no data."""
    return synthetic_samples(8)


@pytest.fixture(scope="module")
def real_photos(mobilenet_quant: Path, labels_1001: Path, samples_dir: Path) -> list[Classified]:
    """Real photos classified by the real model, for the tests whose child process reloads them."""
    return classify_samples(mobilenet_quant, labels_1001, samples_dir, 8)


def ok_status() -> Status:
    return Status(True, "ok", {"frames_total": 1.0})


def seqs_of(msgs: list[Message]) -> list[int]:
    return [int(m.json()["seq"]) for m in msgs]


def all_arrived(sub: Subscriber, sent: list[int], timeout: float = 30) -> bool:
    """Waits until every seq in `sent` has arrived at `sub` (or `timeout` passed)."""
    return sub.wait_for(lambda ms: set(seqs_of(ms)) >= set(sent), timeout)


def check_delivery(sent: list[int], got: list[int], what: str) -> tuple[int, int]:
    """0 lost and in order (first arrivals increase); returns (lost, duplicates) and prints them."""
    first: list[int] = []
    seen: set[int] = set()
    for s in got:
        if s not in seen:
            seen.add(s)
            first.append(s)
    lost = sorted(set(sent) - seen)
    dups = sum(c - 1 for c in Counter(got).values())
    print(f"\n{what}: {len(sent)} events sent, {len(seen)} received, {len(lost)} lost, {dups} duplicates")
    assert not lost, f"lost events {lost[:20]}"
    assert first == sorted(first), f"out of order: {first}"
    return len(lost), dups


def test_config_errors_name_key_and_fix() -> None:
    assert MqttConfig(url="mqtts://broker.lan").endpoint() == ("broker.lan", 8883, True)
    assert MqttConfig().endpoint() == ("127.0.0.1", 1883, False)
    for kw, key in [
        ({"url": "http://x"}, "url"),
        ({"url": "mqtt://u:p@h"}, "url"),
        ({"keepalive": 1}, "keepalive"),
        ({"topic_prefix": "a/#"}, "topic_prefix"),
        ({"queue_max": 0}, "queue_max"),
    ]:
        with pytest.raises(ConfigError, match=key):
            MqttConfig(**kw)  # type: ignore[arg-type]


def test_bad_device_id_and_ca_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device_id: 'kitchen/cam' is not usable in MQTT topics"):
        MqttSink(MqttConfig(), "kitchen/cam", ok_status, tmp_path)
    with pytest.raises(ConfigError, match="ca_file"):
        MqttSink(MqttConfig(url="mqtts://127.0.0.1", ca_file=str(tmp_path / "nope.pem")), "cam", ok_status, tmp_path)
    (tmp_path / "file").write_text("")
    sink = MqttSink(MqttConfig(), "cam", ok_status, tmp_path / "file" / "state")  # degraded, not fatal
    ok, why = sink.healthy()
    assert not ok and "event queue degraded" in why, why
    sink.stop()


def test_event_queue_bounded_and_persistent(tmp_path: Path) -> None:
    q = EventQueue(tmp_path / "events.sqlite", max_len=5)
    for i in range(8):
        q.put({"i": i})
    assert len(q) == 5 and q.dropped == 3
    assert [e.seq for e in q.after(0, 100)] == [4, 5, 6, 7, 8]
    q.delete([4, 5])
    q.close()
    q = EventQueue(tmp_path / "events.sqlite", max_len=5)  # reopened: the queue, the counter and seq survive
    assert len(q) == 3 and q.dropped == 3 and q.last_seq == 8
    assert q.put({"i": 8}) == 9 and q.last_seq == 9
    q.close()


def test_state_events_availability_discovery(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["edge-resnet/cam1/#", "homeassistant/#"]).start()
    sink = MqttSink(MqttConfig(url=broker.url, heartbeat_s=1.0, discovery_form="entity"), "cam1", ok_status, tmp_path)
    sink.start()
    sink.publish(observation(photos[0], 1, changed=False))
    for i, c in enumerate(photos[1:6], start=2):
        sink.publish(observation(c, i, changed=True))
        time.sleep(0.05)
    assert sub.wait_for(lambda ms: sum(m.topic.endswith("/events") for m in ms) >= 5, 10)
    events = sub.on("edge-resnet/cam1/events")
    docs = [m.json() for m in events]
    assert [d["label"] for d in docs] == [c.top_k[0].label for c in photos[1:6]]
    assert [d["previous"] for d in docs] == [c.top_k[0].label for c in photos[0:5]]
    assert seqs_of(events) == sorted(seqs_of(events)) and len(set(seqs_of(events))) == 5
    assert all(m.qos == 1 and not m.retain for m in events)
    assert sub.wait_for(lambda ms: sum(m.topic.endswith("/state") for m in ms) >= 3, 5)  # changes + heartbeat

    st = retained(broker.port, "edge-resnet/cam1/state")
    assert st is not None
    doc = st.json()
    assert {"label", "score", "class_index", "top_k", "frame_seq", "captured_at", "published_at", "model"} <= set(doc)
    assert doc["label"] == photos[5].top_k[0].label and doc["frame_seq"] == 6
    assert doc["top_k"][0] == {"label": doc["label"], "class_index": doc["class_index"], "score": doc["score"]}
    assert doc["model"] == "mobilenet_v2_1.0_224_quant.tflite"

    av = retained(broker.port, "edge-resnet/cam1/availability")
    assert av is not None and av.text == "online"
    disc = retained(broker.port, "homeassistant/sensor/cam1/label/config")
    assert disc is not None
    cfg = disc.json()
    assert set(cfg) >= HA_KEYS
    assert cfg["state_topic"] == "edge-resnet/cam1/state" == cfg["json_attributes_topic"]
    assert cfg["availability_topic"] == "edge-resnet/cam1/availability"
    assert cfg["value_template"] == "{{ value_json.label }}"
    assert cfg["device"]["identifiers"] and cfg["unique_id"]
    assert cfg["device"]["model"] == "mobilenet_v2_1.0_224_quant.tflite"  # announced once the model is known
    ok, reason = sink.healthy()
    assert ok and "connected" in reason

    t0 = time.monotonic()
    sink.stop(2.0)
    assert time.monotonic() - t0 < 2.5
    av = retained(broker.port, "edge-resnet/cam1/availability")
    assert av is not None and av.text == "offline"
    sub.stop()


def start_child(
    broker: Broker, state_dir: Path, photos_json: Path, samples_dir: Path, n: int, hold: float | None = None
) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "tests.helpers.mqtt_child",
        broker.url,
        str(state_dir),
        "child",
        str(photos_json),
        str(samples_dir),
        str(n),
    ] + ([str(hold)] if hold is not None else [])
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ))


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 30) -> None:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"child exited with {proc.returncode} before printing {prefix!r}")
    raise AssertionError(f"child did not print {prefix!r} within {timeout} s")


def test_last_will_after_kill9(
    broker: Broker, real_photos: list[Classified], samples_dir: Path, tmp_path: Path
) -> None:
    pj = tmp_path / "photos.json"
    pj.write_text(to_json(real_photos))
    sub = Subscriber(broker.port, ["edge-resnet/child/availability"]).start()
    child = start_child(broker, tmp_path / "state", pj, samples_dir, 2)
    try:
        assert sub.wait_for(lambda ms: any(m.text == "online" for m in ms), 20)
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        assert sub.wait_for(lambda ms: ms[-1].text == "offline", 10), "no Last Will after kill -9"
        av = retained(broker.port, "edge-resnet/child/availability")
        assert av is not None and av.text == "offline"
    finally:
        child.kill()
        sub.stop()


def test_broker_down_at_start_then_up(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["edge-resnet/late/+"]).start()  # persistent session, saved by the broker
    broker.kill()
    sink = MqttSink(MqttConfig(url=broker.url), "late", ok_status, tmp_path)
    sink.start()
    for i, c in enumerate(photos[:5], start=1):
        sink.publish(observation(c, i, changed=True))
    time.sleep(1.5)
    ok, reason = sink.healthy()
    assert ok and "retrying" in reason and "5 events queued" in reason, reason
    broker.start()
    assert sub.wait_for(lambda ms: len({m.json()["seq"] for m in ms if m.topic.endswith("/events")}) >= 5, 20)
    check_delivery([1, 2, 3, 4, 5], seqs_of(sub.on("edge-resnet/late/events")), "broker down at start")
    assert sink.counters()["mqtt_connected"] == 1.0

    def fresh_state(since: float) -> Callable[[list[Message]], bool]:
        return lambda ms: any(
            m.topic.endswith("/state") and m.json()["published_at"] > since and m.json()["label"] == label for m in ms
        )

    label = photos[4].top_k[0].label
    assert sub.wait_for(fresh_state(0), 5), "no state after the first connect"
    t_restart = time.time()
    broker.restart(down_s=0.5)  # no new observations: the state comes from the reconnect itself
    assert sub.wait_for(fresh_state(t_restart), 15), "state not re-published after reconnecting"
    assert sub.wait_for(lambda ms: [m.text for m in ms if m.topic.endswith("/availability")][-1:] == ["online"], 5)
    sink.stop()
    sub.stop()


def test_broker_restarts_lose_nothing(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["edge-resnet/flap/events"]).start()
    sink = MqttSink(MqttConfig(url=broker.url, keepalive=10), "flap", ok_status, tmp_path)
    sink.start()
    done = threading.Event()
    count = [0]

    def produce() -> None:
        while not done.is_set():
            count[0] += 1
            sink.publish(observation(photos[count[0] % len(photos)], count[0], changed=True))
            time.sleep(0.02)

    t = threading.Thread(target=produce)
    t.start()
    restarts = 5
    try:
        for i in range(restarts):
            time.sleep(1.0)
            broker.restart(down_s=0.3 + 0.3 * (i % 3), hard=True)
        time.sleep(1.0)
    finally:
        done.set()
        t.join()
    sent = list(range(1, count[0] + 1))
    ok = all_arrived(sub, sent)
    check_delivery(sent, seqs_of(sub.on("edge-resnet/flap/events")), f"{restarts} broker kill -9/restarts")
    assert ok
    sink.stop()
    sub.stop()
    assert broker.restarts == restarts


def test_queue_survives_kill9_of_publisher(
    broker: Broker, real_photos: list[Classified], samples_dir: Path, tmp_path: Path
) -> None:
    pj = tmp_path / "photos.json"
    pj.write_text(to_json(real_photos))
    state = tmp_path / "state"
    sub = Subscriber(broker.port, ["edge-resnet/child/events"]).start()
    broker.kill()  # the broker is down while the daemon queues events
    child = start_child(broker, state, pj, samples_dir, 20)
    try:
        wait_line(child, "published 20")
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    finally:
        child.kill()
    q = EventQueue(state / "events.sqlite", 10000)
    assert len(q) == 20, "the events were not on disk before kill -9"
    q.close()
    broker.start()
    child = start_child(broker, state, pj, samples_dir, 3, hold=30)  # restarted daemon: 3 more label changes
    try:
        assert all_arrived(sub, list(range(1, 24)))
        check_delivery(list(range(1, 24)), seqs_of(sub.on("edge-resnet/child/events")), "queued across kill -9")
        child.send_signal(signal.SIGTERM)
        assert child.wait(5) == 0
    finally:
        child.kill()
        sub.stop()
    q = EventQueue(state / "events.sqlite", 10000)
    assert len(q) == 0, "acknowledged events were not deleted"
    q.close()


def test_broker_paused_like_a_partition(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    """SIGSTOP: the TCP connection stays up but nothing answers. Keepalive notices, the sink keeps
    queueing on disk, and after SIGCONT everything arrives in order."""
    sub = Subscriber(broker.port, ["edge-resnet/part/events"]).start()
    sink = MqttSink(MqttConfig(url=broker.url, keepalive=5), "part", ok_status, tmp_path)
    sink.start()
    n = 0
    for _ in range(5):
        n += 1
        sink.publish(observation(photos[n % len(photos)], n, changed=True))
    assert sub.wait_for(lambda ms: len(ms) >= 5, 10)
    broker.pause()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 9.0:  # > 1.5 x keepalive: the client must notice
            n += 1
            sink.publish(observation(photos[n % len(photos)], n, changed=True))
            time.sleep(0.1)
        ok, reason = sink.healthy()
        print(f"\nduring the partition: {reason}")
        assert ok and ("not acknowledged" in reason or "retrying" in reason), reason
    finally:
        broker.resume()
    sent = list(range(1, n + 1))
    assert all_arrived(sub, sent), sink.healthy()
    check_delivery(sent, seqs_of(sub.on("edge-resnet/part/events")), "9 s broker SIGSTOP")
    sink.stop()
    sub.stop()


def test_mqtts_with_ca_file_and_password(
    photos: list[Classified], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mqtts:// with the broker's CA file and a password from the environment; a wrong password is
    reported (not fatal) and the events wait on disk."""
    b = Broker(tmp_path / "tls-broker", tls=True, users={"cam": "pw with spaces", "test": "t"}).start()
    try:
        assert b.url.startswith("mqtts://") and b.ca_file is not None
        sub = Subscriber(b.plain_port, ["edge-resnet/+/events"], auth=("test", "t")).start()
        monkeypatch.setenv("EDGE_RESNET_MQTT_PASSWORD", "pw with spaces")
        cfg = MqttConfig(url=b.url, username="cam", ca_file=str(b.ca_file))
        sink = MqttSink(cfg, "tls", ok_status, tmp_path / "s1")
        sink.start()
        for i, c in enumerate(photos[:3], start=1):
            sink.publish(observation(c, i, changed=True))
        assert sub.wait_for(lambda ms: len(ms) >= 3, 10), sink.healthy()
        check_delivery([1, 2, 3], seqs_of(sub.on("edge-resnet/tls/events")), "mqtts + password")
        assert "connected" in sink.healthy()[1]
        sink.stop()
        av = retained(b.plain_port, "edge-resnet/tls/availability", auth=("test", "t"))
        assert av is not None and av.text == "offline"

        monkeypatch.setenv("EDGE_RESNET_MQTT_PASSWORD", "wrong")
        bad = MqttSink(cfg, "tls2", ok_status, tmp_path / "s2")
        bad.start()
        bad.publish(observation(photos[0], 1, changed=True))
        time.sleep(2.0)
        ok, reason = bad.healthy()
        print(f"\nwrong password: {reason}")
        assert ok and "refused" in reason and "1 events queued" in reason
        bad.stop()
        sub.stop()
    finally:
        b.stop()


def test_new_events_do_not_overtake_resent_ones(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    """paho calls on_connect before it re-sends what was in flight. Make that gap wide (a slow
    on_connect) with events in flight at the disconnect: new events must still come after old ones."""
    sub = Subscriber(broker.port, ["edge-resnet/order/events"]).start()
    sink = MqttSink(MqttConfig(url=broker.url, keepalive=5), "order", ok_status, tmp_path)
    fast_on_connect = sink._client.on_connect
    assert fast_on_connect is not None

    def slow_on_connect(*args: Any) -> None:  # paho's on_connect arguments, passed on as they come
        fast_on_connect(*args)
        time.sleep(0.5)  # the sink thread is awake and CONNECTED; paho has not re-sent yet

    sink._client.on_connect = slow_on_connect
    sink.start()
    n = 0

    def more(k: int) -> None:
        nonlocal n
        for _ in range(k):
            n += 1
            sink.publish(observation(photos[n % len(photos)], n, changed=True))
            time.sleep(0.02)

    more(3)
    assert sub.wait_for(lambda ms: len(ms) >= 3, 10)
    broker.pause()  # events go out but are not acknowledged: they are in flight
    more(10)
    broker.kill()  # SIGKILL a stopped process: the connection drops with 10 events in flight
    more(5)
    broker.start()
    more(10)
    sent = list(range(1, n + 1))
    assert all_arrived(sub, sent), sink.healthy()
    check_delivery(sent, seqs_of(sub.on("edge-resnet/order/events")), "reconnect with events in flight")
    sink.stop()
    sub.stop()


def test_full_queue_drops_oldest_and_publishes_the_count(
    broker: Broker, photos: list[Classified], tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, ["edge-resnet/small/#"]).start()
    broker.kill()
    sink = MqttSink(MqttConfig(url=broker.url, queue_max=3), "small", ok_status, tmp_path)
    sink.start()
    for i in range(1, 7):
        sink.publish(observation(photos[i % len(photos)], i, changed=True))
    time.sleep(0.5)
    assert sink.counters()["mqtt_events_dropped_total"] == 3 and len(sink.queue) == 3
    broker.start()
    assert sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/events")]) >= 3, 20)
    events = [m.json() for m in sub.on("edge-resnet/small/events")]
    assert [e["seq"] for e in events] == [4, 5, 6] and {e["dropped_total"] for e in events} == {3}
    assert sub.wait_for(lambda ms: any(m.topic.endswith("/state") and m.json()["events_dropped"] == 3 for m in ms), 5)
    sink.stop()
    sub.stop()


def test_log_rate_limit() -> None:
    from edge_resnet.sinks.mqtt.client import _RateLimit

    lim = _RateLimit(0.2)
    assert lim("lost") == (True, "")
    assert lim("lost") == (False, "") and lim("lost") == (False, "")
    assert lim("other")[0]
    time.sleep(0.25)
    assert lim("lost") == (True, " (2 more since the last such message)")


def test_sink_thread_failure_is_reported(
    photos: list[Classified], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}"), "boom", ok_status, tmp_path)

    def disk_full(body: object) -> int:
        raise OSError("database or disk is full")

    monkeypatch.setattr(sink.queue, "put", disk_full)
    sink.start()
    sink.publish(observation(photos[0], 1, changed=True))
    end = time.monotonic() + 5
    while sink.healthy()[0] and time.monotonic() < end:
        time.sleep(0.05)
    ok, reason = sink.healthy()
    assert not ok and "disk is full" in reason and "report" in reason
    sink.stop()


def test_state_follows_pipeline_health_without_waiting_for_heartbeat(
    broker: Broker, photos: list[Classified], tmp_path: Path
) -> None:
    health = {"ok": True}

    def status() -> Status:
        return Status(True, "ok") if health["ok"] else Status(False, "camera lost: no frame for 5.0 s from /dev/video0")

    sub = Subscriber(broker.port, ["edge-resnet/health/state"]).start()
    sink = MqttSink(MqttConfig(url=broker.url, heartbeat_s=600.0), "health", status, tmp_path)
    sink.start()
    sink.publish(observation(photos[0], 1, changed=True))
    assert sub.wait_for(lambda ms: any(m.json()["healthy"] is True for m in ms), 10)
    t0 = time.monotonic()
    health["ok"] = False  # the camera goes away: no new observation, only the status changes
    assert sub.wait_for(lambda ms: ms[-1].json()["healthy"] is False, 5)
    lost = sub.on("edge-resnet/health/state")[-1].json()
    print(f"\nstate says {lost['reason']!r} {time.monotonic() - t0:.1f} s after the camera went away")
    assert "camera lost" in lost["reason"] and lost["label"] == photos[0].top_k[0].label
    health["ok"] = True
    assert sub.wait_for(lambda ms: ms[-1].json()["healthy"] is True, 5)
    sink.stop()
    sub.stop()


def test_tls_failures_name_the_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """paho only says that a TLS connection failed; the sink says why: no CA for a private broker,
    or mqtts:// pointed at a plain listener."""
    b = Broker(tmp_path / "tls-broker", tls=True, users={"test": "t"}).start()
    try:
        assert tls_problem("127.0.0.1", b.port, str(b.ca_file)) is None
        untrusted = tls_problem("127.0.0.1", b.port, None)
        assert untrusted is not None and "ca_file" in untrusted, untrusted
        plain = tls_problem("127.0.0.1", b.plain_port, str(b.ca_file))
        assert plain is not None and "mqtt://" in plain, plain
        assert tls_problem("127.0.0.1", free_port(), None) is None  # nothing listening: not a TLS problem

        caplog.set_level(logging.WARNING, logger="edge_resnet")
        sink = MqttSink(MqttConfig(url=b.url), "noca", ok_status, tmp_path / "s")  # no ca_file
        sink.start()
        deadline = time.monotonic() + 10
        while "ca_file" not in sink.healthy()[1] and time.monotonic() < deadline:
            time.sleep(0.1)
        ok, reason = sink.healthy()
        print(f"\nno CA: {reason}")
        assert ok and "TLS certificate not accepted" in reason and "ca_file" in reason
        time.sleep(1.0)  # retries keep the diagnosis and do not log it again
        assert "ca_file" in sink.healthy()[1]
        assert sum("ca_file" in r.getMessage() for r in caplog.records) == 1
        sink.stop()
    finally:
        b.stop()
