"""A part of the frame that no longer runs leaves Home Assistant: a `[[region]]` removed from the config
(SIGHUP or restart), or the whole frame's entities once regions run, on a real mosquitto. The entities of
what is gone are removed in both discovery forms, as Home Assistant documents it:
- device-based: the device document once with each gone component reduced to its platform
  (`"yard_label": {"p": "sensor"}`: Home Assistant deletes the entity and its registry entry), then the
  document without them, which is what stays retained;
- per entity: an empty retained config on each gone entity's topic.
Before, a removed region's configs stayed retained and Home Assistant kept showing its entities. The
removing document is read by Home Assistant 2025.1.4's own device-discovery parser, every config left
retained by its schemas (tests/helpers/ha_schema.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from edge_resnet.observation import Status
from edge_resnet.sinks.mqtt import MqttConfig, MqttSink
from tests.helpers import ha_schema
from tests.helpers.broker import Broker, Message, Subscriber, broker
from tests.helpers.observations import observation, synthetic_samples
from tests.helpers.run_child import RunChild
from tests.helpers.video import pick_samples, write_video

__all__ = ["broker"]  # the fixture

DEVICE_TOPIC = "homeassistant/device/cam1/config"
Form = Literal["device", "entity"]

# What Home Assistant's MQTT integration does with a device document (discovery.py, 2025.1): parse and
# validate it (`_parse_device_payload`), then for each component pop the platform; a component left empty
# is a removal ("the payload is assumed to remove the existing config").
_HA_REMOVED = """
import json, sys
from homeassistant.components.mqtt import discovery as ha
out = []
for payload in json.load(sys.stdin):
    doc = ha._parse_device_payload(None, payload, "cam1", None)
    out.append(None if not doc else sorted(k for k, c in doc["components"].items() if set(c) == {"platform"}))
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def ha() -> Path:
    return ha_schema.require_ha_python()


def ha_removes(ha: Path, payloads: list[str]) -> list[list[str] | None]:
    """For each device document: the components Home Assistant removes (None: it refuses the document)."""
    p = subprocess.run([str(ha), "-I", "-c", _HA_REMOVED], input=json.dumps(payloads), capture_output=True,
                       text=True, timeout=300, check=True)  # fmt: skip
    out: list[list[str] | None] = json.loads(p.stdout)
    return out


def retained_configs(b: Broker) -> dict[str, str]:
    """Every retained config on the broker now, as Home Assistant starting would read them."""
    sub = Subscriber(b.port, ["homeassistant/#"]).start()
    time.sleep(1.0)
    sub.stop()
    return {m.topic: m.text for m in sub.messages if m.retain}


def entities_in(configs: dict[str, str]) -> set[str]:
    """The entity keys the retained configs announce, in either form."""
    keys: set[str] = set()
    for topic, text in configs.items():
        if topic.startswith("homeassistant/device/"):
            keys |= set(json.loads(text)["cmps"])
        else:
            keys.add(topic.split("/")[3])
    return keys


def judged_ok(ha: Path, configs: dict[str, str]) -> None:
    judged = ha_schema.check(list(configs.items()), python=ha)
    assert judged.errors() == [], judged.errors()


def feed(sink: MqttSink, parts: tuple[str | None, ...], seq: int) -> None:
    samples = synthetic_samples(2)
    for part in parts:
        sink.publish(dataclasses.replace(observation(samples[0], seq, changed=False), region=part))


def wait_entities(b: Broker, want: set[str], timeout: float = 10.0) -> dict[str, str]:
    end = time.monotonic() + timeout
    while True:
        configs = retained_configs(b)
        if entities_in(configs) == want or time.monotonic() > end:
            return configs


@pytest.mark.parametrize("form", ["device", "entity"])
def test_what_no_longer_runs_leaves_home_assistant(broker: Broker, tmp_path: Path, ha: Path, form: Form) -> None:
    """Regions door and yard; yard removed (a reload: the daemon tells the sink), then a restart with no
    regions at all (the whole frame is classified again): each time only what runs stays announced."""
    cfg = MqttConfig(url=broker.url, heartbeat_s=0.3, discovery_form=form)
    sub = Subscriber(broker.port, ["homeassistant/#"]).start()
    sink = MqttSink(cfg, "cam1", lambda: Status(True, "ok"), tmp_path)
    sink.set_regions(["door", "yard"])
    sink.start()
    try:
        feed(sink, (None, "door", "yard"), 1)  # a whole-frame observation is not what runs: ignored
        both = {"door_label", "door_label_event", "yard_label", "yard_label_event"}
        assert entities_in(wait_entities(broker, both)) == both
        sink.set_regions(["door"])  # SIGHUP without yard
        feed(sink, (None, "door", "yard"), 2)  # yard's last frames, before the pipeline swaps: ignored
        configs = wait_entities(broker, {"door_label", "door_label_event"})
    finally:
        sink.stop()
    print(f"\n{form}: after the reload, retained {sorted(configs)}")
    assert entities_in(configs) == {"door_label", "door_label_event"}
    judged_ok(ha, configs)
    sent = [m for m in sub.messages if not m.retain]
    if form == "device":
        docs = [m.text for m in sent if m.topic == DEVICE_TOPIC]
        removing = [d for d in docs if {"yard_label", "yard_label_event"} <= set(json.loads(d)["cmps"])]
        assert json.loads(removing[-1])["cmps"]["yard_label"] == {"p": "sensor"}
        assert docs[-1] == configs[DEVICE_TOPIC]  # the document without them came after, and stays
        assert ha_removes(ha, [removing[-1]]) == [["yard_label", "yard_label_event"]]
    else:
        for key, platform in (("yard_label", "sensor"), ("yard_label_event", "event")):
            assert [m.text for m in sent if m.topic == f"homeassistant/{platform}/cam1/{key}/config"][-1] == ""

    sink = MqttSink(cfg, "cam1", lambda: Status(True, "ok"), tmp_path)  # restarted without [[region]]
    sink.set_regions([])
    sink.start()
    try:
        feed(sink, (None,), 3)
        configs = wait_entities(broker, {"label", "label_event"})
    finally:
        sink.stop()
        sub.stop()
    print(f"{form}: after a restart without regions, retained {sorted(configs)}")
    assert entities_in(configs) == {"label", "label_event"}
    judged_ok(ha, configs)
    record = json.loads((tmp_path / "discovery.json").read_text())
    assert record["form"] == form and set(record["topics"]) == set(configs)


def test_a_region_removed_by_sighup_leaves_home_assistant(
    broker: Broker, tmp_path: Path, ha: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    """The real daemon: two regions, the config rewritten with one, SIGHUP. The removed region's
    sensor and event leave the retained device document, after a document that removes them."""
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 2), seconds_each=1.0, fps=10, size=(640, 240))
    conf = tmp_path / "c.toml"

    def write(regions: list[str]) -> None:
        boxes = {"left": "[0, 0, 320, 240]", "right": "[320, 0, 640, 240]"}
        conf.write_text("\n".join([
            'device_id = "cam1"',
            f'state_dir = "{tmp_path / "state"}"',
            f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\nthreads = 1',
            f'[source]\ntype = "file"\npath = "{video}"\nloop = true',
            "[pipeline]\nmax_fps = 5",
            f'[mqtt]\nurl = "{broker.url}"',
            *(f'[[region]]\nname = "{r}"\nroi = {boxes[r]}' for r in regions),
        ]) + "\n")  # fmt: skip

    def regions_in(messages: list[Message]) -> set[str] | None:
        """The regions' components of the last device document (the buttons and such left out)."""
        docs = [m for m in messages if m.topic == DEVICE_TOPIC and m.payload]
        cmps: dict[str, Any] = json.loads(docs[-1].text)["cmps"] if docs else {}
        return {k for k in cmps if k.startswith(("left_", "right_"))} if docs else None

    write(["left", "right"])
    sub = Subscriber(broker.port, ["homeassistant/#"]).start()
    d = RunChild(["--config", str(conf)], dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        both = {"left_label", "left_label_event", "right_label", "right_label_event"}
        assert sub.wait_for(lambda ms: regions_in(ms) == both, 60), d.tail()
        n = len(sub.messages)
        write(["left"])
        d.p.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda ms: regions_in(ms[n:]) == {"left_label", "left_label_event"}, 30), d.tail()
        assert d.p.poll() is None  # the same process all along
    finally:
        d.p.send_signal(signal.SIGTERM)
        d.p.wait(10)
        sub.stop()
    docs = [m.text for m in sub.messages[n:] if m.topic == DEVICE_TOPIC]
    removing = [t for t in docs if json.loads(t)["cmps"].get("right_label") == {"p": "sensor"}]
    print(f"\nafter SIGHUP: {len(docs)} device documents, removing: {ha_removes(ha, removing)}")
    print([ln for ln in d.err if "removed from Home Assistant" in ln])
    assert len(removing) == 1 and ha_removes(ha, removing) == [["right_label", "right_label_event"]]
    configs = retained_configs(broker)
    assert {k for k in entities_in(configs) if "_label" in k} == {"left_label", "left_label_event"}, configs
    judged_ok(ha, configs)
