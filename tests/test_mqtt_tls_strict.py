"""Python 3.13 verifies TLS certificates strictly (VERIFY_X509_STRICT in its default context): a CA made
without keyUsage, accepted by Python 3.11, is refused there with OpenSSL's "CA cert does not include key
usage extension". The device's diagnosis names the fix (deploy/README.md's recipe), not "set ca_file",
which is already set. A real handshake: openssl-made certificates, a Python TLS server on loopback, a
client context with the strict flag that Python 3.13 sets by default."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from edge_resnet.sinks.mqtt.reach import Unreachable, unreachable_words
from tests.helpers.pki import Pki, openssl

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _old_style_ca(d: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) as a plain `openssl req -x509` makes them: no keyUsage."""
    exe = openssl()

    def run(*a: str | Path) -> None:
        subprocess.run([exe, *map(str, a)], check=True, capture_output=True)

    run("req", "-x509", *KEY, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2", "-subj", "/CN=old CA")
    run("req", *KEY, "-keyout", d / "s.key", "-out", d / "s.csr", "-subj", "/CN=localhost")
    (d / "s.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", d / "s.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", d / "s.ext", "-out", d / "s.crt")
    return d / "ca.crt", d / "s.crt", d / "s.key"


def _handshake(ca: Path, cert: Path, key: Path, strict: bool) -> BaseException | None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            server.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ctx = ssl.create_default_context(cafile=str(ca))
    if strict:
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()
        return None
    except (ssl.SSLError, OSError) as e:
        return e
    finally:
        t.join(5)
        listener.close()


def test_a_ca_python_313_refuses_is_named_with_its_fix(tmp_path: Path) -> None:
    ca, cert, key = _old_style_ca(tmp_path)
    assert _handshake(ca, cert, key, strict=False) is None  # Python 3.11's default: accepted
    err = _handshake(ca, cert, key, strict=True)
    assert isinstance(err, ssl.SSLCertVerificationError), err
    assert Unreachable.of(err) is Unreachable.SERVER_CERT
    words = unreachable_words(Unreachable.SERVER_CERT, err, host="127.0.0.1")
    print("\n" + words)
    assert "CA cert does not include key usage extension" in words
    assert "Python 3.13 and newer verify certificates strictly" in words and "deploy/README.md" in words
    assert "set [mqtt] ca_file" not in words  # the old advice: ca_file was set and right


def test_the_recipes_ca_passes_strict_verification(tmp_path: Path) -> None:
    """The CA tests/helpers/pki.py makes (deploy/README.md's recipe) is what the fix points at."""
    pki = Pki(tmp_path / "pki")
    cert, key = pki.server()
    assert _handshake(pki.ca, cert, key, strict=True) is None


@pytest.mark.parametrize("message", ["Missing Authority Key Identifier", "Basic Constraints of CA cert not marked "
                                     "critical"])
def test_other_strict_refusals_get_the_same_fix(message: str) -> None:
    err = ssl.SSLCertVerificationError(1, message)
    err.verify_message = message
    assert "deploy/README.md's openssl recipe" in unreachable_words(Unreachable.SERVER_CERT, err)
