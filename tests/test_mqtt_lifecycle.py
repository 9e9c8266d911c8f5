"""Issue 22: what the MQTT sink says at start, at a clean stop and while it has never reached its broker,
against a real mosquitto and through the real daemon. Each message is said once and is true: `online`
and the Home Assistant discovery config once at start (with the model's name), a device name HA can
show, a retained state that says `stopped` after a clean stop, a wrong broker host named as DNS, and
/healthz degraded (200) while MQTT has never connected."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink
from tests.helpers.broker import Broker, Message, Subscriber, broker, free_port, retained
from tests.helpers.observations import Classified, observation, synthetic_samples
from tests.helpers.run_child import RunChild, http_get, run_args
from tests.helpers.video import pick_samples, write_video

__all__ = ["broker"]  # the fixture

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
DNS_LINE = "broker host nosuch.invalid: name not resolved (DNS); check [mqtt] url"


@pytest.fixture(scope="module")
def photos() -> list[Classified]:
    return synthetic_samples(4)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path) -> Path:
    p = tmp_path_factory.mktemp("lifecycle") / "three.avi"
    write_video(p, pick_samples(samples_dir, 3), seconds_each=1.0, fps=10)
    return p


def ok_status() -> Status:
    return Status(True, "ok")


def texts(sub: Subscriber, topic: str) -> list[str]:
    return [m.text for m in sub.on(topic)]


def wait_until(pred: Callable[[], object], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_online_and_discovery_once_each_with_the_model_named(
    broker: Broker, photos: list[Classified], tmp_path: Path
) -> None:
    """The sink connects before the first frame is classified (the daemon starts its sinks first): `online`
    goes out once at the connect, discovery once the first observation names the model, not before
    with a placeholder and again after. A model swap re-announces discovery only; a new region adds
    its own config only."""
    avail, disc = "edge-resnet/edge-resnet/availability", "homeassistant/sensor/edge-resnet/label/config"
    door = "homeassistant/sensor/edge-resnet/door_label/config"
    sub = Subscriber(broker.port, ["edge-resnet/edge-resnet/#", "homeassistant/#"]).start()
    cfg = MqttConfig(url=broker.url, heartbeat_s=0.3, discovery_form="entity")
    sink = MqttSink(cfg, "edge-resnet", ok_status, tmp_path)
    sink.start()
    try:
        assert wait_until(lambda: sink.counters()["mqtt_connected"] == 1.0, 10)
        assert sub.wait_for(lambda ms: any(m.topic == avail for m in ms), 5)
        time.sleep(0.5)  # connected, no frame yet: nothing announces a model it does not know
        assert sub.on(disc) == []
        sink.publish(observation(photos[0], 1, changed=False))
        for i in range(2, 6):
            sink.publish(observation(photos[i % 4], i, changed=True))
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/events")]) >= 4, 10)
        time.sleep(1.0)  # a few heartbeats
        print(f"\nat start: availability {texts(sub, avail)}, {len(sub.on(disc))} discovery config(s)")
        assert texts(sub, avail) == ["online"], "online published more than once"
        assert len(sub.on(disc)) == 1, "discovery published more than once"
        device = sub.on(disc)[0].json()["device"]
        assert device["model"] == MODEL
        assert device["name"] == "edge-resnet", f"HA shows {device['name']!r} + the entity name"

        sink.publish(observation(photos[1], 6, changed=True, model="resnet50_int8.tflite"))  # SIGHUP swap
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == disc]) >= 2, 5)
        first_door = dataclasses.replace(observation(photos[2], 7, changed=False), region="door")
        sink.publish(first_door)
        sink.publish(dataclasses.replace(observation(photos[3], 8, changed=True), region="door"))
        assert sub.wait_for(lambda ms: any(m.topic == door for m in ms), 5)
        time.sleep(1.0)
        assert [m.json()["device"]["model"] for m in sub.on(disc)] == [MODEL, "resnet50_int8.tflite"]
        assert len(sub.on(door)) == 1 and sub.on(door)[0].json()["device"]["name"] == "edge-resnet"
        assert texts(sub, avail) == ["online"], "a model swap or a new region is not a new `online`"
    finally:
        sink.stop()
        sub.stop()


def test_device_name_is_the_device_id(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    sink = MqttSink(MqttConfig(url=broker.url, discovery_form="entity"), "kitchen", ok_status, tmp_path)
    sink.start()
    try:
        sink.publish(observation(photos[0], 1, changed=False))
        assert wait_until(lambda: retained(broker.port, "homeassistant/sensor/kitchen/label/config", 1.0), 10)
        doc = retained(broker.port, "homeassistant/sensor/kitchen/label/config")
        assert doc is not None
        assert doc.json()["device"]["name"] == "kitchen" and doc.json()["name"] == "Label"  # HA: "kitchen Label"
    finally:
        sink.stop()


def stopped_before_offline(msgs: list[Message], base: str) -> None:
    """The last retained state says stopped, and it arrived before the final `offline`."""
    ours = [m for m in msgs if m.topic in (f"{base}/state", f"{base}/availability")]
    last_state = max(i for i, m in enumerate(ours) if m.topic.endswith("/state"))
    last_offline = max(i for i, m in enumerate(ours) if m.text == "offline")
    assert last_state < last_offline, "the final state came after `offline`"
    doc = ours[last_state].json()
    assert doc["healthy"] is False and doc["reason"] == "stopped", doc


def test_clean_stop_leaves_a_stopped_state(broker: Broker, photos: list[Classified], tmp_path: Path) -> None:
    base = "edge-resnet/cam"
    sub = Subscriber(broker.port, [f"{base}/#"]).start()
    sink = MqttSink(MqttConfig(url=broker.url), "cam", ok_status, tmp_path)
    sink.start()
    sink.publish(observation(photos[0], 1, changed=False))
    sink.publish(dataclasses.replace(observation(photos[1], 2, changed=False), region="door"))
    assert sub.wait_for(lambda ms: any(m.topic == f"{base}/door/state" for m in ms), 10)
    t0 = time.monotonic()
    sink.stop(2.0)
    took = time.monotonic() - t0
    print(f"\nclean stop in {took:.2f} s")
    assert took < 2.5
    for topic in (f"{base}/state", f"{base}/door/state"):
        st = retained(broker.port, topic)
        assert st is not None
        doc = st.json()
        assert doc["healthy"] is False and doc["reason"] == "stopped", f"{topic} retained {doc}"
        assert doc["label"] is not None  # the last label stays readable
    av = retained(broker.port, f"{base}/availability")
    assert av is not None and av.text == "offline"
    assert sub.wait_for(lambda ms: any(m.text == "offline" for m in ms), 5)
    stopped_before_offline(sub.messages, base)
    sub.stop()


def test_wrong_host_is_named_as_dns_once_and_refused_as_refused(
    tmp_path: Path, photos: list[Classified], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_resnet")
    sink = MqttSink(MqttConfig(url="mqtt://nosuch.invalid:1883"), "dns", ok_status, tmp_path / "a")
    sink.start()
    try:
        sink.publish(observation(photos[0], 1, changed=True))
        assert wait_until(lambda: "DNS" in sink.healthy()[1], 10), sink.healthy()
        time.sleep(2.5)  # paho retries every 1..5 s: more failures, no more lines
        ok, words = sink.healthy()
        print(f"\nwrong host: {words}")
        assert ok and words.startswith("degraded: mqtt never connected; "), words
        assert "nosuch.invalid" in words and "name not resolved (DNS)" in words and "[mqtt] url" in words
        assert "1 events queued" in words and "refused" not in words
        lines = [r.getMessage() for r in caplog.records if "nosuch.invalid" in r.getMessage()]
        assert sum(DNS_LINE in line for line in lines) == 1 and len(lines) == 1, lines
    finally:
        sink.stop()
    caplog.clear()
    port = free_port()
    sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{port}"), "down", ok_status, tmp_path / "b")
    sink.start()
    try:
        assert wait_until(lambda: "refused" in sink.healthy()[1], 10), sink.healthy()
        ok, words = sink.healthy()
        print(f"broker down: {words}")
        assert ok and words.startswith("degraded: mqtt never connected; ") and "DNS" not in words
        assert "connection refused" in words
        lines = [r.getMessage() for r in caplog.records if f"127.0.0.1:{port}" in r.getMessage()]
        assert len(lines) == 1 and "connection refused" in lines[0] and "DNS" not in lines[0], lines
    finally:
        sink.stop()


def test_connected_once_then_broker_gone_is_not_degraded(
    broker: Broker, photos: list[Classified], tmp_path: Path
) -> None:
    """A broker that went away after a connect: the words say so, as before; nothing is degraded."""
    sink = MqttSink(MqttConfig(url=broker.url), "gone", ok_status, tmp_path)
    sink.start()
    try:
        assert wait_until(lambda: sink.counters()["mqtt_connected"] == 1.0, 10)
        broker.kill()
        assert wait_until(lambda: sink.counters()["mqtt_connected"] == 0.0, 10)
        time.sleep(1.5)  # at least one failed reconnect
        ok, words = sink.healthy()
        print(f"\nbroker gone: {words}")
        assert ok and not words.startswith("degraded") and "disconnected" in words and "retrying" in words
    finally:
        sink.stop()


class Daemon(RunChild):
    def __init__(self, args: list[str], state_dir: Path) -> None:
        super().__init__(args, dict(os.environ, STATE_DIRECTORY=str(state_dir), PYTHONUNBUFFERED="1"))


def test_daemon_start_and_clean_stop_on_mqtt(
    broker: Broker, video: Path, mobilenet_quant: Path, labels_1001: Path, tmp_path: Path
) -> None:
    """Through `edge-resnet run` with the default device_id: one `online`, one discovery config naming
    the model and the device "edge-resnet"; SIGTERM leaves state `stopped` (healthy false) before `offline`."""
    base, disc = "edge-resnet/edge-resnet", "homeassistant/device/edge-resnet/config"  # the default form
    sub = Subscriber(broker.port, [f"{base}/#", "homeassistant/#"]).start()
    d = Daemon(run_args(mobilenet_quant, labels_1001, video, "--loop", "--mqtt", broker.url), tmp_path / "state")
    try:
        assert sub.wait_for(
            lambda ms: sum(m.topic == f"{base}/state" and m.json()["label"] is not None for m in ms) >= 2, 60
        ), d.tail()
        assert sub.wait_for(lambda ms: any(m.topic == f"{base}/events" for m in ms), 30), d.tail()
        print(f"\ndaemon start: availability {texts(sub, f'{base}/availability')}, "
              f"{len(sub.on(disc))} discovery config(s)")  # fmt: skip
        assert texts(sub, f"{base}/availability") == ["online"]
        assert len(sub.on(disc)) == 1
        device = sub.on(disc)[0].json()["dev"]
        assert device["name"] == "edge-resnet" and device["mdl"] == mobilenet_quant.name
        assert sub.on(disc)[0].json()["cmps"]["label"]["p"] == "sensor"
        assert sub.on(f"{base}/state")[-1].json()["healthy"] is True
        t0 = time.monotonic()
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0, d.tail()
        took = time.monotonic() - t0
        print(f"SIGTERM: exit 0 in {took:.2f} s")
        assert took < 5.0
    finally:
        d.kill()
    st = retained(broker.port, f"{base}/state")
    assert st is not None and st.json()["healthy"] is False and st.json()["reason"] == "stopped", st
    assert sub.wait_for(lambda ms: any(m.text == "offline" for m in ms), 5)
    stopped_before_offline(sub.messages, base)
    sub.stop()


def test_daemon_healthz_degraded_while_mqtt_never_connected(
    broker: Broker, video: Path, mobilenet_quant: Path, labels_1001: Path, tmp_path: Path
) -> None:
    """A wrong broker host: /healthz answers 200 (classification works; a restart cannot fix a config
    error, so a probe must not restart the daemon over it) with the first line "degraded: mqtt never
    connected"; the mqtt line names the DNS failure; the log says it once. With a broker that connected
    once and then went away, /healthz says "ok" as before."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    args = run_args(mobilenet_quant, labels_1001, video, "--loop", "--http", f"127.0.0.1:{port}")
    d = Daemon([*args, "--mqtt", "mqtt://nosuch.invalid:1883"], tmp_path / "s1")
    try:
        assert wait_until(lambda: http_get(url)[0] == 200 and "DNS" in http_get(url)[1], 60), d.tail()
        time.sleep(3.0)  # more failed retries
        code, body = http_get(url)
        lines = body.splitlines()
        print(f"\nwrong host: /healthz {code}\n  " + "\n  ".join(lines))
        assert code == 200 and lines[0] == "degraded: mqtt never connected", lines
        mqtt_line = next(line for line in lines if line.startswith("mqtt: "))
        assert "name not resolved (DNS)" in mqtt_line and "nosuch.invalid" in mqtt_line
        logged = [line for line in d.err if DNS_LINE in line]
        assert len(logged) == 1, d.tail()
    finally:
        d.kill()
    d = Daemon([*args, "--mqtt", broker.url], tmp_path / "s2")
    try:

        def ok_and_connected() -> bool:
            lines = http_get(url)[1].splitlines()
            return lines[:1] == ["ok"] and any(line.startswith("mqtt: mqtt connected") for line in lines)

        assert wait_until(ok_and_connected, 60), d.tail()
        broker.kill()
        assert wait_until(lambda: "disconnected" in http_get(url)[1], 20), http_get(url)
        code, body = http_get(url)
        print(f"broker gone after a connect: /healthz {code}\n  " + "\n  ".join(body.splitlines()))
        assert code == 200 and body.splitlines()[0] == "ok"
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0, d.tail()
    finally:
        d.kill()
