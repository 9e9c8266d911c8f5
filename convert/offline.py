"""A guard that makes any outbound network connection during conversion fail loudly.

onnx2tf fetches sample images from GitHub when it thinks it needs them; we always supply our own,
and this guard turns any attempt we missed into an error instead of a silent download.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edge_resnet.errors import EdgeResnetError

_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkAccessError(EdgeResnetError):
    """Conversion tried to reach the network; it must run offline."""


@contextmanager
def offline() -> Iterator[None]:
    """Refuse every IPv4/IPv6 connection and name lookup for the duration (local sockets still work)."""
    orig_connect = socket.socket.connect
    orig_connect_ex = socket.socket.connect_ex
    orig_create = socket.create_connection
    orig_getaddrinfo = socket.getaddrinfo

    def refuse(what: object) -> NetworkAccessError:
        return NetworkAccessError(
            f"conversion tried to open a network connection to {what}; it must run offline "
            "(this is a bug in edge-resnet or onnx2tf: please report it)"
        )

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in _INET:
            raise refuse(address)
        orig_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in _INET:
            raise refuse(address)
        return orig_connect_ex(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        raise refuse(address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (None, "localhost", "127.0.0.1", "::1"):
            return orig_getaddrinfo(host, *args, **kwargs)
        raise refuse(host)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.create_connection = create_connection  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = orig_connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = orig_connect_ex  # type: ignore[method-assign,assignment]
        socket.create_connection = orig_create
        socket.getaddrinfo = orig_getaddrinfo
