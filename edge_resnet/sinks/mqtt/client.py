"""The MQTT sink itself: paho's client and callbacks, the hand-over queues and the sink thread that
stores events, sends them in order and publishes state (topics and payloads: see the package)."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ...config import check_device_id
from ...errors import ConfigError
from ...observation import Observation, Status
from ...sinkconfig import MqttConfig
from ..base import Remote, SinkContext, StatusFn, degraded_words
from . import discovery
from .eventqueue import EventQueue
from .failover import Broker, Brokers
from .payloads import event_body, state_payload
from .reach import Unreachable, refused_words, subject, unreachable_words
from .remote import Command, chosen_model, models_in, parse_command
from .snapshot import Pacer, snapshot_jpeg
from .tls import client_context, tls_diagnosis

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our session (and in-flight QoS 1 state) this long
EVENT_WINDOW = 50  # events handed to paho and not yet acknowledged
PAHO_INFLIGHT = 20  # paho's own in-flight window (max_inflight_messages)
PAHO_QUEUE_MAX = 500  # paho's outgoing queue (unbounded by default); > EVENT_WINDOW + a few retained messages
HEALTH_CHECK_S = 1.0  # how often the sink thread looks for a change of the pipeline's health
CHANGES_MAX = 1000  # label changes waiting for the sink thread to write them to SQLite
UNSTORED_MAX = 100  # events the degraded queue could not store, waiting to be sent live
MODELS_SCAN_S = 30.0  # how often the models folder is listed again for the model select
DISCOVERY_FILE = "discovery.json"  # in state_dir: the form, topics and components announced, to clean them up


LOG_EVERY_S = 60.0  # a flapping broker gets one warning a minute, not one per flap (SD-card care)



def point_at(client: mqtt.Client, b: Broker, v311: set[Broker]) -> None:
    """Aim paho's next connection attempt at broker `b` (from `on_pre_connect`: paho has no list of
    hosts, reads _host/_port right after that callback, and its setters refuse while a connection is
    being opened, hence the attributes), in 3.1.1 with its persistent session when `b` speaks only
    that (paho fixes the protocol per client and reads it per connection), else MQTT 5. The sink and
    the fleet agent both fail over this way."""
    client._host, client._port = b.host, b.port
    if b in v311:
        client._protocol, client._clean_session = mqtt.MQTTv311, False  # 3.1.1's persistent session
    else:
        client._protocol = mqtt.MQTTv5

class _RateLimit:
    """Allow a log line per key at most every `every` seconds; count what was held back."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, key: str) -> tuple[bool, str]:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.every:
            self._last[key] = now
            held = self._held.pop(key, 0)
            return True, f" ({held} more since the last such message)" if held else ""
        self._held[key] = self._held.get(key, 0) + 1
        return False, ""


@dataclass(frozen=True)
class _Announced:
    """state_dir/discovery.json: the discovery form, every topic announced in it, and (device-based) the
    components of the document, key -> platform (absent in files written before removal existed)."""

    form: str
    topics: list[str]
    components: dict[str, str] = field(default_factory=dict)


class Attempt(Enum):
    """The connection attempt in progress, as paho's callbacks tell it (each attempt is judged once)."""

    OPEN = "open"  # on_pre_connect ran, no CONNACK yet
    CONNECTED = "connected"  # CONNACK success
    DONE = "done"  # failed (no TCP, TLS, CONNACK refusal, closed before CONNACK) or lost: judged


class Link(Enum):
    """The broker connection as the sink sees it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REFUSED = "refused"  # the broker answered CONNACK with a failure (credentials, client id ...)
    STOPPED = "stopped"


class MqttSink:
    """Publishes observations to MQTT. `publish` only hands over; the sink's thread does all I/O.

    Delivery of `events` is at least once and in order: each label change is written to the SQLite
    queue first, sent with QoS 1, and deleted when the broker's PUBACK arrives. paho keeps unacknowledged
    messages across reconnects and re-sends them (with DUP) before newer ones; after a restart
    everything still in the queue is sent again, oldest first.
    """

    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        status: StatusFn,
        state_dir: Path,
        remote: Remote | None = None,
        fleet: bool = False,
    ) -> None:
        check_device_id(device_id)
        self.cfg = cfg
        self.remote = remote  # the daemon's reload and model select (None: no buttons, no select)
        self.fleet = fleet  # the fleet agent serves the model update entity's topics
        self.device_id = device_id
        self._status = status
        endpoints = cfg.endpoints()
        self.tls = endpoints[0][2]  # the same for every broker of the list (MqttConfig checks it)
        self._brokers = Brokers([Broker(host, port) for host, port, _ in endpoints])
        self._delay = 0.0  # seconds to wait before the next connection attempt (our backoff, not paho's)
        self._attempt = Attempt.DONE
        # brokers spoken to in MQTT 3.1.1: all with [mqtt] protocol = "3.1.1", else those that said so
        self._v311: set[Broker] = set(self._brokers.brokers) if cfg.protocol == "3.1.1" else set()
        problems = cfg.file_problems()
        if problems:
            raise ConfigError(problems[0])
        base = f"{cfg.topic_prefix}/{device_id}"
        self.state_topic = f"{base}/state"
        self.events_topic = f"{base}/events"
        self._base = base
        self.availability_topic = f"{base}/availability"
        self.discovery_topic = f"{cfg.discovery_prefix}/sensor/{device_id}/label/config"
        self.command_topic = f"{base}/command"
        self.select_topic = f"{base}/model/select"
        self.select_set_topic = f"{base}/model/select/set"
        self._commands: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=16)  # paho thread -> sink thread
        self._pacer = Pacer()  # snapshots waiting for their topic's second to pass
        self._models: tuple[str, ...] = ()  # the models folder's files, as last listed
        self._models_at = -1e9  # monotonic time of that listing
        self._selected: str | None = None  # the model name last published on the select's state topic
        self.queue = EventQueue(Path(state_dir) / "events.sqlite", cfg.queue_max)
        self._changes: queue.Queue[Observation] = queue.Queue(maxsize=CHANGES_MAX)
        # events the degraded queue could not store: sent live once (no seq), oldest dropped beyond the cap
        self._unstored: collections.deque[dict[str, Any]] = collections.deque(maxlen=UNSTORED_MAX)
        self._acks: queue.SimpleQueue[tuple[int, ReasonCode | None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._latest: Observation | None = None
        self._regions: dict[str, Observation] = {}  # [[region]] name -> its newest observation
        self._parts: frozenset[str | None] | None = None  # the regions that run (None: the whole frame); set_regions
        self._told = 0  # set_regions calls so far
        self._pruned: int | None = None  # the call whose parts Home Assistant was last brought in line with
        self._link = Link.CONNECTING
        self._link_since = time.monotonic()
        self._link_reason = "connecting"
        self._fail_cause: Unreachable | None = None  # why the last connection attempt failed, in this outage
        # each broker's last failure in this outage: (the error's class, the cause found, the words)
        self._failures: dict[Broker, tuple[Unreachable, Unreachable, str]] = {}
        self._started = time.monotonic()
        self._announce = False  # (re)connected: publish online and state (and discovery again)
        self._inflight: dict[int, int] = {}  # paho mid -> event seq
        self._handed_at: dict[int, float] = {}  # paho mid -> when it was handed to paho (monotonic)
        self._waiting_since: float | None = None  # oldest unacknowledged event (for healthy())
        self._handed_seq = 0  # events up to here are in paho's hands
        self._resend_barrier: set[int] = set()  # mids in flight at the last reconnect, not yet acknowledged
        self._barrier_since = 0.0
        self._previous_label: dict[str | None, str] = {}  # region (None: the whole frame) -> last label
        self._discovered: dict[str, str] = {}  # discovery topic -> payload announced since the last connect
        self._discovery_file = Path(state_dir) / DISCOVERY_FILE
        self._discovery_checked = False  # the other form's topics (an earlier run's) looked at
        self._thread: threading.Thread | None = None
        self._failed: str | None = None
        self._health_checked = 0.0
        self._published_healthy: bool | None = None  # Status.healthy in the last published state
        self._log_limit = _RateLimit(LOG_EVERY_S)
        self.stats = {
            "connects": 0,
            "disconnects": 0,
            "events_queued": 0,
            "events_acked": 0,
            "events_rejected": 0,
            "changes_dropped": 0,  # the in-memory hand-over was full (the sink thread is stuck)
            "events_unstored": 0,  # the queue was degraded: not stored, counted in queue.dropped
            "events_sent_live": 0,  # of those, sent live (once, without seq)
            "state_published": 0,
            "snapshots_published": 0,
            "snapshot_bytes_max": 0,  # the largest snapshot sent (at most snapshot.MAX_BYTES)
            "commands": 0,  # buttons pressed and models selected from Home Assistant
        }
        self._client = self._make_client()
        self._client.on_message = self._on_message  # the buttons' and the model select's commands

    # -- paho client and its callbacks (run on paho's network thread; they only record and wake) --

    @property
    def host(self) -> str:
        """The broker in use (or being tried): the first of [mqtt] url until a failover."""
        return self._brokers.current.host

    @property
    def port(self) -> int:
        return self._brokers.current.port

    def _where(self, broker: Broker | None = None) -> str:
        """host:port, and which of the list when there are several."""
        b = broker or self._brokers.current
        pos = f" ({self._brokers.position})" if self._brokers.position and broker is None else ""
        return f"{b.host}:{b.port}{pos}"

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client_id = cfg.client_id or f"edge-resnet-{self.device_id}"
        # MQTT 5 with a stable client id, clean_start false and a session expiry (see start()): a broker
        # that keeps sessions keeps ours across reconnects. Nothing depends on it: events wait in our own
        # queue until acknowledged, and paho re-sends what was in flight to whichever broker it reaches.
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(PAHO_INFLIGHT)
        c.max_queued_messages_set(PAHO_QUEUE_MAX)  # paho's queue is unbounded by default
        # Our own backoff (failover.Brokers: jittered, capped at a few seconds, round the broker list),
        # waited in on_pre_connect; paho's (up to 120 s, no jitter, one host) is switched off.
        c.reconnect_delay_set(min_delay=0, max_delay=0)
        c.connect_timeout = 5.0
        if cfg.username is not None:
            password = os.environ.get(cfg.password_env)
            if password is None:
                log.warning(
                    "mqtt: username %r set but %s is not in the environment; connecting without a password",
                    cfg.username,
                    cfg.password_env,
                )
            c.username_pw_set(cfg.username, password)
            clear = cfg.clear_text_password()
            if password and clear:
                log.warning("mqtt: %s", clear)
        if self.tls:
            c.tls_set_context(client_context(cfg.ca_file, cfg.cert_file, cfg.key_file))  # ConfigError: key + fix
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        c.on_pre_connect = self._on_pre_connect
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def _set_link(self, link: Link, reason: str) -> None:
        with self._lock:
            if link is not self._link:
                self._link_since = time.monotonic()
            self._link, self._link_reason = link, reason
        self._wake.set()

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before every connection attempt (paho has no list of hosts): wait our backoff, then point
        paho at the broker `Brokers` chose. paho reads _host/_port right after this returns; its
        host/port setters refuse while a connection is being opened, hence the attributes."""
        if self._delay > 0:
            self._stopping.wait(self._delay)
        point_at(client, self._brokers.current, self._v311)
        self._attempt = Attempt.OPEN

    def _judged(self) -> bool:
        """Mark the attempt in progress as judged; False if it already was (paho calls on_connect with a
        refusal and then on_disconnect for the same attempt)."""
        if self._attempt is Attempt.DONE:
            return False
        self._attempt = Attempt.DONE
        return True

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            b = self._brokers.current
            if rc.getName() == "Unsupported protocol version" and b not in self._v311:
                self._judged()
                self._v311.add(b)  # a broker that speaks only 3.1.1 answers a 5 CONNECT so: retry in 3.1.1
                self._delay = 0.0
                log.info("mqtt: %s speaks MQTT 3.1.1 only; connecting with 3.1.1", self._where())
                return
            if self._judged():
                self._attempt_failed(Unreachable.AUTH, None, refused=rc.getName())
            return
        self._attempt = Attempt.CONNECTED
        self._brokers.connected()
        was_down = time.monotonic() - self._link_since
        self._fail_cause = None
        self._failures.clear()
        self.stats["connects"] += 1
        with self._lock:
            self._announce = True
        if self.stats["connects"] > 1:
            ok, more = self._log_limit("reconnected")
            (log.info if ok else log.debug)(
                "mqtt: reconnected to %s after %.1f s; %d events queued%s",
                self._where(),
                was_down,
                len(self.queue),
                more,
            )
        else:
            log.info("mqtt: connected to %s", self._where())
        self._set_link(Link.CONNECTED, "connected")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho does not pass on why a connection attempt failed, and the why is the fix: a wrong host
        name (DNS), a broker that is down, TLS. paho calls this inside its `except OSError:`, so the
        error is in sys.exc_info()."""
        if self._judged():
            err = sys.exc_info()[1]
            self._attempt_failed(Unreachable.of(err), err)

    def _attempt_failed(self, cause: Unreachable, err: BaseException | None, refused: str | None = None) -> None:
        """One failed attempt on the current broker: say why (logged once per broker and cause, not per
        retry), then move on to the next broker of the list after a jittered wait."""
        b = self._brokers.current
        before = self._failures.get(b)
        raw = cause
        if refused is not None:
            reason = refused_words(refused, self.cfg.password_env, self.cfg.cert_file is not None)
        elif before is not None and before[0] is raw:
            _, cause, reason = before  # the same cause: keep the words (and TLS diagnosis) made at its start
        else:
            reason = unreachable_words(cause, err, self.cfg.cert_file, b.host)
            if self.tls and cause in (Unreachable.TLS, Unreachable.OTHER):
                cfg = self.cfg
                diagnosis = tls_diagnosis(b.host, b.port, cfg.ca_file, 3.0, cfg.cert_file, cfg.key_file)
                if diagnosis is not None:
                    cause, reason = diagnosis
        self._fail_cause = cause
        self._failures[b] = (raw, cause, reason)
        first = before is None
        changed = before is not None and before[0] is not raw
        if first or (changed and self._log_limit(f"cause:{b}:{cause.value}")[0]):
            if refused is not None:
                log.error("mqtt: %s %s; retrying", subject(None, b.host, b.port), reason)
            else:
                log.warning(
                    "mqtt: %s: %s; classification goes on, retrying every few seconds",
                    subject(cause, b.host, b.port),
                    reason,
                )
        self._delay = self._brokers.failed()
        about = f"{subject(cause, b.host, b.port)}: " if self._brokers.position else ""
        if refused is not None:
            self._set_link(Link.REFUSED, f"{about}refused: {refused}")
        else:
            self._set_link(Link.DISCONNECTED, f"{about}{reason}")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if self._stopping.is_set():
            self._set_link(Link.STOPPED, "stopped")
            return
        if self._attempt is Attempt.OPEN:
            # closed before any CONNACK: on TLS 1.3 a refused client certificate arrives here (the
            # handshake ended before the broker looked at it); the probe in _attempt_failed names it
            self._judged()
            why = "the broker closed the connection before answering CONNECT"
            if self._brokers.current not in self._v311:
                why += '; if it speaks only MQTT 3.1.1, set [mqtt] protocol = "3.1.1"'
            closed = ConnectionAbortedError(why)
            self._attempt_failed(Unreachable.OTHER, closed)
            return
        if self._attempt is not Attempt.CONNECTED:
            return  # the broker closes the connection after a refused CONNACK: keep saying why
        self._attempt = Attempt.DONE
        self._delay = self._brokers.lost()  # the same broker first: a restart or a blip
        self.stats["disconnects"] += 1
        ok, more = self._log_limit("lost")
        (log.warning if ok else log.debug)(
            "mqtt: lost broker %s (%s); events are kept on disk and sent after reconnecting%s",
            self._where(),
            rc.getName() if isinstance(rc, ReasonCode) else rc,
            more,
        )
        about = f" {self._where(self._brokers.current)}" if self._brokers.position else ""
        self._set_link(Link.DISCONNECTED, f"lost{about}: {rc.getName() if isinstance(rc, ReasonCode) else rc}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode | None, props: Any) -> None:
        self._acks.put((mid, rc))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A command from Home Assistant: handed to the sink thread. A retained one is old news (a
        reload left on the broker would reload at every connect): ignored."""
        if msg.retain:
            return
        try:
            self._commands.put_nowait((msg.topic, bytes(msg.payload)))
        except queue.Full:
            log.warning("mqtt: commands arrive faster than they are done; dropped one on %s", msg.topic)
        self._wake.set()

    # -- the Sink protocol --

    def start(self) -> None:
        self.queue.refresh()  # a sink being replaced (SIGHUP) may have written since __init__
        self._started = time.monotonic()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self.host, self.port, keepalive=self.cfg.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)
        self._thread.start()

    def set_regions(self, names: Sequence[str]) -> None:
        """The `[[region]]` names that run now (none: the whole frame), as the daemon says at start and
        after each reload. Observations of anything else (a removed region's last frames, the whole frame
        once regions run) are ignored and what was kept of them forgotten, so their state stops; once
        every part that runs has been seen, Home Assistant's entities of the parts gone are removed
        (`_announce_discovery`). Never told (a sink driven directly): every part observed is announced."""
        parts: frozenset[str | None] = frozenset(names) if names else frozenset({None})
        with self._lock:
            self._parts = parts
            self._told += 1
            self._regions = {n: o for n, o in self._regions.items() if n in parts}
            if None not in parts:
                self._latest = None
        self._wake.set()

    def publish(self, obs: Observation) -> None:
        """Pipeline thread: never blocks. Keeps the newest observation; label changes go to the sink thread."""
        with self._lock:
            if self._parts is not None and obs.region not in self._parts:
                return  # a part that no longer runs (see set_regions)
            if obs.region is None:
                first = self._latest is None
                self._latest = obs
            else:
                first = obs.region not in self._regions
                self._regions[obs.region] = obs
        if obs.changed or first:
            try:
                self._changes.put_nowait(obs)
            except queue.Full:
                self.stats["changes_dropped"] += 1
            self._wake.set()  # other frames only update the newest observation (the heartbeat reads it)

    def stop(self, timeout: float = 2.0) -> None:
        """Write pending changes to disk, publish `offline` (retained) if connected, disconnect."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is None:  # never started (the daemon failed before start): just close the queue
            self.queue.close()
            self._set_link(Link.STOPPED, "stopped")
            return
        self._thread.join(max(0.1, deadline - time.monotonic()))
        # loop_stop() joins paho's thread without a timeout: do it on a helper thread so stop() keeps its promise.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            self._link = Link.STOPPED

    def healthy(self) -> tuple[bool, str]:
        """Ok (a broker that is away is not fatal), the words saying how the broker link is; degraded
        while the broker has never been reached (what a restart cannot fix: a wrong host, credentials,
        TLS); failed only when the sink cannot keep events (queue) or its thread died."""
        with self._lock:
            link, reason, since = self._link, self._link_reason, self._link_since
        where = self._where()
        queued = len(self.queue)
        if self._failed is not None:
            return False, self._failed
        problem = self.queue.problem
        if problem is not None:
            return False, (
                f"mqtt event queue degraded ({problem}); live state goes on, {self.queue.dropped} events "
                "dropped; retrying"
            )
        waiting = self._waiting_since
        if link is Link.CONNECTED and waiting is not None and time.monotonic() - waiting > self.cfg.keepalive:
            return True, (
                f"mqtt broker {where} has not acknowledged for {time.monotonic() - waiting:.0f} s (stalled broker "
                f"or network partition); reconnecting when keepalive expires, {queued} events queued on disk"
            )
        if link is Link.CONNECTED:
            return True, f"mqtt connected to {where}, {queued} events queued"
        if link is Link.STOPPED:
            return True, "mqtt stopped"
        if self.stats["connects"] == 0:
            detail = self._never_connected(link)
            if detail is not None:
                return True, degraded_words("mqtt never connected", f"{detail}, {queued} events queued on disk")
        if self._brokers.position:
            return True, (
                f"mqtt {link.value} for {time.monotonic() - since:.0f} s ({reason}); retrying, next {where}, "
                f"{queued} events queued on disk"
            )
        return True, (
            f"mqtt broker {where} {link.value} for {time.monotonic() - since:.0f} s ({reason}); "
            f"retrying, {queued} events queued on disk"
        )

    def _never_connected(self, link: Link) -> str | None:
        """What stands between the sink and its first connect; None while that is still being tried
        (for up to paho's connect timeout: a daemon starting is not degraded)."""
        waited = f"{time.monotonic() - self._started:.0f} s"
        failures = dict(self._failures)
        if link in (Link.REFUSED, Link.DISCONNECTED) and failures:
            said = [
                f"{subject(cause, b.host, b.port)}{' ' if cause is Unreachable.AUTH else ': '}{words}"
                for b, (_, cause, words) in failures.items()
            ]
            return f"{'; '.join(said)}; retrying for {waited}"
        if time.monotonic() - self._started <= self._client.connect_timeout:
            return None
        return f"broker {self._where()}: no answer to CONNECT yet; waiting for {waited}"

    def counters(self) -> dict[str, float]:
        """Prometheus-friendly counters for /metrics (the daemon merges them into Status.counters)."""
        return {
            "mqtt_connected": 1.0 if self._link is Link.CONNECTED else 0.0,
            "mqtt_connects_total": self.stats["connects"],
            "mqtt_disconnects_total": self.stats["disconnects"],
            "mqtt_events_queued": len(self.queue),
            "mqtt_events_queued_total": self.stats["events_queued"],
            "mqtt_events_acked_total": self.stats["events_acked"],
            "mqtt_events_rejected_total": self.stats["events_rejected"],
            "mqtt_events_dropped_total": self.queue.dropped + self.stats["changes_dropped"],
            "mqtt_queue_degraded": 1.0 if self.queue.problem is not None else 0.0,
            "mqtt_events_sent_live_total": self.stats["events_sent_live"],
            "mqtt_state_published_total": self.stats["state_published"],
        }

    # -- the sink thread: owns the SQLite queue and does every publish --

    def _run(self) -> None:
        next_heartbeat = 0.0
        state_due = False
        try:
            while not self._stopping.is_set():
                self._wake.wait(timeout=0.25)
                self._wake.clear()
                self.queue.poll()  # a degraded queue retries its writes every few seconds
                state_due |= self._drain_changes()
                self._drain_acks()
                with self._lock:
                    connected = self._link is Link.CONNECTED
                    announce, self._announce = self._announce, False
                if not connected:
                    continue
                if announce:
                    self._resend_barrier = set(self._inflight)
                    self._barrier_since = time.monotonic()
                    self._client.publish(self.availability_topic, "online", qos=1, retain=True)  # once a connect
                    self._discovered.clear()  # a broker restarted without persistence lost the retained configs
                    self._selected = None
                    self._subscribe()
                    state_due = True
                self._do_commands()
                if self.cfg.discovery:
                    self._announce_discovery()
                self._publish_selected()
                self._publish_snapshots()
                if state_due or time.monotonic() >= next_heartbeat or self._health_changed():
                    self._publish_state()
                    state_due = False
                    next_heartbeat = time.monotonic() + self.cfg.heartbeat_s
                self._send_events()
        except Exception as e:
            log.exception("mqtt: sink thread failed; MQTT output stops (please report this)")
            self._failed = f"mqtt sink thread failed ({e}); MQTT output stopped, restart the daemon and report this"
        finally:
            self._shutdown()

    def _drain_changes(self) -> bool:
        """Write waiting label changes to SQLite (before anything is sent); True if there were any."""
        any_change = False
        while True:
            try:
                obs = self._changes.get_nowait()
            except queue.Empty:
                return any_change
            any_change = True
            if self.cfg.snapshots:  # the picture of the first label and of each change
                leaf = self.region_topic(obs.region, "snapshot") if obs.region else f"{self._base}/snapshot"
                self._pacer.offer(leaf, obs)
            if not obs.changed:  # the first observation, not a change: it only sets the state
                self._previous_label[obs.region] = obs.label.label
                continue
            body = event_body(obs, self._previous_label.get(obs.region), self.device_id)
            self._previous_label[obs.region] = obs.label.label
            if self.queue.put(body) is not None:
                self.stats["events_queued"] += 1
            else:  # degraded queue (disk full, read-only, I/O error): counted as dropped, sent live once
                self.stats["events_unstored"] += 1
                self._unstored.append({**body, "queued_at": round(time.time(), 3)})

    def _drain_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                mid, rc = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            self._handed_at.pop(mid, None)
            self._resend_barrier.discard(mid)
            if seq is None:
                continue  # state, availability or discovery
            if rc is not None and rc.is_failure:
                self.stats["events_rejected"] += 1
                log.error(
                    "mqtt: broker rejected event seq %d: %s; dropping it (check the broker's ACL for %s)",
                    seq,
                    rc.getName(),
                    self.events_topic,
                )
            else:
                self.stats["events_acked"] += 1
            done.append(seq)
        self.queue.delete(done)
        self._waiting_since = min(self._handed_at.values()) if self._handed_at else None

    def _send_unstored(self) -> None:
        """Events the degraded queue could not store: QoS 1 once, `seq` null (no redelivery after a restart)."""
        while self._unstored:
            doc = {
                "seq": None,
                **self._unstored[0],
                "stored": False,
                "published_at": round(time.time(), 3),
                "dropped_total": self.queue.dropped,
            }
            info = self._client.publish(self.events_topic_of(doc), json.dumps(doc), qos=1, retain=False)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                return  # paho's queue is full; next round
            self._unstored.popleft()
            self.stats["events_sent_live"] += 1

    def _send_events(self) -> None:
        self._send_unstored()
        if self._resend_barrier:
            # paho calls on_connect *before* it re-sends the messages that were in flight: anything new
            # handed over now would overtake them. Wait for their PUBACKs first.
            if time.monotonic() - self._barrier_since < 2 * self.cfg.keepalive:
                return
            # paho did not re-send them (it should): hand them over again ourselves (duplicates, no loss)
            log.warning("mqtt: %d events not re-sent after reconnecting; sending them again", len(self._inflight))
            self._handed_seq = min(self._inflight.values()) - 1
            self._inflight.clear()
            self._handed_at.clear()
            self._resend_barrier.clear()
        room = EVENT_WINDOW - len(self._inflight)
        if room <= 0 or self._handed_seq >= self.queue.last_seq:
            return  # window full, or nothing new on disk (no query per wake-up)
        for ev in self.queue.after(self._handed_seq, room):
            doc = {
                "seq": ev.seq,
                **ev.body,
                "queued_at": round(ev.queued_at, 3),
                "published_at": round(time.time(), 3),
                "dropped_total": self.queue.dropped,
            }
            info = self._client.publish(self.events_topic_of(doc), json.dumps(doc), qos=1, retain=False)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break  # paho's queue is full; try again on the next round
            # MQTT_ERR_SUCCESS, or MQTT_ERR_NO_CONN: paho keeps QoS 1 messages and sends them after reconnecting.
            self._inflight[info.mid] = ev.seq
            self._handed_at[info.mid] = time.monotonic()
            self._handed_seq = ev.seq

    def region_topic(self, region: str, leaf: str) -> str:
        """`<prefix>/<device_id>/<region>/<leaf>`: a region's own state and events."""
        return f"{self.cfg.topic_prefix}/{self.device_id}/{region}/{leaf}"

    def events_topic_of(self, doc: dict[str, Any]) -> str:
        region = doc.get("region")
        return self.region_topic(str(region), "events") if region else self.events_topic

    def _discovery_messages(self, form: str) -> tuple[list[discovery.Message], int | None]:
        """Home Assistant's configs (discovery.py) for what the observations so far name: the whole
        frame's label sensor, label-change event (and snapshot image when [mqtt] snapshots is on) once it
        has an observation, each [[region]]'s once that region has one; the buttons and (with more than
        one model in the models folder) the model select when the daemon takes commands; the model
        update with [fleet]. Only entities whose topics are served. The device's model is the whole
        frame's (else the first region's): none before the first observation. Also the set_regions
        call whose every part these messages cover (None: a part not seen yet, or never told)."""
        with self._lock:
            whole = self._latest.model if self._latest is not None else None
            regions = tuple(sorted(self._regions))
            model = whole or (self._regions[regions[0]].model if regions else None)
            seen = {*regions, *([None] if self._latest is not None else [])}
            complete = self._told if self._parts is not None and self._parts <= seen else None
        if model is None:
            return [], None
        models = self._model_choices()
        a = discovery.Announce(
            self.device_id, self.cfg.topic_prefix, self.cfg.discovery_prefix, model=model,
            snapshot=self.cfg.snapshots, models=models, fleet=self.fleet,
        )  # fmt: skip
        parts = ([a] if whole else []) + ([dataclasses.replace(a, regions=regions)] if regions else [])

        def served(e: discovery.Entity) -> bool:
            return e.platform != "button" or self.remote is not None

        if form == "entity":
            msgs = {
                discovery.entity_topic(p, e): _dumps(discovery.entity_document(p, e))
                for p in parts
                for e in discovery.entities(p)
                if served(e)
            }
            return [discovery.Message(t, m) for t, m in msgs.items()], complete
        doc = discovery.device_document(parts[0])
        keep = {e.key for p in parts for e in discovery.entities(p) if served(e)}
        cmps = {k: c for p in parts for k, c in discovery.device_document(p)["cmps"].items()}
        doc["cmps"] = {k: c for k, c in cmps.items() if k in keep}
        return [discovery.Message(discovery.device_topic(a), _dumps(doc))], complete

    # -- Home Assistant's controls: buttons, model select, snapshots (on the sink thread) --

    def _model_choices(self, rescan: bool = False) -> tuple[str, ...]:
        """The models folder's files when the select is served: the daemon takes commands and there is
        more than one model to choose from (a select of one is no choice). Listed every MODELS_SCAN_S."""
        if self.remote is None:
            return ()
        now = time.monotonic()
        if rescan or now - self._models_at >= MODELS_SCAN_S:
            self._models = models_in(Path(self.remote.model_path()).parent)
            self._models_at = now
        return self._models if len(self._models) > 1 else ()

    def _subscribe(self) -> None:
        """At each connect: the topics Home Assistant's buttons and model select write to."""
        if self.remote is not None:
            self._client.subscribe([(self.command_topic, 1), (self.select_set_topic, 1)])

    def _do_commands(self) -> None:
        """The commands paho handed over: a button (republish discovery, reload) or a model chosen."""
        while True:
            try:
                topic, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if self.remote is None:
                continue
            self.stats["commands"] += 1
            if topic == self.select_set_topic:
                self._select(payload)
                continue
            cmd = parse_command(payload)
            if cmd is Command.DISCOVERY:
                log.info("mqtt: publishing Home Assistant discovery again (asked on %s)", topic)
                self._model_choices(rescan=True)
                self._discovered.clear()
                self._selected = None
            elif cmd is Command.RELOAD:
                log.info("mqtt: reload asked on %s", topic)
                self.remote.reload()
            else:
                log.warning("mqtt: unknown command %r on %s; use 'discovery' or 'reload'", payload[:40], topic)

    def _select(self, payload: bytes) -> None:
        """Run the model Home Assistant chose (one of the models folder's files) through the daemon's
        reload path; refused, the running model goes on and the select shows it again."""
        assert self.remote is not None
        folder = Path(self.remote.model_path()).parent
        chosen = chosen_model(folder, payload)
        if isinstance(chosen, str):
            log.warning("mqtt: model select refused: %s", chosen)
        else:
            log.info("mqtt: model %s selected from Home Assistant", chosen.name)
            why = self.remote.select_model(chosen)
            if why is not None:
                log.warning("mqtt: model select refused: %s", why)
        self._selected = None  # publish what runs now (the choice, or the running model again)

    def _publish_selected(self) -> None:
        """The select's state: the running model's file name (retained), whenever it changes."""
        if not self._model_choices():
            return
        with self._lock:
            obs = self._latest or next(iter(self._regions.values()), None)
        name = obs.model if obs is not None else None
        if name is not None and name != self._selected:
            self._client.publish(self.select_topic, name, qos=1, retain=True)
            self._selected = name

    def _publish_snapshots(self) -> None:
        """The waiting label changes' pictures whose topic's second has passed: raw JPEG, retained."""
        for topic, obs in self._pacer.due(time.monotonic()):
            jpeg = snapshot_jpeg(obs)
            self._client.publish(topic, jpeg, qos=0, retain=True)
            self.stats["snapshots_published"] += 1
            self.stats["snapshot_bytes_max"] = max(self.stats["snapshot_bytes_max"], len(jpeg))

    def _announce_discovery(self) -> None:
        """Home Assistant's config once the first observation names the model, so HA gets one config with
        the right model rather than a placeholder and then the real one; again when it changes (a SIGHUP
        swap, a new region) and after a reconnect (`_discovered` is cleared). Before the first
        observation the sink cannot know the model, nor whether there are regions."""
        form = self.cfg.discovery_form
        messages, complete = self._discovery_messages(form)
        fresh = [m for m in messages if self._discovered.get(m.topic) != m.payload]
        prune = complete is not None and complete != self._pruned  # every part that runs seen, not yet pruned
        if not fresh and not prune:
            return
        old = self._other_form_topics(form, {m.topic for m in messages})
        gone = self._gone(form, messages) if prune else []
        if gone and form == "device":
            fresh = messages  # the document without them goes after the one removing them, and stays retained
        for topic in old:  # Home Assistant unloads the entity and keeps its id and history for the new form
            self._client.publish(topic, discovery.MIGRATE, qos=1, retain=True)
        for m in gone:
            self._client.publish(m.topic, m.payload, qos=1, retain=True)
            self._discovered.pop(m.topic, None)
        for m in fresh:
            self._client.publish(m.topic, m.payload, qos=1, retain=m.retain)
            self._discovered[m.topic] = m.payload
        for topic in old:
            self._client.publish(topic, "", qos=1, retain=True)  # the broker drops the retained config
        self._remember_discovery(form, messages if prune else fresh, exact=prune)
        if prune:
            self._pruned = complete
        if gone:
            log.info("mqtt: removed from Home Assistant what is no longer served: %s", ", ".join(
                sorted(m.topic for m in gone) if form == "entity" else sorted(self._removed(gone[0]))))

    def _gone(self, form: str, messages: list[discovery.Message]) -> list[discovery.Message]:
        """What an earlier announcement in this form (this run's, or a run before it: state_dir/discovery.json)
        gave Home Assistant that `messages` no longer serve: a removed region's entities, the whole frame's
        once regions run, a model select or update entity gone. Per entity: an empty retained config each;
        device-based: the document with each of those components reduced to its platform."""
        before = self._read_discovery_file()
        if before is None or before.form != form or not messages:
            return []
        if form == "entity":
            now = {m.topic for m in messages}
            return [discovery.Message(t, "") for t in before.topics if t not in now]
        doc = json.loads(messages[0].payload)
        gone = {k: p for k, p in before.components.items() if k not in doc["cmps"]}
        return [discovery.Message(messages[0].topic, _dumps(discovery.removing_components(doc, gone)))] if gone else []

    @staticmethod
    def _removed(m: discovery.Message) -> list[str]:
        """The component keys a removing device document removes (those sent with only their platform)."""
        return [k for k, c in json.loads(m.payload)["cmps"].items() if list(c) == ["p"]]

    def _other_form_topics(self, form: str, now: set[str]) -> list[str]:
        """Once a process: the retained configs of the other discovery form, left by an earlier run
        (state_dir/discovery.json), which would show every entity twice in Home Assistant. Without the
        file (a first start, or a version before it) the per-entity configs earlier versions published."""
        if self._discovery_checked:
            return []
        self._discovery_checked = True
        before = self._read_discovery_file()
        if before is None:
            old = [m.topic for m in self._discovery_messages("entity")[0]] if form == "device" else []
        else:
            old = before.topics if before.form != form else []
        return [t for t in old if t not in now]

    def _read_discovery_file(self) -> _Announced | None:
        try:
            doc = json.loads(self._discovery_file.read_text(encoding="utf-8"))
            components = {str(k): str(v) for k, v in doc.get("components", {}).items()}
            return _Announced(str(doc["form"]), [str(t) for t in doc["topics"]], components)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("mqtt: %s unreadable (%s); cleaning the per-entity discovery configs", self._discovery_file, e)
            return None

    def _remember_discovery(self, form: str, messages: list[discovery.Message], exact: bool = False) -> None:
        """Record the form, every topic announced in it and (device-based) the document's components:
        what a later switch of form, or a later run or reload that no longer serves them, removes from
        Home Assistant. `exact` (every part that runs was announced, what is gone removed): the record
        becomes exactly `messages`; otherwise it only grows. Written only when it changes."""
        topics = {m.topic for m in messages}
        components: dict[str, str] = {}
        for m in messages if form == "device" else []:
            components.update(discovery.components_of(json.loads(m.payload)))
        before = self._read_discovery_file()
        if before is not None and before.form == form:
            if not exact:
                topics |= set(before.topics)
                components = {**before.components, **components}
            if set(before.topics) == topics and before.components == components:
                return
        doc = {"form": form, "topics": sorted(topics), "components": dict(sorted(components.items()))}
        tmp = self._discovery_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(tmp, self._discovery_file)
        except OSError as e:
            log.warning("mqtt: cannot write %s (%s); a later switch of discovery_form may leave duplicates", tmp, e)

    def _status_now(self) -> Status | None:
        try:
            return self._status()
        except Exception as e:  # the status callback is someone else's code; never let it stop MQTT
            log.debug("mqtt: status callback failed: %s", e)
            return None

    def _health_changed(self) -> bool:
        """At most once a second: has the pipeline's health flipped since the last state? (camera lost
        or back is news, not something for the next heartbeat)"""
        now = time.monotonic()
        if now - self._health_checked < HEALTH_CHECK_S:
            return False
        self._health_checked = now
        st = self._status_now()
        return st is not None and st.healthy != self._published_healthy

    def _publish_state(self, stopped: bool = False) -> None:
        """The retained state of the whole frame and of each region; `stopped`: the last one at a clean
        stop (healthy false, reason "stopped", the last label kept), QoS 1 so it is there before `offline`."""
        status = Status(False, "stopped") if stopped else self._status_now()
        if status is not None and not stopped:
            self._published_healthy = status.healthy
        qos = 1 if stopped else 0
        dropped = self.queue.dropped + self.stats["changes_dropped"]
        with self._lock:
            regions = dict(self._regions)
        doc = state_payload(self._latest, status, self.device_id, dropped)
        if regions:
            doc["regions"] = {name: obs.label.label for name, obs in sorted(regions.items())}
        self._client.publish(self.state_topic, json.dumps(doc), qos=qos, retain=True)
        for name, obs in regions.items():
            rdoc = state_payload(obs, status, self.device_id, dropped)
            self._client.publish(self.region_topic(name, "state"), json.dumps(rdoc), qos=qos, retain=True)
        self.stats["state_published"] += 1

    def _shutdown(self) -> None:
        """On the sink thread at stop: keep every change on disk, leave a `stopped` state, say `offline`,
        disconnect cleanly."""
        try:
            self._drain_changes()
            if self._link is Link.CONNECTED:
                end = time.monotonic() + 0.5  # give in-flight events a moment to be acknowledged
                self._send_events()
                while self._inflight and time.monotonic() < end:
                    time.sleep(0.02)
                    self._drain_acks()
                self._publish_state(stopped=True)  # else the retained state says healthy until the next start
                info = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
                info.wait_for_publish(timeout=0.5)
            self._client.disconnect()
        except Exception as e:
            log.warning("mqtt: clean shutdown incomplete: %s", e)
        finally:
            self._drain_acks()
            self.queue.close()


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def make_sink(cfg: MqttConfig, ctx: SinkContext) -> MqttSink:
    """The registry's factory for `[mqtt]`."""
    return MqttSink(cfg, ctx.device_id, ctx.status, ctx.state_dir, ctx.remote, ctx.fleet)
