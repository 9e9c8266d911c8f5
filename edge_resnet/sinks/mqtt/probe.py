"""One CONNECT to one broker, as the daemon would make it, and what stopped it: DNS, TCP, the TLS
handshake (server certificate, client certificate), then the broker's answer to CONNECT (credentials).
`doctor` probes every broker of `[mqtt] url` with it; the sink uses it (through `tls_problem`) when a
TLS connection fails in a way paho does not explain.

TLS 1.3 finishes the client's side of the handshake before the broker has looked at the client's
certificate: its refusal arrives as an alert on the first read. So the probe sends a real MQTT 3.1.1
CONNECT (every broker that speaks 5 also speaks 3.1.1) and reads the CONNACK, under its own client id
(the daemon's would throw the running daemon off the broker)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from .reach import Unreachable, refused_words, unreachable_words

TLS_CAUSES = (Unreachable.SERVER_CERT, Unreachable.CLIENT_CERT, Unreachable.TLS)

_CONNACK = {  # MQTT 3.1.1 CONNACK return codes
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


@dataclass(frozen=True)
class Reach:
    """The outcome of one probe: `cause` None when the broker accepted the CONNECT."""

    host: str
    port: int
    cause: Unreachable | None
    words: str  # what happened, phrased as the fix when it failed
    ms: float  # how long the probe took


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (the probe leaves nothing behind on the broker)."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if username is not None and password else 0)
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _utf8(client_id)
    if username is not None:
        body += _utf8(username)
        if password:
            body += _utf8(password)
    return bytes([0x10]) + _remaining(len(body)) + body


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def probe(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    *,
    username: str | None = None,
    password: str | None = None,
    password_env: str = "EDGE_RESNET_MQTT_PASSWORD",
    cert_file: str | None = None,
    timeout: float = 3.0,
) -> Reach:
    """Connect to host:port (TLS with `context` when given), send CONNECT, read the CONNACK."""
    t0 = time.perf_counter()

    def done(cause: Unreachable | None, words: str) -> Reach:
        return Reach(host, port, cause, words, (time.perf_counter() - t0) * 1000.0)

    def failed(err: BaseException) -> Reach:
        cause = Unreachable.of(err)
        return done(cause, unreachable_words(cause, err, cert_file, host))

    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return failed(e)
    sock: socket.socket = raw
    try:
        if context is not None:
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
            except ssl.SSLError as e:
                return failed(e)
            except OSError as e:  # a plain listener resetting the connection at our ClientHello
                return done(Unreachable.TLS, unreachable_words(Unreachable.TLS, e))
        client_id = f"edge-resnet-probe-{os.getpid()}-{os.urandom(3).hex()}"
        try:
            sock.sendall(connect_packet(client_id, username, password))
            ack = _read_exactly(sock, 4)
        except TimeoutError:
            return done(
                Unreachable.OTHER,
                f"reachable over TCP, but no answer to MQTT CONNECT within {timeout:g} s; check that [mqtt] url "
                "names an MQTT broker's port (a paused or overloaded broker does not answer either)",
            )
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            if context is None:
                return failed(e)
            return done(Unreachable.CLIENT_CERT, unreachable_words(Unreachable.CLIENT_CERT, e, cert_file, host))
        except OSError as e:
            return failed(e)
        if not ack and context is not None:
            # TLS 1.3: the handshake ends on our side before the broker looks at our certificate; a broker
            # that refuses it (or wanted one) closes the session, often without an alert
            return done(Unreachable.CLIENT_CERT, unreachable_words(Unreachable.CLIENT_CERT, None, cert_file, host))
        if len(ack) < 4 or ack[0] != 0x20:
            closed = "closed the connection" if not ack else f"answered {ack.hex()}"
            return done(Unreachable.OTHER, f"{closed} instead of answering CONNECT: is this an MQTT broker?")
        rc = ack[3]
        if rc:
            reason = _CONNACK.get(rc, f"return code {rc}")
            return done(Unreachable.AUTH, refused_words(reason, password_env, cert_file is not None))
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean goodbye, no Last Will
        how = "TLS, client certificate accepted" if cert_file else ("TLS" if context is not None else "plain TCP")
        return done(None, f"MQTT CONNECT accepted ({how})")
    finally:
        sock.close()
