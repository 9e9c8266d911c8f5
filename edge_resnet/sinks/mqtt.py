"""MQTT sink (paho-mqtt v2): retained state, QoS 1 events with store and forward, availability, HA discovery."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigError

_TOPIC_BAD = re.compile(r"[#+\x00]")


@dataclass
class MqttConfig:
    """`[mqtt]` in the config file. The password is read from the environment variable `password_env`."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_env: str = "EDGE_RESNET_MQTT_PASSWORD"
    ca_file: str | None = None
    topic_prefix: str = "edge-resnet"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive: int = 15
    heartbeat_s: float = 30.0
    queue_max: int = 10000
    client_id: str | None = None

    def __post_init__(self) -> None:
        self.endpoint()  # validates the URL
        for key in ("topic_prefix", "discovery_prefix"):
            v = getattr(self, key)
            if not v or _TOPIC_BAD.search(v) or v.startswith("/") or v.endswith("/"):
                raise ConfigError(
                    f"[mqtt] {key}: {v!r} is not a usable topic prefix; use letters, digits, '-', '_' "
                    "and inner '/' (no '#', '+', leading or trailing '/')"
                )
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError(f"[mqtt] keepalive: {self.keepalive} s is out of range; use 5..3600 (15 is a good value)")
        if not self.heartbeat_s > 0:
            raise ConfigError(f"[mqtt] heartbeat_s: {self.heartbeat_s} must be > 0 seconds; e.g. 30")
        if self.queue_max < 1:
            raise ConfigError(f"[mqtt] queue_max: {self.queue_max} must be >= 1; e.g. 10000")
        if not self.password_env:
            raise ConfigError("[mqtt] password_env: must name an environment variable, e.g. EDGE_RESNET_MQTT_PASSWORD")
        if self.client_id is not None and not 1 <= len(self.client_id) <= 128:
            raise ConfigError("[mqtt] client_id: 1..128 characters, or leave it out")

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, tls) from `url`: mqtt:// defaults to port 1883, mqtts:// to 8883."""
        try:
            u = urlsplit(self.url)
            port = u.port
        except ValueError as e:
            raise ConfigError(f"[mqtt] url: {self.url!r} is not a valid URL ({e}); use mqtt://HOST:PORT") from None
        if u.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(
                f"[mqtt] url: scheme {u.scheme or '(none)'!r} in {self.url!r} is not supported; "
                "use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        if not u.hostname:
            raise ConfigError(f"[mqtt] url: {self.url!r} has no host; use mqtt://HOST[:PORT]")
        if u.path not in ("", "/") or u.query or u.fragment:
            raise ConfigError(f"[mqtt] url: {self.url!r} must not have a path or query; use mqtt://HOST[:PORT]")
        if u.username or u.password:
            raise ConfigError(
                "[mqtt] url: do not put credentials in the URL; set username in [mqtt] and the password in "
                f"the environment variable {self.password_env}"
            )
        tls = u.scheme == "mqtts"
        return u.hostname, port if port is not None else (8883 if tls else 1883), tls
