"""Why the broker could not be reached, phrased as the fix. paho only says that a connection attempt
failed; a wrong host name, a broker that is down and a TLS mismatch need different fixes, so the sink
names which one it is (the log once per cause, and its health words)."""

from __future__ import annotations

import errno
import socket
import ssl
from enum import Enum

_NETWORK = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


class Unreachable(Enum):
    """The cause of a failed connection attempt (before any MQTT is spoken)."""

    DNS = "dns"  # the host name does not resolve
    REFUSED = "refused"  # the host answers, nothing listens on the port
    TIMEOUT = "timeout"  # no answer at all within the connect timeout
    NETWORK = "network"  # no route to the host
    TLS = "tls"  # TCP works, the TLS handshake does not
    OTHER = "other"

    @classmethod
    def of(cls, err: BaseException | None) -> Unreachable:
        if isinstance(err, socket.gaierror):
            return cls.DNS
        if isinstance(err, ssl.SSLError):
            return cls.TLS
        if isinstance(err, ConnectionRefusedError):
            return cls.REFUSED
        if isinstance(err, TimeoutError):
            return cls.TIMEOUT
        if isinstance(err, OSError) and err.errno in _NETWORK:
            return cls.NETWORK
        return cls.OTHER


def unreachable_words(cause: Unreachable, err: BaseException | None) -> str:
    """What is wrong and the fix, after the subject (`subject`), e.g. "name not resolved (DNS); check [mqtt] url"."""
    if cause is Unreachable.DNS:
        if isinstance(err, socket.gaierror) and err.errno == socket.EAI_AGAIN:
            return (
                "name not resolved (DNS): the DNS server did not answer; check this device's network, "
                "or put the broker's IP address in [mqtt] url"
            )
        return "name not resolved (DNS); check [mqtt] url"
    if cause is Unreachable.REFUSED:
        return "connection refused: the broker is down, or listens on another port than [mqtt] url says"
    if cause is Unreachable.TIMEOUT:
        return "no answer: the host is down, a firewall drops the connection, or [mqtt] url has a wrong address"
    if cause is Unreachable.NETWORK:
        why = err.strerror if isinstance(err, OSError) and err.strerror else "no route to host"
        return f"{why.lower()}: is this device's network up?"
    return f"cannot connect ({err})" if err is not None else "cannot connect"


def subject(cause: Unreachable | None, host: str, port: int) -> str:
    """What the words are about: the host name when it does not resolve, else host:port."""
    return f"broker host {host}" if cause is Unreachable.DNS else f"broker {host}:{port}"
