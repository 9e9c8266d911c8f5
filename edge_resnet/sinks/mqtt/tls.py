"""Why a TLS connection to the broker fails, phrased as the fix: shared by the sink (on its first
failed connect) and `edge-resnet doctor`, so both say the same thing."""

from __future__ import annotations

import socket
import ssl


def tls_problem(host: str, port: int, ca_file: str | None, timeout: float = 3.0) -> str | None:
    """Why a TLS connection to host:port fails, phrased as the fix; None when TLS is not the problem
    (a plain network failure, or the handshake works)."""
    ctx = ssl.create_default_context(cafile=ca_file)  # what paho's tls_set(cert_reqs=REQUIRED) checks
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None  # not reachable at all: the plain "cannot connect" says it
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as e:
        fix = "set [mqtt] ca_file to the CA that signed the broker's certificate"
        if "hostname" in str(e.verify_message) or "IP address mismatch" in str(e.verify_message):
            fix = f"use the host name the broker's certificate names instead of {host}"
        return f"TLS certificate not accepted ({e.verify_message}); {fix}"
    except OSError as e:  # SSLError, or a plain listener resetting the connection at our ClientHello
        why = e.reason if isinstance(e, ssl.SSLError) and e.reason else (e.strerror or str(e))
        return f"TLS handshake failed ({why}); is port {port} a TLS listener? use mqtt:// for a plain one"
    finally:
        sock.close()
