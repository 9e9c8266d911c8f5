"""A real mosquitto for tests: start on a free loopback port, kill -9, restart on the same port,
pause (SIGSTOP) and resume; TLS with a test CA (tests/helpers/pki.py), client certificates required
(`require_certificate`, `use_identity_as_username`), a bridge to other brokers (a failover pair); plus
a paho subscriber that records what arrives.

Nothing is installed here: without `mosquitto` on PATH the tests skip, or fail under CI=true.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.pki import Pki


def mosquitto_path() -> str:
    """The mosquitto binary; a clear skip (fail under CI=true) when it is missing."""
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    msg = "mosquitto is not installed (apt-get install mosquitto); the MQTT tests need a real broker"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    pki = Pki(d)
    cert, key = pki.server()
    return pki.ca, cert, key


class Broker:
    """One mosquitto process on 127.0.0.1:`port`, persistence in `workdir` (so sessions, retained and
    queued messages survive a restart; saved after every change so that even kill -9 keeps them)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tls: bool = False,
        users: dict[str, str] | None = None,
        *,
        pki: Pki | None = None,
        require_certificate: bool = False,
        client_ca: Path | None = None,
        bridge: list[int] | None = None,
        bridge_topic: str = "edge-resnet/# both 1",
    ) -> None:
        """`tls`: the main listener speaks TLS with a throw-away CA (`ca_file`), and a plain listener on
        `plain_port` stays for test subscribers. `users`: name -> password, anonymous clients refused.
        `pki`: the CA to use for TLS (brokers of one PKI share a ca_file; default: one of its own).
        `require_certificate`: TLS clients must show a certificate signed by `client_ca` (default: the
        CA's own), whose CN becomes their user name (`use_identity_as_username`). `bridge`: ports of
        brokers on 127.0.0.1 this one bridges `bridge_topic` with (QoS 1, a persistent bridge session,
        so messages wait while the other side is down), one connection trying each address in turn."""
        self.exe = mosquitto_path()
        self.workdir = workdir
        self.port = port or free_port()
        self.plain_port = self.port
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.ca_file: Path | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        workdir.mkdir(parents=True, exist_ok=True)
        listeners = f"listener {self.port} 127.0.0.1\n"
        if tls or pki is not None:
            if pki is None:
                self.ca_file, cert, key = make_certs(workdir / "tls")
            else:
                self.ca_file, (cert, key) = pki.ca, pki.server()
            self.plain_port = free_port()
            self.url = f"mqtts://127.0.0.1:{self.port}"
            listeners += f"cafile {client_ca or self.ca_file}\ncertfile {cert}\nkeyfile {key}\n"
            if require_certificate:
                listeners += "require_certificate true\nuse_identity_as_username true\n"
            listeners += f"listener {self.plain_port} 127.0.0.1\n"
        bridges = ""
        if bridge:
            bridges = (
                f"connection bridge-{self.port}\n"
                f"addresses {' '.join(f'127.0.0.1:{p}' for p in bridge)}\n"
                f"topic {bridge_topic}\n"
                "cleansession false\n"
                f"remote_clientid bridge-{self.port}\n"
                "restart_timeout 1\n"
                "keepalive_interval 5\n"
                "notifications false\n"
            )
        auth = "allow_anonymous true\n"
        if users:
            pw = workdir / "passwords"
            pw.write_text("")
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), name, password], check=True, capture_output=True)
            auth = f"allow_anonymous false\npassword_file {pw}\n"
        self.conf.write_text(
            "per_listener_settings false\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # as root, mosquitto would drop to `mosquitto`
            + auth
            + "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "autosave_on_changes true\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 20\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"log_dest file {self.log}\n" + listeners + bridges  # a bridge's options come last
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self, timeout: float = 10.0) -> Broker:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        end = time.monotonic() + timeout
        while not (port_open(self.port) and port_open(self.plain_port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; log: {self.tail_log()}")
            if time.monotonic() > end:
                raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s: {self.tail_log()}")
            time.sleep(0.02)
        return self

    def tail_log(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final save (what a power cut or OOM kill does)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)

    def terminate(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            self.proc.wait(5)

    def restart(self, down_s: float = 0.0, hard: bool = True) -> None:
        """Kill (or terminate) and start again on the same port after `down_s` seconds."""
        self.kill() if hard else self.terminate()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def pause(self) -> None:
        """SIGSTOP: the broker is there but answers nothing, like a network partition."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client (MQTT v5, persistent session, QoS 1) that records every message it gets.

    Reconnects by itself within ~1 s, so it sees what the broker delivers across broker restarts.
    """

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str | None = None,
        persistent: bool = True,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.port = port
        self.topics = topics
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        cid = client_id or f"test-sub-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.persistent = persistent

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self.topics])
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.time()))
            self.cond.notify_all()

    def start(self, timeout: float = 10.0) -> Subscriber:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves __init__ unannotated
        if self.persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect_async(
            "127.0.0.1", self.port, keepalive=10, clean_start=not self.persistent, properties=props
        )
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"subscriber could not connect to 127.0.0.1:{self.port}")
        time.sleep(0.2)  # let SUBACK arrive
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[Message]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, pred: Callable[[list[Message]], bool], timeout: float) -> bool:
        """Wait until `pred(messages)` holds; False on timeout."""
        end = time.monotonic() + timeout
        with self.cond:
            while not pred(self.messages):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True


def retained(port: int, topic: str, timeout: float = 3.0, auth: tuple[str, str] | None = None) -> Message | None:
    """The retained message on `topic`, read by a fresh clean-session subscriber (None if there is none)."""
    sub = Subscriber(port, [topic], persistent=False, auth=auth).start()
    try:
        sub.wait_for(lambda ms: any(m.topic == topic for m in ms), timeout)
        got = sub.on(topic)
        return got[0] if got and got[0].retain else None
    finally:
        sub.stop()
