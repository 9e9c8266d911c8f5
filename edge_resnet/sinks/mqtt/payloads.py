"""What the MQTT sink publishes: the retained state document, a label-change event and Home
Assistant's discovery config. Pure functions of an observation, so tests need no broker or model."""

from __future__ import annotations

import time
from typing import Any

from ...observation import Observation, Status, observation_json
from ...sinkconfig import MqttConfig
from . import discovery


def state_payload(obs: Observation | None, status: Status | None, device_id: str, dropped: int) -> dict[str, Any]:
    """The retained `state` document: the observation's JSON plus the device and the pipeline's health."""
    doc: dict[str, Any] = {"device_id": device_id, "published_at": round(time.time(), 3), "events_dropped": dropped}
    doc.update(observation_json(obs))
    if status is not None:
        doc.update(healthy=status.healthy, reason=status.reason)
    # the running model's signed version (the fleet: `fleet status` and the update entity read it); null
    # for an unsigned model
    doc["model_version"] = status.labels.get("model_version") if status is not None else None
    return doc


def event_body(obs: Observation, previous: str | None, device_id: str) -> dict[str, Any]:
    """What is stored for a label change; `seq`, `published_at` and `dropped_total` are added when sent."""
    return {"device_id": device_id, **observation_json(obs), "previous": previous}


def discovery_payload(cfg: MqttConfig, device_id: str, model: str, region: str | None = None) -> dict[str, Any]:
    """Home Assistant's per-entity config of the label sensor (one per [[region]]), from discovery.py so
    there is one copy of it: label as state, score and top-k as attributes, the device named by its
    device_id. Without discovery's `object_id` (the entity id hint the daemon publishes with it)."""
    a = discovery.Announce(
        device_id, cfg.topic_prefix, cfg.discovery_prefix, model=model, regions=(region,) if region else ()
    )
    doc = discovery.entity_document(a, discovery.entities(a)[0])
    doc.pop("object_id", None)
    return doc
