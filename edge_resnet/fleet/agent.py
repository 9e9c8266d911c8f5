"""The fleet agent on the device: its own MQTT client (`<device>-fleet`, the `[mqtt]` brokers in the
sink's failover order and backoff, credentials and TLS) subscribed to `<prefix>/<device>/model/install`
and to each of its groups' `<prefix>/group/<group>/model/install`.

paho's network thread only hands messages over (a bounded inbox). The agent thread applies the
rules (job.decide) and answers at once (queued, rejected, or the status a known job has); the
worker thread owns the job queue and runs one job at a time (install.Installer), publishing every
step retained on `<prefix>/<device>/model/job`. Both stop when asked, within their timeouts; a job
cut short resumes at the next start from the ledger. Presence (`<prefix>/<device>/fleet`, retained)
goes out at each connect and after each job.

Home Assistant's update entity: `<prefix>/<device>/model/update` (retained, discovery.update_state)
says the running version, the newest offered job's version and summary, and the download's progress;
`install` on `<prefix>/<device>/model/update/install` runs the newest job offered and not run yet (a
command with `"manual": true` is offered and waits for that button instead of running at once).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .. import __version__
from ..fleetconfig import FleetConfig
from ..sinkconfig import MqttConfig
from ..sinks.mqtt import discovery
from ..sinks.mqtt.client import point_at
from ..sinks.mqtt.failover import Broker, Brokers
from ..sinks.mqtt.tls import client_context, tls_problem
from .health import Rules
from .install import Effects, Installer
from .job import BadCommand, Delivery, InstallCommand, JobState, JobStatus, Phase, Verdict, decide, parse_command
from .ledger import JobRecord, Ledger, LedgerError

log = logging.getLogger(__name__)

INBOX_MAX = 100  # commands waiting for the agent thread (a flood beyond this is dropped, with a warning)
JOBS_MAX = 16  # jobs queued behind the running one
SESSION_EXPIRY_S = 24 * 3600  # a plain command sent while the device is briefly away still arrives


def topics(cfg: FleetConfig, prefix: str, device_id: str) -> dict[str, str]:
    """The agent's topics: the install topics it takes commands on, and those it publishes."""
    return {
        "install": f"{prefix}/{device_id}/model/install",
        **{f"group:{g}": f"{prefix}/group/{g}/model/install" for g in cfg.groups},
        "job": f"{prefix}/{device_id}/model/job",
        "presence": f"{prefix}/{device_id}/fleet",
        "update": f"{prefix}/{device_id}/model/update",  # Home Assistant's update entity: its state
        "update_install": f"{prefix}/{device_id}/model/update/install",  # and its install button
    }


class FleetAgent:
    def __init__(
        self, cfg: FleetConfig, mqtt_cfg: MqttConfig, device_id: str, ledger: Ledger, effects: Effects
    ) -> None:
        self.cfg = cfg
        self.mqtt_cfg = mqtt_cfg
        self.device_id = device_id
        self.ledger = ledger
        self.effects = effects
        self.topics = topics(cfg, mqtt_cfg.topic_prefix, device_id)
        self.install_topics = [t for k, t in self.topics.items() if k == "install" or k.startswith("group:")]
        self._offer: InstallCommand | None = None  # the newest job offered (the update entity's latest version)
        self._waiting: dict[str, InstallCommand] = {}  # "manual" jobs offered, waiting for the install button
        self._update_lock = threading.Lock()
        endpoints = mqtt_cfg.endpoints()
        self.tls = endpoints[0][2]
        self._brokers = Brokers([Broker(h, p) for h, p, _ in endpoints])
        self._delay = 0.0  # before the next connection attempt (failover.Brokers' backoff)
        # brokers spoken to in MQTT 3.1.1, as the sink does: all with [mqtt] protocol = "3.1.1", else those
        # that answered a 5 CONNECT with "Unsupported protocol version"
        self._v311: set[Broker] = set(self._brokers.brokers) if mqtt_cfg.protocol == "3.1.1" else set()
        self._stop = threading.Event()
        self._inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue(maxsize=INBOX_MAX)
        self._jobs: queue.Queue[str] = queue.Queue(maxsize=JOBS_MAX)
        self._connected = threading.Event()
        self._announce = threading.Event()
        self._threads: list[threading.Thread] = []
        rules = Rules(window_s=cfg.health_window_s, latency_factor=cfg.latency_factor)
        self.installer = Installer(ledger, effects, self.publish_status, rules, cfg.start_delay_max_s, self._stop)
        self._client = self._make_client()
        self.dropped = 0

    # -- paho ------------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.mqtt_cfg
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.device_id}-fleet", protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(min_delay=0, max_delay=0)  # the backoff is Brokers', waited in on_pre_connect
        c.connect_timeout = 5.0
        if cfg.username is not None:
            c.username_pw_set(cfg.username, os.environ.get(cfg.password_env))
        if self.tls:
            c.tls_set_context(client_context(cfg.ca_file, cfg.cert_file, cfg.key_file))  # ConfigError: key + fix
        c.on_pre_connect = self._on_pre_connect
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    @property
    def broker(self) -> Broker:
        return self._brokers.current

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before each attempt: wait the backoff, then point paho at the broker to try (as the sink does:
        paho reads _host/_port right after this, and its setters refuse during a connection attempt)."""
        if self._delay > 0:
            self._stop.wait(self._delay)
        point_at(client, self._brokers.current, self._v311)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure and rc.getName() == "Unsupported protocol version" and self.broker not in self._v311:
            self._v311.add(self.broker)
            self._delay = 0.0
            log.info("fleet: %s:%d speaks MQTT 3.1.1 only; connecting with 3.1.1", *self.broker)
            return
        if rc.is_failure:
            log.error("fleet: %s:%d refused the connection: %s; check [mqtt] username and %s", *self.broker,
                      rc.getName(), self.mqtt_cfg.password_env)  # fmt: skip
            self._delay = self._brokers.failed()
            return
        self._brokers.connected()
        client.subscribe([(t, 1) for t in [*self.install_topics, self.topics["update_install"]]])
        log.info("fleet: listening for install commands on %s", ", ".join(self.install_topics))
        self._connected.set()
        self._announce.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        host, port = self.broker
        if self._brokers.failures == 0:  # once per outage, not per retry
            cfg = self.mqtt_cfg
            problem = tls_problem(host, port, cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file) \
                if self.tls else None  # fmt: skip
            log.warning("fleet: cannot reach broker %s:%d%s; retrying", host, port, f" ({problem})" if problem else "")
        self._delay = self._brokers.failed()
        self._connected.clear()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connected.is_set():
            self._delay = self._brokers.lost()
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._inbox.put_nowait((msg.topic, bytes(msg.payload), bool(msg.retain)))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("fleet: %d install commands dropped: more than %d waiting", self.dropped, INBOX_MAX)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        for rec in self.ledger.unfinished():  # cut short by a stop, a crash or a power cut: go on
            log.info("fleet: resuming job %s (version %d, %s)", rec.command.job_id, rec.command.version,
                     rec.phase.value)  # fmt: skip
            self._queue(rec.command.job_id)
        self._tidy_downloads()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(*self.broker, keepalive=self.mqtt_cfg.keepalive, clean_start=False,
                                   properties=props)  # fmt: skip
        self._client.loop_start()
        self._threads = [
            threading.Thread(target=self._agent, name="fleet-agent", daemon=True),
            threading.Thread(target=self._worker, name="fleet-worker", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 2.0, leave: bool = False) -> None:
        """Stop both threads (a job in progress stops where a restart resumes it) and disconnect.
        `leave` ([fleet] turned off, not a daemon stopping): first clear the retained presence, so
        `fleet status` and a rollout no longer take this device for one whose agent runs."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        for t in self._threads:
            t.join(max(0.05, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("fleet: thread %s did not stop within %.1f s", t.name, timeout)
        try:
            if leave:
                info = self._client.publish(self.topics["presence"], b"", qos=1, retain=True)
                info.wait_for_publish(max(0.05, min(1.0, deadline - time.monotonic())))
        except Exception as e:  # not connected: the presence stays; nothing else to do about it here
            log.warning("fleet: could not clear %s (%s); the device may still be listed in the fleet",
                        self.topics["presence"], e)  # fmt: skip
        try:
            self._client.disconnect()
        except Exception as e:  # paho raises little here; never let it stop the daemon's shutdown
            log.debug("fleet: disconnect: %s", e)
        stopper = threading.Thread(target=self._client.loop_stop, name="fleet-loop-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.05, deadline - time.monotonic()))

    def _tidy_downloads(self) -> None:
        """Partial downloads of jobs that will not resume take room for nothing."""
        keep = {r.command.job_id for r in self.ledger.unfinished()}
        d = self.installer.downloads
        try:
            for f in d.iterdir() if d.is_dir() else ():
                if f.is_file() and Path(f.name).stem not in keep:
                    f.unlink()
        except OSError as e:
            log.warning("fleet: could not tidy %s: %s", d, e)

    # -- publishing ----------------------------------------------------------------------------------
    def publish_status(self, status: JobStatus) -> None:
        doc = status.document(self.device_id, self.cfg.groups)
        self._client.publish(self.topics["job"], json.dumps(doc), qos=1, retain=True)
        log.debug("fleet: job %s %s %s", status.job_id, status.state.value, status.reason)
        self.publish_update(status)

    def publish_update(self, status: JobStatus | None = None) -> None:
        """The update entity's state: the running version, the newest offered job's version and
        summary (a job that ended rejected or rolled back is no longer on offer), and while `status`
        (the job's step) is not over, in progress with the download's percentage."""
        with self._update_lock:
            offer = self._offer
            if status is not None and offer is not None and status.job_id == offer.job_id and \
                    status.state in (JobState.REJECTED, JobState.ROLLED_BACK):  # fmt: skip
                offer = self._offer = None
        installed = self.effects.running().version
        latest = offer.version if offer is not None and (installed is None or offer.version > installed) else None
        summary = offer.extra.get("summary") if offer is not None and latest is not None else None
        busy = status is not None and not status.state.terminal
        doc = discovery.update_state(
            installed, latest, summary=summary if isinstance(summary, str) else None, in_progress=busy,
            percentage=status.progress if busy and status is not None and status.state is JobState.DOWNLOADING
            else None,
        )  # fmt: skip
        self._client.publish(self.topics["update"], json.dumps(doc), qos=1, retain=True)

    def publish_presence(self) -> None:
        running = self.effects.running()
        doc = {
            "device": self.device_id,
            "groups": list(self.cfg.groups),
            "running_version": running.version,
            "model": Path(running.path).name,
            "edge_resnet": __version__,
            "ts": round(time.time(), 3),
        }
        self._client.publish(self.topics["presence"], json.dumps(doc), qos=1, retain=True)

    # -- the agent thread: commands in, answers out ------------------------------------------------------
    def _agent(self) -> None:
        while not self._stop.is_set():
            if self._announce.is_set():
                self._announce.clear()
                self.publish_presence()
                self.publish_update()
            try:
                topic, payload, retained = self._inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            try:
                self.handle(topic, payload, Delivery.RETAINED if retained else Delivery.LIVE)
            except Exception:  # a bug must not end the agent: the next command gets its answer
                log.exception("fleet: handling a command on %s failed (please report this)", topic)

    def handle(self, topic: str, payload: bytes, delivery: Delivery) -> None:
        """One command: run it, re-publish what it did, or refuse it (one line, published)."""
        if topic == self.topics["update_install"]:
            if payload.strip() == b"install" and delivery is Delivery.LIVE:  # a retained press is old news
                self.install_offered()
            return
        try:
            cmd = parse_command(payload, self.cfg.max_download_bytes)
        except BadCommand as e:
            log.warning("fleet: refused a command on %s: %s", topic, e.reason)
            if e.job_id is not None:
                self.publish_status(self._rejected(e.job_id, None, e.reason))
            return
        if cmd is None:
            return  # an empty retained message: a command being cleared
        running = self.effects.running().version
        d = decide(cmd, self.ledger.known(running), delivery)
        if d.verdict is Verdict.REPUBLISH:
            rec = self.ledger.get(cmd.job_id)
            if rec is not None:
                self.publish_status(rec.status)
            return
        if d.verdict is Verdict.IGNORE:
            log.debug("fleet: %s (retained on %s); ignored", d.reason, topic)
            return
        if d.verdict is Verdict.REJECT:
            log.warning("fleet: job %s refused: %s", cmd.job_id, d.reason)
            status = self._rejected(cmd.job_id, cmd.version, d.reason)
            if self.ledger.get(cmd.job_id) is None:  # a new job: remembered, so a repeat gets the same answer
                self._record(JobRecord(cmd, status, Phase.DONE))
            self.publish_status(status)
            return
        with self._update_lock:
            if self._offer is None or cmd.version >= self._offer.version:
                self._offer = cmd
        if cmd.extra.get("manual") is True:  # offered: it waits for the update entity's install button
            self._waiting[cmd.job_id] = cmd
            log.info("fleet: job %s (version %d) offered; it runs when installed from Home Assistant", cmd.job_id,
                     cmd.version)  # fmt: skip
            self.publish_update()
            return
        self._run(cmd, running)

    def install_offered(self) -> None:
        """The update entity's install button: run the newest job offered and not run yet, if any."""
        waiting = [c for c in self._waiting.values() if self.ledger.get(c.job_id) is None]
        self._waiting.clear()
        if not waiting:
            log.info("fleet: install asked from Home Assistant; no job is waiting")
            return
        cmd = max(waiting, key=lambda c: c.version)
        log.info("fleet: installing job %s (version %d), asked from Home Assistant", cmd.job_id, cmd.version)
        running = self.effects.running().version
        d = decide(cmd, self.ledger.known(running), Delivery.LIVE)  # the rules again: another job may have run
        if d.verdict is not Verdict.RUN:
            status = self._rejected(cmd.job_id, cmd.version, d.reason or "not newer than what runs")
            self.publish_status(status)
            return
        self._run(cmd, running)

    def _run(self, cmd: InstallCommand, running: int | None) -> None:
        """Queue a job that the rules let run."""
        rec = JobRecord(cmd, JobStatus(cmd.job_id, JobState.QUEUED, cmd.version, running_version=running), Phase.QUEUED)
        if self._jobs.full():
            status = self._rejected(cmd.job_id, cmd.version, f"{JOBS_MAX} jobs are queued already; send it again later")
            self.publish_status(status)
            return
        if not self._record(rec):
            return
        log.info("fleet: job %s queued (version %d from %s)", cmd.job_id, cmd.version, cmd.url)
        self.publish_status(rec.status)
        self._queue(cmd.job_id)

    def _rejected(self, job_id: str, version: int | None, reason: str) -> JobStatus:
        return JobStatus(job_id, JobState.REJECTED, version, reason, running_version=self.effects.running().version)

    def _record(self, rec: JobRecord) -> bool:
        try:
            self.ledger.put(rec)
            return True
        except LedgerError as e:
            log.error("fleet: %s", e)
            self.publish_status(self._rejected(rec.command.job_id, rec.command.version, str(e)))
            return False

    def _queue(self, job_id: str) -> None:
        try:
            self._jobs.put_nowait(job_id)
        except queue.Full:
            log.error("fleet: job queue full; job %s waits for the next start", job_id)

    # -- the worker thread: one job at a time --------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._jobs.get(timeout=0.25)
            except queue.Empty:
                continue
            rec = self.ledger.get(job_id)
            if rec is None or rec.phase is Phase.DONE:
                continue
            try:
                self.installer.run(rec)
            except Exception as e:  # a bug: end the job with it rather than leave it hanging
                log.exception("fleet: job %s failed (please report this)", job_id)
                status = self._rejected(job_id, rec.command.version, f"internal error: {type(e).__name__}: {e}")
                self._record(JobRecord(rec.command, status, Phase.DONE))
                self.publish_status(status)
            if not self._stop.is_set():
                self.publish_presence()
