"""The signed manifest: what a signature vouches for, and `sign_model`, which adds one to a bundle.

`signature.json` (a member of the bundle's trailing ZIP, beside edge_resnet.json) is an envelope:

    {"format": "edge-resnet-signature", "algorithm": "ed25519", "key_id": "3f2a9c0d1e4b5a67",
     "manifest": "<the manifest's JSON, as a string: exactly the bytes signed>", "signature": "<base64>"}

The manifest travels as the exact bytes that were signed, so verifying never depends on
re-serialising JSON the same way. It names the flatbuffer's SHA-256 and size, the SHA-256 of every
other member (edge_resnet.json, labels.txt, a learned head: an edited label is caught), the version
(an integer that only goes up), creation time, expiry, target, the lowest edge-resnet that may run
it, and the key id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..bundle import SIGNATURE_NAME, read_model, write_members
from ..errors import ModelError
from .keys import key_id

MANIFEST_FORMAT = "edge-resnet-manifest"
MANIFEST_VERSION = 1
ENVELOPE_FORMAT = "edge-resnet-signature"
ALGORITHM = "ed25519"
SIGNATURES_SINCE = "0.1.0"  # the first edge-resnet that checks signatures: the default minimum
MAX_VERSION = 2**53 - 1  # what every JSON reader keeps exact

Target = Literal["cpu", "edgetpu"]
TARGETS: tuple[Target, ...] = ("cpu", "edgetpu")


def member_digests(members: Mapping[str, bytes]) -> dict[str, str]:
    """Each archive member's SHA-256, by name: what a manifest signs as `files`, what the trust check
    compares, and what a learned-head record keeps of its backbone."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())}


@dataclass(frozen=True)
class Manifest:
    key_id: str
    model_sha256: str
    model_size: int
    files: dict[str, str]  # archive member -> its SHA-256 (every member but signature.json)
    version: int
    created: str  # UTC, 2025-01-31T12:00:00Z
    expires: str | None  # a UTC date, valid through that day; None: never
    target: Target
    min_edge_resnet: str = SIGNATURES_SINCE
    format: str = MANIFEST_FORMAT
    manifest_version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer signer added (kept, not acted on)

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d.update(d.pop("extra"))
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest (only ever one whose signature verified); ValueError names what is wrong."""
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise ValueError("not an edge-resnet manifest")
        known = {k: d.pop(k) for k in list(d) if k in cls.__dataclass_fields__ and k != "extra"}
        try:
            m = cls(**known, extra=d)
        except TypeError as e:
            raise ValueError(str(e)) from None
        checks = (
            isinstance(m.key_id, str),
            isinstance(m.model_sha256, str),
            _is_int(m.model_size),
            isinstance(m.files, dict) and all(isinstance(v, str) for v in m.files.values()),
            _is_int(m.version),
            isinstance(m.created, str),
            m.expires is None or isinstance(m.expires, str),
            m.target in TARGETS,
            isinstance(m.min_edge_resnet, str),
            _is_int(m.manifest_version),
        )
        if not all(checks):
            raise ValueError("a field has the wrong type")
        if m.expires is not None:
            date.fromisoformat(m.expires)  # ValueError if not YYYY-MM-DD
        return m


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Envelope:
    """signature.json: the key id (to find the key), the signed bytes and the signature."""

    key_id: str
    manifest: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        d = {
            "format": ENVELOPE_FORMAT,
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "manifest": self.manifest.decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """ValueError names what is wrong."""
        try:
            d = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != ENVELOPE_FORMAT:
            raise ValueError("not an edge-resnet signature")
        if d.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {d.get('algorithm')!r} is not {ALGORITHM}")
        kid, manifest, sig = d.get("key_id"), d.get("manifest"), d.get("signature")
        if not (isinstance(kid, str) and isinstance(manifest, str) and isinstance(sig, str)):
            raise ValueError("key_id, manifest and signature must be strings")
        try:
            raw = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise ValueError("the signature is not base64") from None
        return cls(kid, manifest.encode(), raw)


def sign_model(
    path: str | os.PathLike[str],
    private: Ed25519PrivateKey,
    version: int,
    *,
    expires: date | None = None,
    target: Target | None = None,
    min_edge_resnet: str = SIGNATURES_SINCE,
    today: date | None = None,
) -> Manifest:
    """Sign the bundle at `path` in place (temp file + rename, its mode kept; a symlink's target is
    signed); an older signature is replaced. `target` defaults to what the model is compiled for."""
    p = Path(path).resolve()
    mf = read_model(p)  # refuses a corrupt bundle: nothing damaged gets signed
    if mf.meta is None:
        raise ModelError(
            f"{path} is a plain .tflite without edge-resnet metadata: only a bundle carries a signature; "
            "sign the bundle `edge-resnet convert` wrote"
        )
    if not 0 <= version <= MAX_VERSION:
        raise ModelError(f"--version {version} is out of range; use an integer 0..{MAX_VERSION} that only goes up")
    compiled: Target = "edgetpu" if mf.is_edgetpu else "cpu"
    if target is not None and target != compiled:
        raise ModelError(f"{path} is compiled for {'the Edge TPU' if compiled == 'edgetpu' else 'the CPU'}, "
                         f"not --target {target}; leave --target out or sign the {target} model")
    today = today or time_today()
    if expires is not None and expires < today:
        raise ModelError(f"--expires {expires} is in the past (today is {today} UTC); pick a later date")
    if _version_tuple(min_edge_resnet) is None:
        raise ModelError(f"--min-edge-resnet {min_edge_resnet!r} is not a version like 0.2.0")
    manifest = Manifest(
        key_id=key_id(private.public_key()),
        model_sha256=mf.sha256,
        model_size=len(mf.flatbuffer),
        files=member_digests(mf.members),
        version=version,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        expires=expires.isoformat() if expires else None,
        target=target or compiled,
        min_edge_resnet=min_edge_resnet,
    )
    body = manifest.to_bytes()
    envelope = Envelope(manifest.key_id, body, private.sign(body))
    mode = stat.S_IMODE(p.stat().st_mode)
    write_members(mf.flatbuffer, {**mf.members, SIGNATURE_NAME: envelope.to_bytes()}, p, mode=mode)
    return manifest


def time_today() -> date:
    """Today's date in UTC (expiry dates are UTC dates, whatever the device's time zone)."""
    return datetime.now(UTC).date()


def _version_tuple(text: str) -> tuple[int, ...] | None:
    """"0.2.1" -> (0, 2, 1); a pre-release suffix ("0.3.0rc1") counts as its release; None if no number."""
    parts = []
    for piece in text.strip().split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if parts else None


def version_at_least(running: str, needed: str) -> bool:
    """Whether edge-resnet `running` is `needed` or newer (an unparsable `needed` never is)."""
    have, want = _version_tuple(running), _version_tuple(needed)
    if have is None or want is None:
        return False
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))

