"""Home Assistant discovery as the daemon's MQTT sink publishes it (issue 24), against a real mosquitto:
`discovery_form = "device"` leaves exactly one retained `homeassistant/device/<id>/config`,
`"entity"` one retained config per entity (label sensor and label-change event, each region's too),
a switch between runs migrates and clears the other form's configs so Home Assistant shows no
duplicates, and every retained config read back from the broker passes Home Assistant's own schema
(tests/helpers/ha_schema.py). Only entities whose topics the daemon serves are announced."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink
from tests.helpers import ha_schema
from tests.helpers.broker import Broker, Message, Subscriber, broker, retained
from tests.helpers.observations import observation, synthetic_samples

__all__ = ["broker"]

ENTITY_TOPICS = {
    "homeassistant/sensor/cam1/label/config",
    "homeassistant/event/cam1/label_event/config",
}
DEVICE_TOPIC = "homeassistant/device/cam1/config"


@pytest.fixture(scope="module")
def ha() -> Path:
    return ha_schema.require_ha_python()


def ok_status() -> Status:
    return Status(True, "ok")


def run_sink(
    b: Broker, state_dir: Path, form: Literal["device", "entity"], regions: tuple[str, ...] = ()
) -> list[Message]:
    """Start the sink, classify a few frames (whole frame, then each region), stop it cleanly; every
    discovery message it sent, in order (not the retained ones an earlier run left)."""
    sub = Subscriber(b.port, ["homeassistant/#"]).start()
    cfg = MqttConfig(url=b.url, heartbeat_s=0.3, discovery_form=form)
    sink = MqttSink(cfg, "cam1", ok_status, state_dir)
    sink.start()
    try:
        samples = synthetic_samples(3)
        sink.publish(observation(samples[0], 1, changed=False))
        sink.publish(observation(samples[1], 2, changed=True))
        for i, name in enumerate(regions):
            sink.publish(dataclasses.replace(observation(samples[2], 3 + i, changed=False), region=name))
        want = DEVICE_TOPIC if form == "device" else "homeassistant/event/cam1/label_event/config"
        assert sub.wait_for(lambda ms: any(m.topic == want for m in ms), 10), "no discovery published"
        time.sleep(1.0)  # a few heartbeats: nothing more should be announced
    finally:
        sink.stop()
        sub.stop()
    return [m for m in sub.messages if not m.retain]


def retained_configs(b: Broker) -> dict[str, str]:
    """Every retained config on the broker now, as a new subscriber (Home Assistant starting) sees them."""
    sub = Subscriber(b.port, ["homeassistant/#"]).start()
    time.sleep(1.0)
    sub.stop()
    return {m.topic: m.text for m in sub.messages if m.retain}


def judged_ok(ha: Path, configs: dict[str, str]) -> list[ha_schema.Verdict]:
    judged = ha_schema.check(list(configs.items()), python=ha)
    assert judged.errors() == [], judged.errors()
    return judged.verdicts


def test_device_form_is_one_retained_message(broker: Broker, tmp_path: Path, ha: Path) -> None:
    """Device-based: one retained message for the whole device, sent once (the heartbeats and state
    publishes do not repeat it), with the sensor and event of the whole frame and of each region, and
    nothing else (image, select, button and update topics are not served yet)."""
    sent = run_sink(broker, tmp_path, "device", regions=("door",))
    ours = [m for m in sent if m.topic == DEVICE_TOPIC]
    configs = retained_configs(broker)
    print(f"\ndevice form: {len(ours)} device config(s) sent, retained: {sorted(configs)}")
    assert set(configs) == {DEVICE_TOPIC}, configs
    doc = json.loads(configs[DEVICE_TOPIC])
    assert {k: c["p"] for k, c in doc["cmps"].items()} == {
        "label": "sensor",
        "label_event": "event",
        "door_label": "sensor",
        "door_label_event": "event",
    }
    assert doc["dev"]["name"] == "cam1" and doc["dev"]["mdl"] == "mobilenet_v2_1.0_224_quant.tflite"
    assert doc["cmps"]["door_label"]["stat_t"] == "edge-resnet/cam1/door/state"
    assert doc["cmps"]["label_event"]["stat_t"] == "edge-resnet/cam1/events"
    verdicts = judged_ok(ha, configs)
    assert [v.kind for v in verdicts] == ["device"] and len(verdicts[0].entities) == 4


def test_entity_form_is_one_retained_message_per_entity(broker: Broker, tmp_path: Path, ha: Path) -> None:
    sent = run_sink(broker, tmp_path, "entity")
    configs = retained_configs(broker)
    print(f"\nentity form: retained {sorted(configs)}")
    assert set(configs) == ENTITY_TOPICS, configs
    assert all(len([m for m in sent if m.topic == t]) == 1 for t in ENTITY_TOPICS), "a config sent twice"
    assert json.loads(configs["homeassistant/sensor/cam1/label/config"])["state_topic"] == "edge-resnet/cam1/state"
    assert [v.kind for v in judged_ok(ha, configs)] == ["entity", "entity"]


def test_switching_form_clears_the_other_forms_configs(broker: Broker, tmp_path: Path, ha: Path) -> None:
    """Per entity, then device-based, then per entity again (the same state_dir, as a daemon restarted
    with another discovery_form): each time only the new form's configs stay retained, and the old
    ones were first told to migrate (Home Assistant keeps the entities' ids and history)."""
    run_sink(broker, tmp_path, "entity")
    assert set(retained_configs(broker)) == ENTITY_TOPICS

    sent = run_sink(broker, tmp_path, "device")
    configs = retained_configs(broker)
    print(f"\nentity -> device: retained {sorted(configs)}")
    assert set(configs) == {DEVICE_TOPIC}, configs
    for t in ENTITY_TOPICS:
        texts = [m.text for m in sent if m.topic == t]
        assert texts[0] == json.dumps({"migrate_discovery": True}) and texts[-1] == "", (t, texts)
    judged_ok(ha, configs)

    sent = run_sink(broker, tmp_path, "entity")
    configs = retained_configs(broker)
    print(f"device -> entity: retained {sorted(configs)}")
    assert set(configs) == ENTITY_TOPICS, configs
    assert [m.text for m in sent if m.topic == DEVICE_TOPIC][-1] == ""
    judged_ok(ha, configs)


def test_upgrade_to_device_form_clears_the_old_label_sensor(broker: Broker, tmp_path: Path, ha: Path) -> None:
    """A device whose earlier version published the per-entity label sensor (no discovery.json in
    state_dir) moved to the device form: the old retained sensor config goes, the device's stays."""
    old: dict[str, Any] = {"name": "Label", "unique_id": "edge_resnet_cam1_label", "state_topic": "x/cam1/state"}
    pub = Subscriber(broker.port, ["unused/#"]).start()
    info = pub.client.publish("homeassistant/sensor/cam1/label/config", json.dumps(old), qos=1, retain=True)
    info.wait_for_publish(5)
    pub.stop()
    assert retained(broker.port, "homeassistant/sensor/cam1/label/config") is not None
    run_sink(broker, tmp_path, "device")
    configs = retained_configs(broker)
    assert set(configs) == {DEVICE_TOPIC}, configs
    judged_ok(ha, configs)
