"""Issue 24, must-show 2: several brokers. `[mqtt] url` as a list; the daemon connects to the first that
answers, fails over to the next when it goes, stays there while it works (no flapping back), and goes
back when that one fails in turn; no event lost (seq) through a real mosquitto bridge pair.

Layers: the rotation and backoff as pure functions (failover.Brokers), the config rules, the sink
against real brokers (first that answers, each broker's failure named), and the daemon end to end."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from edge_resnet.config import load
from edge_resnet.configtools import error_lines
from edge_resnet.errors import ConfigError
from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink
from edge_resnet.sinks.mqtt.eventqueue import EventQueue
from edge_resnet.sinks.mqtt.failover import Broker as Endpoint
from edge_resnet.sinks.mqtt.failover import Brokers
from tests.helpers.broker import Broker, Message, Subscriber, free_port, retained
from tests.helpers.observations import Classified, observation, synthetic_samples
from tests.helpers.run_child import RunChild, http_get, run_args
from tests.helpers.video import pick_samples, write_video

DEVICE = "failover"
BASE = f"edge-resnet/{DEVICE}"
CLIENT_ID = f"edge-resnet-{DEVICE}"


def ok_status() -> Status:
    return Status(True, "ok")


def wait_until(pred: Callable[[], object], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


# -- the rotation and backoff, pure ----------------------------------------------------------------


def test_rotation_stays_on_the_working_broker_and_backs_off_per_round() -> None:
    a, b, c = Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 3)
    bs = Brokers([a, b, c], rng=random.Random(1), base=1.0, cap=5.0)
    assert bs.current == a and bs.position == "broker 1 of 3"
    waits = []
    order = []
    for _ in range(9):  # three whole rounds fail
        waits.append(bs.failed())
        order.append(bs.current)
    assert order == [b, c, a] * 3
    # first round 0.5..1 s, second 1..2 s, third 2..4 s: grows per round of the list, not per broker
    assert all(0.5 <= w <= 1.0 for w in waits[:3]) and all(1.0 <= w <= 2.0 for w in waits[3:6])
    assert all(2.0 <= w <= 4.0 for w in waits[6:9])
    for _ in range(9):
        assert bs.failed() <= 5.0  # capped
    while bs.current != b:
        bs.failed()
    bs.connected()  # b works: stay on it
    assert bs.current == b and bs.failures == 0
    w = bs.lost()  # b dropped us: b again first, soon
    assert bs.current == b and 0.5 <= w <= 1.0
    bs.failed()  # b does not answer: on to c, the next after it (not back to a)
    assert bs.current == c
    single = Brokers([a], rng=random.Random(2))
    assert single.position == ""
    assert all(single.failed() <= 5.0 for _ in range(5)) and single.current == a


def test_url_list_config_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nurl = ["mqtts://a.lan", "mqtts://b.lan:8884"]\nca_file = "/etc/ca.pem"\n')
    m = load(str(cfg)).mqtt
    assert m is not None and m.endpoints() == [("a.lan", 8883, True), ("b.lan", 8884, True)]
    assert m.endpoint() == ("a.lan", 8883, True)  # the first, for callers that know one broker
    assert MqttConfig(url="mqtt://x").urls == ["mqtt://x"]
    for kw, words in [
        ({"url": ["mqtt://a", "mqtts://b"]}, "mixes mqtt:// and mqtts://"),
        ({"url": []}, "the list is empty"),
        ({"url": ["mqtt://a", "mqtt://a:1883"]}, "listed twice"),
        ({"url": ["mqtt://a", "http://b"]}, "scheme 'http'"),
        ({"url": "mqtts://a", "cert_file": "c.pem"}, "set without key_file"),
        ({"url": "mqtts://a", "key_file": "k.pem"}, "set without cert_file"),
        ({"url": "mqtt://a", "cert_file": "c.pem", "key_file": "k.pem"}, "needs TLS"),
    ]:
        with pytest.raises(ConfigError, match=words):
            MqttConfig(**kw)  # type: ignore[arg-type]
    cfg.write_text('[mqtt]\nurl = ["mqtt://a", "mqtts://b"]\ncert_file = "c.pem"\n')
    with pytest.raises(ConfigError) as e:
        load(str(cfg))
    lines = error_lines(e.value)
    print("\n" + "\n".join(lines))
    assert len(lines) == 2 and "mixes" in lines[0] and "[mqtt] cert_file: set without key_file" in lines[1]
    cfg.write_text('[mqtt]\nprotocol = "3"\n')
    with pytest.raises(ConfigError, match=r"\[mqtt\] protocol: '3' is not one of '5', '3.1.1'"):
        load(str(cfg))


# -- the sink against real brokers --------------------------------------------------------------


def test_sink_connects_to_the_first_broker_that_answers(tmp_path: Path) -> None:
    photos: list[Classified] = synthetic_samples(3)
    down, dns = free_port(), "mqtt://nosuch.invalid:1883"
    b = Broker(tmp_path / "b").start()
    sub = Subscriber(b.port, [f"{BASE}/events"]).start()
    sink = MqttSink(MqttConfig(url=[f"mqtt://127.0.0.1:{down}", dns, b.url]), DEVICE, ok_status, tmp_path / "s")
    t0 = time.monotonic()
    sink.start()
    try:
        for i, c in enumerate(photos, start=1):
            sink.publish(observation(c, i, changed=True))
        assert sub.wait_for(lambda ms: len(ms) >= 3, 20), sink.healthy()
        took = time.monotonic() - t0
        words = sink.healthy()[1]
        print(f"\nfirst that answers (3rd of 3) after {took:.1f} s: {words}")
        assert words.startswith(f"mqtt connected to 127.0.0.1:{b.port} (broker 3 of 3)"), words
        assert took < 10
    finally:
        sink.stop()
        sub.stop()
        b.stop()

    sink = MqttSink(MqttConfig(url=[f"mqtt://127.0.0.1:{down}", dns]), DEVICE, ok_status, tmp_path / "s2")
    sink.start()
    try:
        assert wait_until(lambda: "DNS" in sink.healthy()[1] and "refused" in sink.healthy()[1], 15), sink.healthy()
        ok, words = sink.healthy()
        print(f"none answers: {words}")
        assert ok and words.startswith("degraded: mqtt never connected; ")
        assert f"broker 127.0.0.1:{down}: connection refused" in words
        assert "broker host nosuch.invalid: name not resolved (DNS)" in words
    finally:
        sink.stop()


# -- end to end: a bridged pair, the daemon, kill the one in use twice ------------------------------


class Daemon(RunChild):
    def __init__(self, args: list[str], state_dir: Path) -> None:
        super().__init__(args, dict(os.environ, STATE_DIRECTORY=str(state_dir), PYTHONUNBUFFERED="1"))


def seqs(msgs: list[Message], since: float = 0.0) -> list[int]:
    return [int(m.json()["seq"]) for m in msgs if m.topic == f"{BASE}/events" and m.at >= since]


def onlines(msgs: list[Message], since: float) -> list[float]:
    return [
        m.at
        for m in msgs
        if m.topic == f"{BASE}/availability" and m.text == "online" and not m.retain and m.at >= since
    ]


def connects(b: Broker) -> int:
    """How many times the daemon's client connected to `b` (its log, at notice level)."""
    try:
        return b.log.read_text(errors="replace").count(f" as {CLIENT_ID} ")
    except OSError:
        return 0


def test_daemon_fails_over_to_the_bridged_broker_and_back_losing_nothing(
    mobilenet_quant: Path, labels_1001: Path, samples_dir: Path, tmp_path: Path
) -> None:
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 4, start=5), seconds_each=1.0, fps=10)
    a = Broker(tmp_path / "a").start()
    b = Broker(tmp_path / "b", bridge=[a.port]).start()  # b bridges the device topics with a, both ways
    cfg = tmp_path / "failover.toml"
    cfg.write_text(f'device_id = "{DEVICE}"\n[mqtt]\nurl = ["{a.url}", "{b.url}"]\nkeepalive = 5\nheartbeat_s = 2.0\n')
    http = free_port()
    healthz = f"http://127.0.0.1:{http}/healthz"
    sub_a = Subscriber(a.port, [f"{BASE}/#"]).start()
    sub_b = Subscriber(b.port, [f"{BASE}/#"]).start()
    state = tmp_path / "state"
    d = Daemon(
        run_args(mobilenet_quant, labels_1001, video, "--loop", "--config", str(cfg), "--http", f"127.0.0.1:{http}"),
        state,
    )
    try:

        def events_since(sub: Subscriber, since: float, n: int, timeout: float) -> bool:
            return sub.wait_for(lambda ms: len(seqs(ms, since)) >= n, timeout)

        assert events_since(sub_a, 0, 3, 90), d.tail()
        assert connects(a) == 1 and connects(b) == 0
        assert f"connected to 127.0.0.1:{a.port} (broker 1 of 2)" in http_get(healthz)[1]

        # 1. the first broker dies: the daemon publishes on the second
        killed = time.time()
        a.kill()
        assert sub_b.wait_for(lambda ms: bool(onlines(ms, killed)), 30), d.tail()
        online_s = onlines(sub_b.messages, killed)[0] - killed
        assert events_since(sub_b, killed, 1, 30), d.tail()
        first_event_s = min(m.at for m in sub_b.messages if m.topic == f"{BASE}/events" and m.at >= killed) - killed
        print(f"\nfirst broker killed: online on the second after {online_s:.1f} s, first event there "
              f"after {first_event_s:.1f} s")  # fmt: skip
        assert online_s < 10.0 and first_event_s < 10.0
        assert connects(b) == 1
        assert events_since(sub_b, killed, 4, 30), d.tail()

        # 2. the first comes back: the daemon stays on the second (no flapping), the bridge catches up
        back = time.time()
        a.start()
        assert sub_a.wait_for(lambda ms: bool(seqs(ms, back)), 30), "nothing bridged to the first after its return"
        time.sleep(6.0)
        words = http_get(healthz)[1]
        assert connects(a) == 1 and f"connected to 127.0.0.1:{b.port} (broker 2 of 2)" in words, words
        seen_b = set(seqs(sub_b.messages))
        top = max(seen_b)
        lost_1 = sorted(set(range(1, top + 1)) - seen_b)
        print(f"after the failover, seen on the second: seq 1..{top}, {len(lost_1)} lost; the daemon stays "
              f"there after the first returned ({connects(a)} connect to the first in all)")  # fmt: skip
        assert not lost_1, lost_1
        for broker in (a, b):  # the first's return brought no stale Last Will `offline` with it
            av = retained(broker.port, f"{BASE}/availability")
            assert av is not None and av.text == "online", (broker.port, av)

        # 3. the second dies in turn: back to the first
        killed2 = time.time()
        b.kill()
        assert sub_a.wait_for(lambda ms: bool(onlines(ms, killed2)), 30), d.tail()
        back_s = onlines(sub_a.messages, killed2)[0] - killed2
        assert events_since(sub_a, killed2, 3, 30), d.tail()
        first_back_s = min(m.at for m in sub_a.messages if m.topic == f"{BASE}/events" and m.at >= killed2) - killed2
        print(f"second broker killed: online on the first again after {back_s:.1f} s, first event after "
              f"{first_back_s:.1f} s")  # fmt: skip
        assert back_s < 10.0 and first_back_s < 10.0
        assert connects(a) == 2

        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(15) == 0, d.tail()
    finally:
        d.kill()
    q = EventQueue(state / "events.sqlite", 10000)
    left = len(q)
    q.close()
    assert left == 0, f"{left} events still queued after a clean stop"
    with closing(sqlite3.connect(state / "events.sqlite")) as db:  # the last seq ever given (AUTOINCREMENT)
        last = int(db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0])
    b.start()  # anything the second acknowledged but had not yet bridged reaches the first now
    try:
        sub_a.wait_for(lambda ms: set(seqs(ms)) >= set(range(1, last + 1)), 20)
        got = seqs(sub_a.messages)
        lost = sorted(set(range(1, last + 1)) - set(got))
        print(f"on the first at the end: {last} events made (seq 1..{last}), {len(set(got))} received, "
              f"{len(lost)} lost, {len(got) - len(set(got))} duplicates")  # fmt: skip
        assert not lost, lost
    finally:
        sub_a.stop()
        sub_b.stop()
        a.stop()
        b.stop()
