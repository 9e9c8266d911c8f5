"""MQTT sink (paho-mqtt v2): retained state, QoS 1 events with store and forward, availability, HA discovery.

Topics under `<topic_prefix>/<device_id>/`:
- `state`: retained JSON (label, score, class_index, top_k, frame_seq, captured_at, published_at, model,
  healthy, reason, events_dropped); on label change, on health change, every heartbeat_s, after reconnects.
- `events`: label changes, QoS 1, not retained, `seq` increasing across restarts; at least once, in order.
- `availability`: `online` / `offline`, retained; the Last Will is `offline`.
- `<discovery_prefix>/sensor/<device_id>/label/config`: Home Assistant discovery, retained.

A broker that is away is never fatal: `healthy()` stays ok and its reason says what the link is doing;
the reconnect backoff is capped at 3-5 s (the cap is picked at random per process).

Split by job: `payloads` (state, events, discovery documents), `tls` (TLS diagnosis, shared with
doctor), `eventqueue` (the SQLite store and forward queue), `client` (paho, callbacks, the sink thread).
"""

from __future__ import annotations

from ...sinkconfig import MqttConfig
from .client import Link, MqttSink, make_sink
from .payloads import discovery_payload, event_body, state_payload
from .tls import tls_problem

__all__ = [
    "Link",
    "MqttConfig",
    "MqttSink",
    "discovery_payload",
    "event_body",
    "make_sink",
    "state_payload",
    "tls_problem",
]
