"""Home Assistant discovery (issue 24; the update entity of issue 23): every payload
edge_resnet.sinks.mqtt.discovery makes, device-based and per entity, with and without regions,
snapshot and model select, is judged by Home Assistant 2025.1's own discovery code
(tests/helpers/ha_schema.py runs it in .venv-ha): the schemas take it as is, no key is dropped, and
the entities' templates turn the payloads the device really sends (payloads.state_payload and
event_body) into the state, attributes and event Home Assistant shows. Broken payloads are refused,
so the judge can fail. The label sensor is today's (topic, state topic, templates, unique id), so
existing users keep their entity."""

from __future__ import annotations

import dataclasses
import json
import time
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from edge_resnet.observation import Status
from edge_resnet.sinkconfig import MqttConfig
from edge_resnet.sinks.mqtt import discovery as d
from edge_resnet.sinks.mqtt.payloads import discovery_payload, event_body, state_payload
from tests.helpers import ha_schema
from tests.helpers.observations import observation, synthetic_samples


@pytest.fixture(scope="module")
def ha() -> Path:
    return ha_schema.require_ha_python()


def announcements() -> list[d.Announce]:
    """Every shape of device: whole frame or two regions, snapshot off or on, a models folder or
    none, the update entity or not (a region name that looks like another entity's key included)."""
    base = d.Announce(
        "cam1", model="b.tflite", support_url="https://example.org/", configuration_url="http://cam1:8080/"
    )
    return [
        dataclasses.replace(base, regions=regions, snapshot=snapshot, models=models, fleet=fleet)
        for regions, snapshot, models, fleet in product(
            [(), ("door", "model")], [False, True], [(), ("a.tflite", "b.tflite")], [True, False]
        )
    ]


def samples(a: d.Announce) -> dict[str, list[str]]:
    """What the device publishes on the topics the entities read: the real state and event documents
    (as the MQTT client adds seq and times), update states, the select's current model."""
    c = synthetic_samples(2)
    out: dict[str, list[str]] = {}
    for region in a.regions or (None,):
        t = d.topics(a, region)
        obs = [observation(s, seq=i, changed=True) for i, s in enumerate(c)]
        if region:
            obs = [dataclasses.replace(o, region=region) for o in obs]
        healthy = Status(True, "ok")
        states = [state_payload(obs[0], healthy, a.device_id, 0), state_payload(obs[1], None, a.device_id, 0)]
        events = [{"seq": 7, **event_body(obs[1], obs[0].label.label, a.device_id), "published_at": time.time()},
                  {"seq": None, **event_body(obs[0], None, a.device_id), "stored": False}]  # fmt: skip
        out[t["state"]] = [json.dumps(s) for s in states]
        out[t["events"]] = [json.dumps(e) for e in events]
    t = d.topics(a)
    busy = d.update_state(3, 4, title="mobilenet v2 (v4)", summary="x" * 400, in_progress=True, percentage=42)
    out[t["model_update"]] = [json.dumps(s) for s in (d.update_state(None), d.update_state(3), busy)]
    out[t["model_select"]] = ["b.tflite"]
    return out


def test_every_payload_passes_home_assistants_own_discovery(ha: Path) -> None:
    """Device-based (1 message) and per-entity (N messages) for the 16 device shapes: Home Assistant's
    schemas take every one with nothing dropped, both forms give the same entities, and the templates
    render the device's real payloads into the label, its attributes, the event and the update."""
    cases = announcements()
    messages: list[tuple[str, str]] = []
    all_samples: dict[str, list[str]] = {}
    for a in cases:
        messages += [(m.topic, m.payload) for m in d.device_messages(a) + d.entity_messages(a)]
        all_samples.update(samples(a))
    judged = ha_schema.check(messages, all_samples, python=ha)
    assert judged.version == ha_schema.HA_VERSION
    assert judged.errors() == [], "\n".join(judged.errors())

    at = 0
    print(f"\nHome Assistant {judged.version}: discovery messages a device (device-based vs per-entity):")
    for a in cases:
        dev, per = d.device_messages(a), d.entity_messages(a)
        v_dev, v_per = judged.verdicts[at], judged.verdicts[at + 1 : at + 1 + len(per)]
        at += 1 + len(per)
        assert v_dev.kind == "device" and all(v.kind == "entity" for v in v_per)
        from_device = sorted((e["platform"], e["config"]["unique_id"]) for e in v_dev.entities)
        from_entities = sorted((e["platform"], e["config"]["unique_id"]) for v in v_per for e in v.entities)
        assert from_device == from_entities == sorted((e.platform, e.config["unique_id"]) for e in d.entities(a))
        for e in v_dev.entities:  # the shared availability reached every component
            assert e["config"]["availability_topic"] == "edge-resnet/cam1/availability", e
        print(f"  regions={list(a.regions)!s:18} snapshot={a.snapshot!s:5} select={bool(a.models)!s:5} "
              f"update={a.fleet!s:5}: 1 message ({len(dev[0].payload)} B) vs {len(per)} "
              f"({sum(len(m.payload) for m in per)} B)")  # fmt: skip
        platforms = sorted({e.platform for e in d.entities(a)})
        expected = {"sensor", "event", "button"} | ({"image"} if a.snapshot else set())
        expected |= ({"select"} if a.models else set()) | ({"update"} if a.fleet else set())
        assert set(platforms) == expected

    renders = [r for v in judged.verdicts for r in v.renders]
    by = {(r["entity"], json.dumps(r["result"], sort_keys=True)) for r in renders}
    labels = [s.top_k[0].label for s in synthetic_samples(2)]
    sensor = [r["result"] for r in renders if r["entity"] == "edge_resnet_cam1_label"]
    assert {s["state"] for s in sensor} == set(labels)
    assert all({"score", "top_k", "class_index"} <= set(s["attributes"]) for s in sensor)
    assert any(s["attributes"]["healthy"] is None for s in sensor), "a state without health still renders"
    events = [r["result"] for r in renders if r["entity"] == "edge_resnet_cam1_door_label_event"]
    assert {e["event_type"] for e in events} == {"label_changed"}
    assert {(e["attributes"]["label"], e["attributes"]["previous"]) for e in events} == {
        (labels[1], labels[0]), (labels[0], None)}  # fmt: skip
    updates = [r["result"] for r in renders if r["entity"] == "edge_resnet_cam1_model_update"]
    assert {"installed_version": "3", "latest_version": "3", "in_progress": False, "update_percentage": None} in updates
    busy = next(u for u in updates if u["in_progress"])
    assert busy["update_percentage"] == 42 and len(busy["release_summary"]) == d.SUMMARY_MAX
    assert ("edge_resnet_cam1_model_select", '"b.tflite"') in by
    print(f"  {len(renders)} sample payloads rendered by Home Assistant's templates, 0 errors")


def test_home_assistant_refuses_broken_payloads(ha: Path) -> None:
    """The judge can fail: each of these is refused or flagged (a dropped key is a finding, since Home
    Assistant drops unknown keys silently)."""
    a = d.Announce("cam1", models=("a.tflite",))
    good = {e.key: d.entity_document(a, e) for e in d.entities(a)}
    device = d.device_document(a)
    no_ids = {**device, "dev": {"name": "x"}}
    bad_platform = {**device, "cmps": {**device["cmps"], "label": {**device["cmps"]["label"], "p": "camera2"}}}
    no_unique = {**device, "cmps": {"x": {"p": "sensor", "stat_t": "a/b"}}}
    no_event_type = {**good["label_event"], "value_template": "{{ value_json | tojson }}"}
    broken: list[tuple[str, str, dict[str, Any], str]] = [
        ("sensor without state topic", "sensor", {k: v for k, v in good["label"].items() if k != "state_topic"},
         "required key not provided @ data['state_topic']"),
        ("misspelt key", "sensor", {**good["label"], "json_attributes_topik": "x/y"},
         "'json_attributes_topik' is unknown"),
        ("event without event types", "event", {k: v for k, v in good["label_event"].items() if k != "event_types"},
         "data['event_types']"),
        ("select without options", "select", {k: v for k, v in good["model_select"].items() if k != "options"},
         "data['options']"),
        ("button with a wildcard command topic", "button", {**good["reload_button"], "command_topic": "a/#"},
         "command_topic"),
        ("image with both topics", "image", {**good["label"], "image_topic": "a/b", "url_topic": "a/c"},
         "exclusion 'image_topic'"),
        ("origin without a name", "sensor", {**good["label"], "origin": {"sw_version": "1"}},
         "origin: required key not provided @ data['name']"),
        ("device without identifiers", "device", no_ids, "at least one identifying value"),
        ("unknown platform in cmps", "device", bad_platform, "data['components']['label']['platform']"),
        ("component without unique id", "device", no_unique, "unique_id"),
        ("event whose template gives no event_type", "event", no_event_type, "event_type '' is not one of"),
    ]  # fmt: skip
    messages = [("homeassistant/device/cam1/config" if p == "device" else f"homeassistant/{p}/cam1/x/config",
                 json.dumps(doc)) for _, p, doc, _ in broken]  # fmt: skip
    events = [json.dumps({"seq": 1, **event_body(observation(synthetic_samples(1)[0], 1, True), None, "cam1")})]
    judged = ha_schema.check(messages, {"edge-resnet/cam1/events": events}, python=ha)
    print()
    for (what, _, _, expected), v in zip(broken, judged.verdicts, strict=True):
        found = v.errors + [r["error"] for r in v.renders if r["error"]]
        print(f"  refused: {what}: {found[0] if found else 'NOTHING'}")
        assert any(expected in f for f in found), f"{what}: expected {expected!r}, Home Assistant said {found}"


def test_default_entity_id_is_unknown_to_2025_1_so_object_id_is_the_default(ha: Path) -> None:
    """`default_entity_id` (Home Assistant 2025.10) is dropped by 2025.1: the default sends `object_id`,
    which 2025.1 uses; `entity_id_key = "default_entity_id"` is for 2025.10 and later."""
    new = d.Announce("cam1", entity_id_key="default_entity_id")
    judged = ha_schema.check([(m.topic, m.payload) for m in d.device_messages(new)], python=ha)
    assert judged.verdicts[0].errors and all("'default_entity_id' is unknown" in e for e in judged.verdicts[0].errors)
    assert d.entities(new)[0].config["default_entity_id"] == "sensor.cam1_label"
    default = ha_schema.check([(m.topic, m.payload) for m in d.device_messages(d.Announce("cam1"))], python=ha)
    assert default.errors() == []
    assert {e["config"]["object_id"] for e in default.verdicts[0].entities} >= {"cam1_label", "cam1_model_update"}


def test_migration_messages_are_what_home_assistant_expects(ha: Path) -> None:
    """Per-entity -> device-based: `migrate_discovery` on each old topic, the device document, the old
    topics cleared (and back): Home Assistant reads them as migrate, device and remove."""
    before = d.Announce("cam1", regions=("door",))
    after = d.Announce("cam1", regions=("door",), snapshot=True, models=("a.tflite",))
    forward = d.migrate_to_device(after, before)
    back = d.migrate_to_entities(after)
    judged = ha_schema.check([(m.topic, m.payload) for m in forward + back], python=ha)
    assert judged.errors() == []
    kinds = [v.kind for v in judged.verdicts]
    n = len(d.entities(before))
    assert kinds[: 2 * n + 1] == ["migrate"] * n + ["device"] + ["remove"] * n
    assert kinds[2 * n + 1 :] == ["migrate"] + ["entity"] * len(d.entities(after)) + ["remove"]
    assert all(m.retain for m in forward + back)
    assert forward[0].topic == "homeassistant/sensor/cam1/door_label/config"  # today's topic for that sensor


def test_the_label_sensor_is_the_one_users_already_have() -> None:
    """Per-entity, the label sensor goes to today's topic with today's config (payloads.discovery_payload):
    same unique id, state topic, value template, availability and device; added is the object id
    (the entity id Home Assistant gives it today: "<device_id> label"); the attributes template reads
    the same fields and tolerates a state without health."""
    cfg = MqttConfig()
    for region in (None, "door"):
        a = d.Announce("cam1", model="m.tflite", regions=(region,) if region else ())
        sensor = d.entities(a)[0]
        assert d.entity_topic(a, sensor) == f"homeassistant/sensor/cam1/{region + '_' if region else ''}label/config"
        mine, today = d.entity_document(a, sensor), discovery_payload(cfg, "cam1", "m.tflite", region)
        assert set(mine) - set(today) == {"object_id"} and set(today) <= set(mine)
        same = {k for k in today if k != "json_attributes_template"}
        assert {k: mine[k] for k in same} == {k: today[k] for k in same}
        assert mine["object_id"] == (f"cam1_{region}_label" if region else "cam1_label")  # HA's slug of the names
        for word in ("score", "class_index", "top_k", "frame_seq", "healthy", "reason"):
            assert f"'{word}'" in mine["json_attributes_template"]


def test_unique_ids_are_stable_and_distinct() -> None:
    """Unique ids are the entities' identity in Home Assistant: fixed strings, never two alike on a
    device, whatever the region names (names that end like another entity's key included)."""
    a = d.Announce("cam1", regions=("door", "model", "door_label", "snapshot", "label"), snapshot=True, models=("a",))
    ids = [e.config["unique_id"] for e in d.entities(a)]
    keys = [e.key for e in d.entities(a)]
    assert len(set(ids)) == len(ids) and len(set(keys)) == len(keys), ids
    whole = d.Announce("cam1", snapshot=True, models=("a",))
    assert [e.config["unique_id"] for e in d.entities(whole)] == [
        "edge_resnet_cam1_label", "edge_resnet_cam1_label_event", "edge_resnet_cam1_snapshot",
        "edge_resnet_cam1_model_select", "edge_resnet_cam1_discovery_button", "edge_resnet_cam1_reload_button",
        "edge_resnet_cam1_model_update",
    ]  # fmt: skip


def test_our_abbreviations_are_home_assistants(ha: Path) -> None:
    """Every short key in the device document is Home Assistant's own for that key."""
    tables = ha_schema.check([], python=ha).abbreviations
    ours_by_table = {"entity": d.ABBREVIATIONS, "device": d.DEVICE_ABBREVIATIONS, "origin": d.ORIGIN_ABBREVIATIONS}
    for theirs, ours in ours_by_table.items():
        for full, short in ours.items():
            assert tables[theirs].get(short) == full, f"{short!r} is not Home Assistant's abbreviation of {full!r}"


def test_update_state_is_what_the_update_entity_reads() -> None:
    """Versions as strings, latest defaults to installed (nothing to install), the summary cut at 255,
    the percentage kept in 0..100, nothing Home Assistant would refuse."""
    assert d.update_state(None) == {"in_progress": False, "update_percentage": None}
    assert d.update_state(3) == {"installed_version": "3", "latest_version": "3", "in_progress": False,
                                 "update_percentage": None}  # fmt: skip
    busy = d.update_state(3, 4, summary="s" * 300, in_progress=True, percentage=140)
    assert busy["latest_version"] == "4" and busy["update_percentage"] == 100 and len(busy["release_summary"]) == 255
