"""The TLS side of the broker link: one SSL context built from `[mqtt] ca_file`, `cert_file` and
`key_file`, used by paho and by the probes of `doctor` and the sink, so what is checked is what the
daemon sends; and why a TLS connection fails, phrased as the fix (shared by the sink and doctor)."""

from __future__ import annotations

import ssl

from ...errors import ConfigError
from .reach import Unreachable


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of prompting on a terminal the daemon has not


def _encrypted(pem: str) -> bool:
    try:
        with open(pem, "rb") as f:
            return b"ENCRYPTED" in f.read(4096)  # BEGIN ENCRYPTED PRIVATE KEY, or Proc-Type: 4,ENCRYPTED
    except OSError:
        return False


def client_context(ca_file: str | None, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """What paho's tls_set(cert_reqs=REQUIRED) builds (the broker's certificate checked against ca_file,
    or the system's CAs, and its host name), plus the client certificate when one is configured.
    ConfigError names the key and the fix when a file cannot be used."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(f"[mqtt] ca_file: {ca_file} cannot be used ({e}); give a PEM CA certificate") from None
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file, password=_no_password)
        except ssl.SSLError as e:
            reason = e.reason or str(e)
            if reason == "KEY_VALUES_MISMATCH":
                why = f"{key_file} is not the key of {cert_file}; give the key the certificate was made for"
            elif _encrypted(key_file or cert_file):
                why = f"{key_file} is encrypted; give an unencrypted key (openssl pkey -in KEY -out PLAIN.key)"
            else:
                why = f"{reason}; give a PEM certificate (cert_file) and its unencrypted private key (key_file)"
            raise ConfigError(f"[mqtt] cert_file/key_file: cannot be used: {why}") from None
        except OSError as e:
            raise ConfigError(
                f"[mqtt] cert_file/key_file: {e.filename or cert_file} cannot be read ({e.strerror or e}); "
                "give a readable PEM certificate and key"
            ) from None
    return ctx


def tls_problem(
    host: str,
    port: int,
    ca_file: str | None,
    timeout: float = 3.0,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> str | None:
    """Why a TLS connection to host:port fails, phrased as the fix (server certificate not trusted or
    for another host, client certificate required or refused, not a TLS listener); None when TLS is
    not the problem (a plain network failure, or the handshake and the broker's answer work)."""
    got = tls_diagnosis(host, port, ca_file, timeout, cert_file, key_file)
    return got[1] if got is not None else None


def tls_diagnosis(
    host: str,
    port: int,
    ca_file: str | None,
    timeout: float = 3.0,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> tuple[Unreachable, str] | None:
    """`tls_problem` with its cause (TLS, SERVER_CERT or CLIENT_CERT), for the sink's health words."""
    from .probe import TLS_CAUSES, probe  # probe builds on this module: imported when used

    try:
        ctx = client_context(ca_file, cert_file, key_file)
    except ConfigError as e:
        return Unreachable.TLS, str(e)
    got = probe(host, port, ctx, timeout=timeout, cert_file=cert_file)
    return (got.cause, got.words) if got.cause in TLS_CAUSES and got.cause is not None else None
