"""The fleet as the broker holds it: one short-lived paho connection (the controller's and `fleet status`'s)
that reads every device's retained presence, job, state and availability documents under a topic prefix,
follows their changes, and publishes install commands. No server of our own: the retained messages are
the fleet's database (fleet protocol, issue 23)."""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ..errors import ConfigError, EdgeResnetError
from ..sinkconfig import MqttConfig

log = logging.getLogger(__name__)

# the per-device documents, by the topic suffix after <prefix>/<device>/
PRESENCE, JOB, STATE, AVAILABILITY = "fleet", "model/job", "state", "availability"
DOCS = (PRESENCE, JOB, STATE, AVAILABILITY)
PAHO_INFLIGHT = 100  # install commands in flight to the broker at once (paho's default is 20)


@dataclass(frozen=True)
class DeviceDocs:
    """What the broker holds for one device; None where it holds nothing (yet)."""

    device: str
    presence: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    availability: str | None = None  # "online" / "offline", the daemon's retained availability

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups the device says it is in (presence first, else its last job status)."""
        for doc in (self.presence, self.job):
            if doc is not None and isinstance(doc.get("groups"), list):
                return tuple(str(g) for g in doc["groups"])
        return ()

    @property
    def running_version(self) -> int | None:
        """The model version the device runs: its presence (published after each job), else its last job
        status, else the state document (republished on the daemon's heartbeat, so it may lag a swap)."""
        for doc, key in ((self.presence, "running_version"), (self.job, "running_version"),
                         (self.state, "model_version")):  # fmt: skip
            v = doc.get(key) if doc is not None else None
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return None

    @property
    def last_seen(self) -> float | None:
        """Unix time of the newest document that carries one."""
        stamps = [
            float(v)
            for doc, key in ((self.presence, "ts"), (self.job, "ts"), (self.state, "published_at"))
            if doc is not None and isinstance(v := doc.get(key), int | float) and not isinstance(v, bool)
        ]
        return max(stamps) if stamps else None


def parse_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """(device, doc) for `<prefix>/<device>/<doc>` with doc one of DOCS; None for anything else."""
    if not topic.startswith(prefix + "/"):
        return None
    device, _, doc = topic[len(prefix) + 1 :].partition("/")
    return (device, doc) if device and doc in DOCS and device != "group" else None


def decode(doc: str, payload: bytes) -> dict[str, Any] | str | None:
    """A document's value: JSON object for the JSON docs, text for availability; None for an empty
    (cleared) retained message or one that is not what the protocol says (logged, then ignored)."""
    if not payload:
        return None
    if doc == AVAILABILITY:
        return payload.decode("utf-8", "replace").strip()
    try:
        value = json.loads(payload)
    except ValueError:
        log.debug("fleet: ignoring a %s document that is not JSON", doc)
        return None
    return value if isinstance(value, dict) else None


class FleetView:
    """Subscribes to the device documents of every device under `cfg.topic_prefix` and keeps the newest of
    each. `open()` returns once the broker has delivered everything it retained (a sync message published
    to ourselves after subscribing arrives behind the retained ones); `wait()` follows later changes."""

    def __init__(self, cfg: MqttConfig, docs: tuple[str, ...] = DOCS, sync_timeout: float = 10.0) -> None:
        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self.host, self.port, self.tls = cfg.endpoint()
        self.docs = docs
        self.sync_timeout = sync_timeout
        self._id = f"edge-resnet-fleet-{uuid.uuid4().hex[:12]}"
        self._sync_topic = f"{self.prefix}/fleet-controller/{self._id}/sync"
        self._devices: dict[str, DeviceDocs] = {}
        self._cond = threading.Condition()
        self._changes = 0  # bumped on every document change: wait() wakes on it
        self._connected = threading.Event()
        self._refused: str | None = None
        self._synced = threading.Event()
        self._unacked: set[int] = set()  # mids of our QoS 1 publishes without a PUBACK yet
        self._acked_early: set[int] = set()  # PUBACKs that came before publish() recorded the mid
        self._sync_mids: set[int] = set()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        # MQTT 3.1.1: nothing of v5 is needed here, and paho parses v5 properties on every message (a third
        # of the CPU of reading 4,000 retained documents)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._id, protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(PAHO_INFLIGHT)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        if self.cfg.username is not None:
            c.username_pw_set(self.cfg.username, os.environ.get(self.cfg.password_env))
        if self.tls:
            from ..sinks.mqtt.tls import client_context  # here only: the sink package imports numpy (0.25 s)

            # the broker's certificate checked, and the client certificate sent (brokers that identify
            # devices and operators by certificate: require_certificate)
            c.tls_set_context(client_context(self.cfg.ca_file, self.cfg.cert_file, self.cfg.key_file))
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        return c

    # -- paho's network thread --

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            self._refused = rc.getName()
            self._connected.set()
            return
        # Every (re)connect starts clean: the retained documents come again and bring us up to date, so
        # QoS 0 loses nothing we need. QoS 1 would: a broker queues few QoS 1 messages per client beyond
        # those in flight (mosquitto: 1,000 + 20 by default) and drops the rest of a large fleet's
        # retained documents; QoS 0 ones go straight to the socket.
        topics = [(f"{self.prefix}/+/{doc}", 0) for doc in self.docs] + [(self._sync_topic, 0)]
        client.subscribe(topics)
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        bad = [rc for rc in rcs if isinstance(rc, ReasonCode) and rc.is_failure]
        if bad:
            self._refused = f"subscription refused ({bad[0].getName()}); the broker's ACL must let this user " \
                            f"read {self.prefix}/+/..."
        # to ourselves, after the SUBACK: it comes back behind every retained message of the subscriptions
        self._sync_mids.add(client.publish(self._sync_topic, b"sync", qos=1).mid)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if mid in self._sync_mids:  # only this thread touches it
            self._sync_mids.discard(mid)
            return
        with self._cond:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._acked_early.add(mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._sync_topic:
            self._synced.set()
            with self._cond:
                self._cond.notify_all()
            return
        parsed = parse_topic(self.prefix, msg.topic)
        if parsed is None:
            return
        device, doc = parsed
        value: Any = decode(doc, bytes(msg.payload))
        field = {PRESENCE: "presence", JOB: "job", STATE: "state", AVAILABILITY: "availability"}[doc]
        with self._cond:
            old = self._devices.get(device) or DeviceDocs(device)
            self._devices[device] = replace(old, **{field: value})
            self._changes += 1
            self._cond.notify_all()

    # -- the caller's thread --

    def open(self, timeout: float = 10.0) -> FleetView:
        """Connect, subscribe and read everything retained. ConfigError when the broker is unreachable or
        refuses us (the fix names --broker / --config)."""
        failures = []
        for host, port, _tls in self.cfg.endpoints():  # the first broker of the list that answers
            try:
                self._client.connect(host, port, keepalive=30)
                self.host, self.port = host, port
                break
            except (OSError, ssl.SSLError) as e:
                from ..sinks.mqtt.tls import tls_problem  # here only: the sink package imports numpy (0.25 s)

                problem = tls_problem(host, port, self.cfg.ca_file) if self.tls else None
                failures.append(f"{host}:{port} ({problem or e})")
        else:
            raise ConfigError(f"cannot connect to the broker {', '.join(failures)}; check --broker or [mqtt] "
                              "url in --config, and that the broker runs")
        where = f"{self.host}:{self.port}"
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise ConfigError(f"the broker {where} did not answer within {timeout:.0f} s; check --broker")
        if self._refused is not None:
            self.close()
            raise ConfigError(f"the broker {where} refused the connection ({self._refused}); check [mqtt] "
                              f"username and ${self.cfg.password_env}")
        if not self._synced.wait(self.sync_timeout):
            if self._refused is not None:
                self.close()
                raise ConfigError(f"the broker {where} refused: {self._refused}")
            # a broker whose ACL forbids the sync topic: what arrived in sync_timeout is what there is
            log.warning("fleet: the sync message did not come back within %.0f s; reading what arrived",
                        self.sync_timeout)
        return self

    def close(self) -> None:
        """Disconnect after paho has sent what is queued (install commands must reach the broker)."""
        self.flush(5.0)
        self._client.disconnect()
        self._client.loop_stop()

    def flush(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish has its PUBACK; False on timeout."""
        end = time.monotonic() + timeout
        while True:
            with self._cond:
                if not self._unacked:
                    return True
            if time.monotonic() > end:
                return False
            time.sleep(0.01)

    def devices(self) -> dict[str, DeviceDocs]:
        """A copy of every device's documents (DeviceDocs are immutable)."""
        with self._cond:
            return dict(self._devices)

    def wait(self, done: Callable[[dict[str, DeviceDocs]], bool], timeout: float) -> bool:
        """Wait until `done(devices)` holds, evaluated after each batch of changes; False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            seen = -1
            while True:
                if seen != self._changes:
                    seen = self._changes
                    if done(self._devices):
                        return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))

    def publish(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        """QoS 1 JSON. paho queues it while the connection is down and sends it after reconnecting."""
        info = self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=retain)
        with self._cond:  # the PUBACK may have come first (paho's thread): then the mid is already done
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._unacked.add(info.mid)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise EdgeResnetError(f"cannot publish to {topic}: {mqtt.error_string(info.rc)}")

    def __enter__(self) -> FleetView:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
