"""The sink tables (`[mqtt]`, `[http]`, `[video]`, `[stdout]`): pure dataclasses checked at load time,
apart from the sinks that use them so that loading a config imports no paho, cv2 or http.server.
The registry that maps a table name to its class and factory is `config.SINKS`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from .configtools import check_range
from .errors import ConfigError

_TOPIC_BAD = re.compile(r"[#+\x00]")


@dataclass
class MqttConfig:
    """`[mqtt]` in the config file. The password is read from the environment variable `password_env`.

    `url` is one broker or a list of them (failover: the daemon connects to the first that answers and
    stays on the one that works). Every URL of a list has the same scheme: a failover must never move
    the password and the device's identity from TLS to clear text."""

    url: str | list[str] = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_env: str = "EDGE_RESNET_MQTT_PASSWORD"
    ca_file: str | None = None
    cert_file: str | None = None  # client certificate (PEM) for brokers that require one (mTLS)
    key_file: str | None = None  # its private key (PEM, unencrypted)
    topic_prefix: str = "edge-resnet"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive: int = 15
    heartbeat_s: float = 30.0
    queue_max: int = 10000
    client_id: str | None = None
    # Home Assistant discovery: "device" is one message for the whole device (Home Assistant 2024.11+),
    # "entity" one message per entity (older Home Assistant); switching cleans the other form's topics
    discovery_form: Literal["device", "entity"] = "device"
    # "5": MQTT 5 (a persistent session with an expiry), 3.1.1 with a broker that answers that it
    # speaks only that; "3.1.1": always 3.1.1 (clean_session false), for brokers that do not answer so
    protocol: Literal["5", "3.1.1"] = "5"
    # Home Assistant's image entity: the annotated frame (a region's crop) of each label change as a JPEG
    # of at most 100 KB, at most one a second, retained on <prefix>/<device>/snapshot. Off: pictures leave the device
    snapshots: bool = False

    def __post_init__(self) -> None:
        tls = {t for _, _, t in self.endpoints()}  # validates every URL
        if len(tls) > 1:
            raise ConfigError(
                "[mqtt] url: the list mixes mqtt:// and mqtts://; a failover would send the password and "
                "the device's identity in clear text: use mqtts:// for every broker (or mqtt:// for all)"
            )
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise ConfigError(
                f"[mqtt] {given}: set without {missing}; a client certificate needs both: cert_file (PEM "
                "certificate) and key_file (its private key), or neither"
            )
        if self.cert_file is not None and tls == {False}:
            raise ConfigError(
                "[mqtt] cert_file: a client certificate needs TLS; use mqtts://HOST[:PORT] in [mqtt] url"
            )
        for key in ("topic_prefix", "discovery_prefix"):
            v = getattr(self, key)
            if not v or _TOPIC_BAD.search(v) or v.startswith("/") or v.endswith("/"):
                raise ConfigError(
                    f"[mqtt] {key}: {v!r} is not a usable topic prefix; use letters, digits, '-', '_' "
                    "and inner '/' (no '#', '+', leading or trailing '/')"
                )
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError(f"[mqtt] keepalive: {self.keepalive} s is out of range; use 5..3600 (15 is a good value)")
        check_range("[mqtt] heartbeat_s", self.heartbeat_s, 0.1, 86400, "seconds, e.g. 30")
        check_range("[mqtt] queue_max", self.queue_max, 1, 1_000_000, "events, e.g. 10000")
        if not self.password_env:
            raise ConfigError("[mqtt] password_env: must name an environment variable, e.g. EDGE_RESNET_MQTT_PASSWORD")
        if self.client_id is not None and not 1 <= len(self.client_id) <= 128:
            raise ConfigError("[mqtt] client_id: 1..128 characters, or leave it out")

    @property
    def urls(self) -> list[str]:
        """`url` as a list: one broker is a list of one."""
        return [self.url] if isinstance(self.url, str) else list(self.url)

    def endpoints(self) -> list[tuple[str, int, bool]]:
        """(host, port, tls) of every broker, in the order to try them."""
        urls = self.urls
        if not urls:
            raise ConfigError('[mqtt] url: the list is empty; give at least one broker, e.g. "mqtt://127.0.0.1:1883"')
        out: list[tuple[str, int, bool]] = []
        for u in urls:
            ep = self._parse(u)
            if ep[:2] in [o[:2] for o in out]:
                raise ConfigError(f"[mqtt] url: {ep[0]}:{ep[1]} is listed twice; list each broker once")
            out.append(ep)
        return out

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, tls) of the first broker: mqtt:// defaults to port 1883, mqtts:// to 8883."""
        return self.endpoints()[0]

    def _parse(self, url: str) -> tuple[str, int, bool]:
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError as e:
            raise ConfigError(f"[mqtt] url: {url!r} is not a valid URL ({e}); use mqtt://HOST:PORT") from None
        if u.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(
                f"[mqtt] url: scheme {u.scheme or '(none)'!r} in {url!r} is not supported; "
                "use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        if not u.hostname:
            raise ConfigError(f"[mqtt] url: {url!r} has no host; use mqtt://HOST[:PORT]")
        if u.path not in ("", "/") or u.query or u.fragment:
            raise ConfigError(f"[mqtt] url: {url!r} must not have a path or query; use mqtt://HOST[:PORT]")
        if u.username or u.password:
            raise ConfigError(
                "[mqtt] url: do not put credentials in the URL; set username in [mqtt] and the password in "
                f"the environment variable {self.password_env}"
            )
        tls = u.scheme == "mqtts"
        return u.hostname, port if port is not None else (8883 if tls else 1883), tls

    def file_problems(self) -> list[str]:
        """The files this table names (CA, client certificate, key) that this user cannot read, one line
        each with the fix. Not checked at load time (a config is often checked away from its device):
        the sink checks them at start, `doctor` and `config check` name them."""
        out = []
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is None:
                continue
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                why = e.strerror or str(e)
                owner = " (the key is for the service user: chown edge-resnet, chmod 0600)" if key == "key_file" else ""
                out.append(f"[mqtt] {key}: {path} cannot be read ({why}); give a readable PEM file{owner}")
        return out

    def clear_text_password(self) -> str | None:
        """Anyone on the path between device and broker reads a password sent over plain mqtt://; one
        message for `config check` (before the password is even on the device) and the running daemon."""
        if self.username is None:
            return None
        for host, port, tls in self.endpoints():
            if not tls and host not in ("127.0.0.1", "::1", "localhost"):
                return (f"[mqtt] the password for {self.username!r} goes to {host}:{port} in clear text (mqtt://); "
                        "use mqtts:// with [mqtt] ca_file, or a broker on this machine")
        return None


def parse_listen(listen: str) -> tuple[str, int]:
    """Parse `HOST:PORT` (or `[v6]:PORT`, or `:PORT` for all interfaces) into (host, port)."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"[http] listen: {listen!r} is not HOST:PORT; use e.g. 127.0.0.1:8080 or 0.0.0.0:8080")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_s)


@dataclass
class HttpConfig:
    """`[http]` in the config file. Basic auth is on when `username` is set; the password comes from `password_env`."""

    listen: str = "127.0.0.1:8080"
    username: str | None = None
    password_env: str = "EDGE_RESNET_HTTP_PASSWORD"
    jpeg_quality: int = 80
    stream_fps: float = 10.0
    history: bool = True  # keep label changes on disk under state_dir (false: in memory, lost on restart)
    history_max_events: int = 10000  # past any of the caps the oldest changes go
    history_max_mib: float = 20.0  # the history's files on disk
    history_max_age_days: float = 30.0
    history_flush_s: float = 5.0  # write waiting changes at most this often (SD-card care)

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        check_range("[http] history_max_events", self.history_max_events, 10, 1_000_000, "label changes, e.g. 10000")
        check_range("[http] history_max_mib", self.history_max_mib, 0.25, 4096, "MiB on disk, e.g. 20")
        check_range("[http] history_max_age_days", self.history_max_age_days, 0.01, 3650, "days, e.g. 30")
        check_range("[http] history_flush_s", self.history_flush_s, 0.1, 300, "seconds between writes, e.g. 5")
        if not 10 <= self.jpeg_quality <= 100:
            raise ConfigError(f"[http] jpeg_quality: {self.jpeg_quality} out of range; use 10..100, e.g. 80")
        if not 0 < self.stream_fps <= 60:
            raise ConfigError(f"[http] stream_fps: {self.stream_fps} is out of range; use a value in (0, 60], e.g. 10")
        if not self.password_env:
            raise ConfigError("[http] password_env: must name an environment variable, e.g. EDGE_RESNET_HTTP_PASSWORD")
        if self.username is not None and (not self.username or ":" in self.username):
            raise ConfigError("[http] username: must be non-empty and contain no ':'")


@dataclass
class VideoConfig:
    """`[video]` in the config file: where to write the annotated video and at what frame rate."""

    path: str
    fps: float = 10.0

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("[video] path: must be a file name, e.g. /var/lib/edge-resnet/annotated.avi")
        suffix = Path(self.path).suffix.lower()
        if suffix not in (".avi", ".mp4", ".mkv"):
            raise ConfigError(f"[video] path: {self.path!r} unsupported extension; use .avi, .mp4 or .mkv")
        if not 0 < self.fps <= 120:
            raise ConfigError(f"[video] fps: {self.fps} is out of range; use a value in (0, 120], e.g. 10")


@dataclass
class StdoutConfig:
    """`[stdout]`: JSON lines on standard output (on by default when no other sink is configured)."""

    enabled: bool = True
    every_frame: bool = False  # false: on label change and every pipeline.heartbeat_s
