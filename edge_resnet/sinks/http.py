"""HTTP overlay sink: live annotated MJPEG, snapshot, state JSON, /healthz and Prometheus /metrics."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


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

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if not 10 <= self.jpeg_quality <= 100:
            raise ConfigError(f"[http] jpeg_quality: {self.jpeg_quality} out of range; use 10..100, e.g. 80")
        if not 0 < self.stream_fps <= 60:
            raise ConfigError(f"[http] stream_fps: {self.stream_fps} is out of range; use a value in (0, 60], e.g. 10")
        if not self.password_env:
            raise ConfigError("[http] password_env: must name an environment variable, e.g. EDGE_RESNET_HTTP_PASSWORD")
        if self.username is not None and (not self.username or ":" in self.username):
            raise ConfigError("[http] username: must be non-empty and contain no ':'")
