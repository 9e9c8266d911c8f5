"""Hundreds of light simulated devices in one process, speaking the fleet protocol (issue 23) on a real
broker: each publishes its retained presence, state and availability, and answers install commands
with queued -> downloading -> verifying -> applied, or rolled_back when it is one of the failing
subset or the version is a "bad" one. The sims record which devices ever ran (swapped in) each version.

Scale: devices share a few MQTT connections (`per_connection` each, default 50: 10 paho clients and
threads for 500 devices) and one scheduler thread runs every device's state machine, so 1,000
devices cost a few threads, not a thousand. No model is downloaded: the controller is under test.
"""

from __future__ import annotations

import heapq
import itertools
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .broker import Broker

SIM_EDGE_RESNET = "0.0.0-sim"


def fleet_broker(workdir: Path) -> Broker:
    """tests/helpers/broker.py's mosquitto with mosquitto's own queue limits (1,000 QoS 1 messages queued
    per client beyond 20 in flight, as a fleet's broker has them: a reader of 4,000 retained documents
    must cope with them), saving its database once a second instead of after every change (with
    thousands of retained documents a save per change, which the broker-restart tests need, costs
    seconds per wave; these tests never kill the broker)."""
    b = Broker(workdir)
    conf = b.conf.read_text().replace("autosave_on_changes true", "autosave_on_changes false")
    conf = conf.replace("max_queued_messages 100000\n", "").replace("max_inflight_messages 20\n", "")
    b.conf.write_text(conf)
    return b.start()


@dataclass
class SimDevice:
    name: str
    groups: tuple[str, ...]
    running_version: int | None
    failing: bool  # rolls back every new version (its health window fails)
    client: mqtt.Client
    previous_version: int | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job_id -> its newest status
    marked_bad: set[int] = field(default_factory=set)  # versions this device rolled back
    busy: str | None = None  # the job being worked on


class FleetSim:
    """`n` devices named `cam-0000`..., all in `groups`, running `version`; the failing subset is every
    `fail_every`-th device from `fail_offset` (5% with 20); versions in `bad_versions` roll back on all."""

    def __init__(
        self,
        port: int,
        n: int,
        *,
        prefix: str = "edge-resnet",
        groups: tuple[str, ...] = ("cams",),
        version: int | None = 1,
        fail_every: int = 20,
        fail_offset: int = 3,
        bad_versions: Iterable[int] = (),
        per_connection: int = 50,
        step_s: float = 0.02,
        health_s: float = 0.1,
        model: str = "resnet50-int8.tflite",
        seed: int = 0,
        extra_groups: Callable[[int], tuple[str, ...]] | None = None,
    ) -> None:
        self.port = port
        self.prefix = prefix
        self.bad_versions = set(bad_versions)
        self.step_s = step_s
        self.health_s = health_s
        self.model = model
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.ran: dict[int, set[str]] = {}  # version -> devices that swapped it in
        self.commands: list[tuple[str, dict[str, Any]]] = []  # (device, install command) as they arrived
        self.clients: list[mqtt.Client] = []
        self.devices: dict[str, SimDevice] = {}
        self._by_group: dict[str, list[str]] = {}
        self._infos: list[mqtt.MQTTMessageInfo] = []
        self._connected: list[threading.Event] = []
        names = [f"cam-{i:04d}" for i in range(n)]
        for c in range(0, n, per_connection):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-sim-{port}-{c}", protocol=mqtt.MQTTv5)
            client.max_inflight_messages_set(200)
            client.on_message = self._on_message
            mine = names[c : c + per_connection]
            done = threading.Event()
            client.on_connect = self._connect_handler(mine, done)
            self.clients.append(client)
            self._connected.append(done)
            for i, name in enumerate(mine, start=c):
                g = groups + (extra_groups(i) if extra_groups else ())
                self.devices[name] = SimDevice(name, g, version, (i - fail_offset) % fail_every == 0, client)
                for group in g:
                    self._by_group.setdefault(group, []).append(name)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sim", daemon=True)

    @property
    def failing(self) -> set[str]:
        return {d.name for d in self.devices.values() if d.failing}

    # -- MQTT --

    def _connect_handler(self, mine: list[str], done: threading.Event) -> Callable[..., None]:
        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            topics = [(f"{self.prefix}/{name}/model/install", 1) for name in mine]
            groups = sorted({g for name in mine for g in self.devices[name].groups})
            topics += [(f"{self.prefix}/group/{g}/model/install", 1) for g in groups]
            client.subscribe(topics)
            done.set()

        return on_connect

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload)))
        with self._cond:
            self._cond.notify()

    def _publish(self, d: SimDevice, suffix: str, payload: dict[str, Any] | str) -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        info = d.client.publish(f"{self.prefix}/{d.name}/{suffix}", body, qos=1, retain=True)
        with self._lock:
            self._infos.append(info)

    def start(self, timeout: float = 30.0) -> FleetSim:
        """Connect, subscribe, and publish every device's presence, state and availability (retained);
        returns once the broker has acknowledged all of it."""
        for c in self.clients:
            c.connect("127.0.0.1", self.port, keepalive=60)
            c.loop_start()
        for e in self._connected:
            if not e.wait(timeout):
                raise RuntimeError("a fleet-sim connection did not come up")
        time.sleep(0.2)  # SUBACKs
        self._thread.start()
        for d in self.devices.values():
            self._publish(d, "availability", "online")
            self._presence(d)
            self._state(d)
        self.flush(timeout)
        return self

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the broker acknowledged everything published so far."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                left = [i for i in self._infos if not i.is_published()]
                self._infos = left
            if not left:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"fleet-sim: {len(left)} publishes not acknowledged within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(5)
        for c in self.clients:
            c.disconnect()
            c.loop_stop()

    # -- documents --

    def _presence(self, d: SimDevice) -> None:
        self._publish(d, "fleet", {"device": d.name, "groups": list(d.groups), "running_version": d.running_version,
                                   "model": self.model, "edge_resnet": SIM_EDGE_RESNET, "ts": time.time()})

    def _state(self, d: SimDevice) -> None:
        self._publish(d, "state", {"device_id": d.name, "published_at": round(time.time(), 3), "label": "empty",
                                   "score": 0.9, "model": self.model, "model_version": d.running_version,
                                   "healthy": True, "reason": "ok"})

    def _status(self, d: SimDevice, job_id: str, state: str, version: int, reason: str = "",
                progress: int | None = None) -> None:
        doc: dict[str, Any] = {"job_id": job_id, "state": state, "version": version, "reason": reason,
                               "device": d.name, "groups": list(d.groups), "running_version": d.running_version,
                               "previous_version": d.previous_version, "ts": time.time()}
        if progress is not None:
            doc["progress"] = progress
        d.jobs[job_id] = doc
        self._publish(d, "model/job", doc)

    def seed_jobs(self, job_id: str, version: int, state: str = "applied") -> None:
        """Give every device a retained job status (and the version running) without any command: the
        fleet as it looks after a finished rollout (for `fleet status` at scale)."""
        for d in self.devices.values():
            with self._lock:
                d.previous_version, d.running_version = d.running_version, version
            self._status(d, job_id, state, version)
            self._presence(d)
            self._state(d)
        self.flush()

    # -- the device state machine (the scheduler thread only) --

    def _run(self) -> None:
        while not self._stop.is_set():
            while True:
                try:
                    topic, payload = self._inbox.get_nowait()
                except queue.Empty:
                    break
                self._command(topic, payload)
            with self._cond:
                now = time.monotonic()
                due = []
                while self._events and self._events[0][0] <= now:
                    due.append(heapq.heappop(self._events)[2])
                wait = self._events[0][0] - now if self._events else 0.2
            for fn in due:
                fn()
            if not due:
                with self._cond:
                    if self._inbox.empty():
                        self._cond.wait(min(wait, 0.2))

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._events, (time.monotonic() + delay, next(self._seq), fn))

    def _jitter(self) -> float:
        return self.step_s * self._rng.uniform(0.5, 1.5)

    def _command(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained command
        first, _, rest = topic[len(self.prefix) + 1 :].partition("/")
        names = self._by_group.get(rest.split("/")[0], []) if first == "group" else [first]
        try:
            cmd = json.loads(payload)
            job_id, version = str(cmd["job_id"]), int(cmd["version"])
        except (ValueError, KeyError, TypeError):
            return
        for name in names:
            d = self.devices.get(name)
            if d is not None:
                with self._lock:
                    self.commands.append((d.name, cmd))
                self._install(d, job_id, version)

    def _install(self, d: SimDevice, job_id: str, version: int) -> None:
        if job_id in d.jobs:  # the same job twice: say what it came to, do nothing again
            self._publish(d, "model/job", d.jobs[job_id])
            return
        if version in d.marked_bad:
            self._status(d, job_id, "rejected", version, f"version {version} was rolled back before")
            return
        if d.running_version is not None and version <= d.running_version:
            self._status(d, job_id, "rejected", version, f"version {version} <= installed version {d.running_version}")
            return
        if d.busy is not None:
            self._status(d, job_id, "rejected", version, f"busy with job {d.busy}")
            return
        d.busy = job_id
        self._status(d, job_id, "queued", version)
        self._later(self._jitter(), lambda: self._status(d, job_id, "downloading", version, progress=0))
        self._later(2 * self._jitter(), lambda: self._status(d, job_id, "downloading", version, progress=100))
        self._later(3 * self._jitter(), lambda: self._swap(d, job_id, version))

    def _swap(self, d: SimDevice, job_id: str, version: int) -> None:
        with self._lock:
            self.ran.setdefault(version, set()).add(d.name)
            d.previous_version, d.running_version = d.running_version, version
        self._status(d, job_id, "verifying", version, "health window")
        self._state(d)
        self._later(self.health_s, lambda: self._health(d, job_id, version))

    def _health(self, d: SimDevice, job_id: str, version: int) -> None:
        d.busy = None
        if d.failing or version in self.bad_versions:
            with self._lock:
                d.running_version, d.previous_version = d.previous_version, None
                d.marked_bad.add(version)
            why = "one constant label" if version in self.bad_versions else "invoke 10x slower than measured"
            self._status(d, job_id, "rolled_back", version, f"health window: {why}")
        else:
            self._status(d, job_id, "applied", version)
        self._presence(d)
        self._state(d)
