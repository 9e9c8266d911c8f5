"""A throw-away certificate authority made with the `openssl` CLI, as an operator would make one: a CA,
a server certificate for 127.0.0.1/localhost, and client certificates (CN = the device) for brokers
with `require_certificate true`. EC P-256 keys: quick to make on a busy machine.

    pki = Pki(tmp / "pki")
    cert, key = pki.server()
    ccert, ckey = pki.client("cam-1")

Without `openssl` on PATH the tests skip (fail under CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl() -> str:
    exe = shutil.which("openssl")
    if exe is None:
        msg = "openssl is not installed (apt-get install openssl); the TLS tests need it"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


_LEAF = "keyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"


class Pki:
    """A CA in `d` (ca.crt, ca.key); certificates it signs are written beside it."""

    def __init__(self, d: Path, name: str = "edge-resnet-test-CA") -> None:
        self.exe = openssl()
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca = d / "ca.crt"
        self.ca_key = d / "ca.key"
        # the extensions a CA needs for Python 3.13+'s strict verification (VERIFY_X509_STRICT: without
        # keyUsage, "CA cert does not include key usage extension"), as deploy/README.md's recipe makes it
        self._run("req", "-x509", *_KEY, "-keyout", self.ca_key, "-out", self.ca, "-days", "2", "-subj", f"/CN={name}",
                  "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                  "-addext", "subjectKeyIdentifier=hash")  # fmt: skip

    def _run(self, *args: str | Path) -> None:
        r = subprocess.run([self.exe, *map(str, args)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {r.stderr.strip()}")

    def _issue(self, name: str, subject: str, ext: str) -> tuple[Path, Path]:
        key, csr, cert, extfile = (self.dir / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        extfile.write_text(ext + _LEAF)
        self._run("req", *_KEY, "-keyout", key, "-out", csr, "-subj", subject)
        self._run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                  "-out", cert, "-days", "2", "-extfile", extfile)  # fmt: skip
        key.chmod(0o600)
        return cert, key

    def server(self, name: str = "server") -> tuple[Path, Path]:
        """(certificate, key) for a broker on 127.0.0.1 / localhost."""
        return self._issue(name, "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                           "extendedKeyUsage=serverAuth\n")  # fmt: skip

    def client(self, cn: str) -> tuple[Path, Path]:
        """(certificate, key) for a device: CN is its name (the broker's use_identity_as_username)."""
        return self._issue(f"client-{cn}", f"/CN={cn}", "extendedKeyUsage=clientAuth\n")
