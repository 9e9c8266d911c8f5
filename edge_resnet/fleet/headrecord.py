"""The device's own record of the learned heads it wrote: what lets a head made here, from the
user's images, run under `[trust] require_signature` without the fleet's key.

A learned bundle (`edge-resnet learn`, or teaching from the overlay) is the backbone's flatbuffer
unchanged plus the user's labels and a small head (learn/learned.py). When the device writes one on
a backbone that is a signed bundle (or on a learned bundle it recorded before), it also writes
`STATE_DIR/learned/<digest>.json`: the digest of the new bundle's archive members as written
(metadata, labels, head, report), the flatbuffer's digest, and the backbone's `signature.json` with
the digest of every member it signed. `trust.check_model` decides from it, in the one place: the
backbone's signature is verified again at every load, under the keys, retired list, expiry and
target of that moment, against the flatbuffer in the file; everything else in the file must be,
byte for byte, what this device wrote. A backbone without a signature gets no record.

Threat model. The record needs no key, because all it vouches for is which classes the features of
a network the fleet key signed are mapped to, and whoever can write the state directory (the
service user and root) decides that already: teaching trains on the examples kept there
(STATE_DIR/examples). It protects against everyone else: a user or process that can put or replace
a model file (the models folder, a `[[region]] model`, a file the Home Assistant select offers, a
copy from another device) but cannot write the state directory gets an edited or foreign head
refused, and can never get a flatbuffer run that the fleet key did not sign. A secret key kept in
the state directory would add nothing: the same users could read it. Root or the service user can
forge a record; they can also change the examples, or the code.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..atomicwrite import write_atomic
from ..bundle import ModelFile, read_parts
from ..config import DEFAULT_STATE_DIR, default_state_dir, user_state_dir
from ..errors import EdgeResnetError
from .manifest import member_digests

log = logging.getLogger(__name__)

RECORDS_DIR = "learned"  # under the state directory
FORMAT = "edge-resnet-learned-head"
VERSION = 1
MAX_RECORD = 256 * 2**10  # a signature envelope and a few digests: a few KB


def members_digest(members: Mapping[str, bytes]) -> str:
    """One digest of a bundle's archive members, names and contents (the signature is never a member)."""
    text = json.dumps(member_digests(members), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Record:
    """What this device wrote: a learned bundle's members and flatbuffer, and its backbone's signature."""

    members_sha256: str
    model_sha256: str
    path: str  # where it was written (absolute), for the "changed since" message
    written_at: str  # UTC
    backbone_signature: bytes  # the backbone bundle's signature.json, as stored
    backbone_files: dict[str, str]  # the backbone's archive members as signed: name -> SHA-256

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["backbone_signature"] = base64.b64encode(self.backbone_signature).decode()
        return json.dumps({"format": FORMAT, "version": VERSION, **d}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Record:
        """ValueError names what is wrong (a damaged record vouches for nothing)."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError("not a learned-head record")
            if d.get("version") != VERSION:
                raise ValueError(f"record version {d.get('version')!r} is not {VERSION}")
            files = d["backbone_files"]
            if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                raise ValueError("backbone_files is not a table of digests")
            return cls(str(d["members_sha256"]), str(d["model_sha256"]), str(d["path"]), str(d["written_at"]),
                       base64.b64decode(d["backbone_signature"], validate=True), dict(files))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError, binascii.Error) as e:
            raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None


class HeadRecords:
    """The records under `STATE_DIR/learned/`, one small file per learned bundle, named by its
    members' digest: looking one up is one `open`, and the learn command and the daemon's teaching
    write side by side without a shared index to lock."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / RECORDS_DIR

    def find(self, members: Mapping[str, bytes]) -> Record | None:
        """The record of a bundle with exactly these archive members, or None."""
        digest = members_digest(members)
        rec = self._read(self.dir / f"{digest}.json")
        return rec if rec is not None and rec.members_sha256 == digest else None

    def written_at(self, path: str | os.PathLike[str]) -> Record | None:
        """The newest record of a bundle this device wrote at `path` (whatever the file holds now)."""
        where = str(Path(path).resolve())
        found = [r for r in map(self._read, self._files()) if r is not None and r.path == where]
        return max(found, key=lambda r: r.written_at, default=None)

    def record(self, out: str | os.PathLike[str], base: ModelFile) -> Path | None:
        """Record the learned bundle just written at `out` from the backbone `base`; None when the
        backbone is neither signed nor recorded here (nothing to vouch for). The records of earlier
        bundles written at the same path go: the file no longer holds them. OSError: disk problems."""
        proof = self._proof(base)
        if proof is None:
            return None
        parts = read_parts(out)  # the members as written, as trust.check_model will read them
        rec = Record(members_digest(parts.members), parts.model_sha256, str(Path(out).resolve()),
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), *proof)  # fmt: skip
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / f"{rec.members_sha256}.json"
        write_atomic(target, rec.to_json(), suffix=".json")  # open()'s mode: the service user reads it
        for f in self._files():
            old = self._read(f)
            if f != target and old is not None and old.path == rec.path:
                f.unlink(missing_ok=True)
        return target

    def _proof(self, base: ModelFile) -> tuple[bytes, dict[str, str]] | None:
        """The backbone's signature and signed member digests: its own, or those its record holds
        (a learned bundle this device recorded, learned on again)."""
        if base.signature is not None:
            return base.signature, member_digests(base.members)
        if base.meta is None or base.meta.head is None:
            return None
        rec = self.find(base.members)
        if rec is None or rec.model_sha256 != base.meta.model_sha256:
            return None
        return rec.backbone_signature, rec.backbone_files

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except OSError:
            return []

    def _read(self, path: Path) -> Record | None:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_RECORD + 1)
        except OSError:
            return None
        if len(data) > MAX_RECORD:
            return None
        try:
            return Record.from_json(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("learned-head record %s is damaged (%s); it vouches for nothing", path, e)
            return None


def command_state_dir() -> Path:
    """The state directory a command run by hand records into: the daemon's default one
    ($STATE_DIRECTORY, else /var/lib/edge-resnet), or, when this user cannot write that default,
    ~/.local/state/edge-resnet, as `run` falls back (daemon.prepare_state_dir)."""
    p = Path(default_state_dir())
    if str(p) != DEFAULT_STATE_DIR or _writable(p):
        return p
    return user_state_dir()


def _writable(p: Path) -> bool:
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.access(p, os.W_OK)


def record_learned(out: Path, base: ModelFile, state_dir: Path | None = None) -> None:
    """`edge-resnet learn`: record `out` in `state_dir` (`--state-dir`: the daemon's), else this user's
    state directory, saying where in one line; a failure to record is a warning (the model is written,
    and runs wherever no signature is required)."""
    state = state_dir or command_state_dir()
    try:
        made = HeadRecords(state).record(out, base)
    except (OSError, EdgeResnetError) as e:
        log.warning("%s is not recorded as learned on this device (%s): a device with [trust] "
                    "require_signature refuses it; run learn as the service's user, or sign the model", out, e)
        return
    if made is None:
        return
    if state_dir is None and str(state) != default_state_dir():
        log.warning("%s is recorded in %s, not in %s (not writable): a daemon running as another user (the "
                    "edge-resnet service) does not see it; run learn as that user: sudo -u edge-resnet edge-resnet "
                    "learn ...", out, made, default_state_dir())
    else:
        log.info("recorded %s as learned on this device on a signed backbone (%s)", out.name, made)
