"""What the MQTT sink publishes: the retained state document, a label-change event and Home
Assistant's discovery config. Pure functions of an observation, so tests need no broker or model."""

from __future__ import annotations

import time
from typing import Any

from ... import __version__
from ...observation import Observation, Status, observation_json
from ...sinkconfig import MqttConfig


def state_payload(obs: Observation | None, status: Status | None, device_id: str, dropped: int) -> dict[str, Any]:
    """The retained `state` document: the observation's JSON plus the device and the pipeline's health."""
    doc: dict[str, Any] = {"device_id": device_id, "published_at": round(time.time(), 3), "events_dropped": dropped}
    doc.update(observation_json(obs))
    if status is not None:
        doc.update(healthy=status.healthy, reason=status.reason)
    return doc


def event_body(obs: Observation, previous: str | None, device_id: str) -> dict[str, Any]:
    """What is stored for a label change; `seq`, `published_at` and `dropped_total` are added when sent."""
    return {"device_id": device_id, **observation_json(obs), "previous": previous}


def discovery_payload(cfg: MqttConfig, device_id: str, model: str, region: str | None = None) -> dict[str, Any]:
    """Home Assistant MQTT discovery for one sensor: label as state, score and top-k as attributes; one
    such sensor per [[region]] (its own state topic), on the same device. HA names an entity "<device
    name> <entity name>", so the device is called by its device_id alone ("kitchen" -> "kitchen Label";
    the default device_id is "edge-resnet"); the manufacturer says edge-resnet."""
    base = f"{cfg.topic_prefix}/{device_id}"
    state = f"{base}/{region}/state" if region else f"{base}/state"
    return {
        "name": f"{region} label" if region else "Label",
        "unique_id": f"edge_resnet_{device_id}_{region}_label" if region else f"edge_resnet_{device_id}_label",
        "state_topic": state,
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": state,
        "json_attributes_template": (
            "{{ {'score': value_json.score, 'class_index': value_json.class_index, "
            "'top_k': value_json.top_k, 'frame_seq': value_json.frame_seq, "
            "'healthy': value_json.healthy, 'reason': value_json.reason} | tojson }}"
        ),
        "availability_topic": f"{base}/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
        "icon": "mdi:eye",
        "device": {
            "identifiers": [f"edge_resnet_{device_id}"],
            "name": device_id,
            "manufacturer": "edge-resnet",
            "model": model,
            "sw_version": __version__,
        },
        "origin": {"name": "edge-resnet", "sw_version": __version__},
    }
