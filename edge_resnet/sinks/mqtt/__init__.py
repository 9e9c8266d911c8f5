"""MQTT sink (paho-mqtt v2): retained state, QoS 1 events with store and forward, availability, HA discovery.

Topics under `<topic_prefix>/<device_id>/`:
- `state`: retained JSON (label, score, class_index, top_k, frame_seq, captured_at, published_at, model,
  healthy, reason, events_dropped); on label change, on health change, every heartbeat_s, after reconnects;
  a clean stop leaves a last one with `"healthy": false, "reason": "stopped"` (before `offline`).
- `events`: label changes, QoS 1, not retained, `seq` increasing across restarts; at least once, in order.
- `availability`: `online` once per connect / `offline` at a clean stop, retained; the Last Will is `offline`.
- Home Assistant discovery (`discovery`), retained: the label sensor and the label-change event of the
  whole frame and of each [[region]], on one device named by device_id. `discovery_form = "device"` (the
  default): one `<discovery_prefix>/device/<device_id>/config` (Home Assistant 2024.11+); `"entity"`:
  `<discovery_prefix>/sensor/<device_id>/label/config`, `.../event/<device_id>/label_event/config`, ...
  Published once the first observation names the model, again after a model swap, a new region or a
  reconnect; the first time a run publishes, the other form's configs (an earlier run's, recorded in
  state_dir/discovery.json) are migrated and cleared so Home Assistant shows each entity once.

A broker that is away is never fatal: `healthy()` stays ok and its words say what the link is doing
(a wrong host name as DNS, a broker that is down as connection refused); while the broker has never
been reached the sink is degraded (/healthz: 200, first line "degraded: mqtt never connected").
`url` may list several brokers: the first that answers is used and kept while it works; a failed one
is retried once, then the next, with a jittered backoff doubling per failed round, capped at 5 s.

Split by job: `payloads` (state and event documents), `discovery` (Home Assistant's configs), `tls`
(TLS contexts and diagnosis, shared with doctor), `reach` (why a connection attempt failed), `probe`
(one classified CONNECT, for doctor), `failover` (the broker list and its backoff), `eventqueue` (the
SQLite store and forward queue), `client` (paho, callbacks, the sink thread).
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
