"""Why the broker could not be reached, phrased as the fix. paho only says that a connection attempt
failed; a wrong host name, a broker that is down, a TLS mismatch, a client certificate the broker
refuses and wrong credentials need different fixes, so the sink names which one it is (the log once
per cause, and its health words), and `doctor` says the same words for each broker of the list."""

from __future__ import annotations

import errno
import socket
import ssl
from enum import Enum

_NETWORK = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}

# OpenSSL's words when strict X.509 verification (VERIFY_X509_STRICT, Python 3.13's default) refuses a
# certificate an older Python accepted, e.g. "CA cert does not include key usage extension"
_STRICT_X509 = ("key usage extension", "key identifier", "basic constraints", "not marked critical")

# TLS alerts a server sends about the certificate the client sent (or did not send)
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}


class Unreachable(Enum):
    """The cause of a failed connection attempt."""

    DNS = "dns"  # the host name does not resolve
    REFUSED = "refused"  # the host answers, nothing listens on the port
    TIMEOUT = "timeout"  # no answer at all within the connect timeout
    NETWORK = "network"  # no route to the host
    SERVER_CERT = "server certificate"  # the broker's certificate is not trusted or names another host
    CLIENT_CERT = "client certificate"  # the broker wants a client certificate, or refuses ours
    TLS = "tls"  # TCP works, the TLS handshake does not (e.g. mqtts:// against a plain listener)
    AUTH = "auth"  # TLS (if any) works, the broker refused CONNECT (credentials, client id, ACL)
    OTHER = "other"

    @classmethod
    def of(cls, err: BaseException | None) -> Unreachable:
        if isinstance(err, socket.gaierror):
            return cls.DNS
        if isinstance(err, ssl.SSLCertVerificationError):
            return cls.SERVER_CERT
        if isinstance(err, ssl.SSLError):
            return cls.CLIENT_CERT if err.reason in _CLIENT_CERT_ALERTS else cls.TLS
        if isinstance(err, ConnectionRefusedError):
            return cls.REFUSED
        if isinstance(err, TimeoutError):
            return cls.TIMEOUT
        if isinstance(err, OSError) and err.errno in _NETWORK:
            return cls.NETWORK
        return cls.OTHER

    @property
    def lasting(self) -> bool:
        """A mistake of the config or the broker's set-up (waiting does not fix it), not an outage."""
        return self in (Unreachable.DNS, Unreachable.SERVER_CERT, Unreachable.CLIENT_CERT, Unreachable.TLS,
                        Unreachable.AUTH)  # fmt: skip


def unreachable_words(
    cause: Unreachable, err: BaseException | None, cert_file: str | None = None, host: str = ""
) -> str:
    """What is wrong and the fix, after the subject (`subject`), e.g. "name not resolved (DNS); check [mqtt] url".
    `cert_file`: the client certificate sent (for CLIENT_CERT); `host`: the name dialled (SERVER_CERT)."""
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
    if cause is Unreachable.SERVER_CERT:
        msg = getattr(err, "verify_message", None) or (str(err) if err is not None else "not verified")
        if any(m in msg.lower() for m in _STRICT_X509):
            return (
                f"TLS certificate not accepted ({msg}): Python 3.13 and newer verify certificates strictly and the "
                "CA or the broker's certificate lacks an extension they require; make them again with "
                "deploy/README.md's openssl recipe (keyUsage, basicConstraints critical, key identifiers)"
            )
        if "hostname" in msg or "IP address mismatch" in msg:
            return (
                f"TLS certificate not accepted ({msg}): the broker's certificate names another host; "
                f"use the host name the broker's certificate names instead of {host or 'this one'} in [mqtt] url"
            )
        return (
            f"TLS certificate not accepted ({msg}): the server certificate is not trusted; "
            "set [mqtt] ca_file to the CA that signed the broker's certificate"
        )
    if cause is Unreachable.CLIENT_CERT:
        alert = getattr(err, "reason", None)
        how = f"TLS alert {alert}" if alert else "the broker ended the TLS session before answering CONNECT"
        if cert_file is None:
            return (
                f"client certificate required ({how}) and this device sends none; set [mqtt] cert_file and "
                "key_file (a certificate the broker's CA signed)"
            )
        return (
            f"client certificate refused ({how}): the broker does not accept {cert_file}; have [mqtt] cert_file "
            "signed by the CA the broker trusts for clients (its cafile), unexpired"
        )
    if cause is Unreachable.TLS:
        why = str(getattr(err, "reason", None) or (err.strerror if isinstance(err, OSError) and err.strerror else err))
        return f"TLS handshake failed ({why}); is this port a TLS listener? use mqtt:// for a plain one"
    if cause is Unreachable.AUTH:
        return f"refused the connection: {err}" if err is not None else "refused the connection"
    return f"cannot connect ({err})" if err is not None else "cannot connect"


def refused_words(reason: str, password_env: str, client_cert: bool) -> str:
    """A broker that answered CONNECT with a refusal (CONNACK), phrased as the fix."""
    who = "the client certificate's name (use_identity_as_username), " if client_cert else ""
    return (
        f"refused the connection: {reason}; check [mqtt] username, {password_env}, {who}client_id and the broker's ACL"
    )


def subject(cause: Unreachable | None, host: str, port: int) -> str:
    """What the words are about: the host name when it does not resolve, else host:port."""
    return f"broker host {host}" if cause is Unreachable.DNS else f"broker {host}:{port}"
