"""Whether a model may run: the one decision, for every way a model arrives (start, reload, a file
replaced on disk, a rollout's download). `check_model` returns the verified manifest, or None for an
unsigned model the policy lets run, or raises `ModelRefused` with a `Refusal` and one line naming
the fix. Pure logic over the file's bytes: no network, no clock but the one passed in.

Order matters: nothing in a manifest is believed before its signature verifies with a trusted key.
With `require_signature = false` a model that would run unsigned also runs when signed by a key this
device does not know; a key in the trust list is always checked in full, and a retired key's models
never run.

A learned head made on this device (`learn`, teaching) carries no signature of its own; with
`require_signature` it runs when the device recorded writing it on a signed backbone
(headrecord.py: the record, and why it needs no key), and the backbone's signature is checked here
like any other, against the flatbuffer in the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from ..bundle import BundleParts, ModelFile, read_parts
from ..errors import ModelError
from ..trustconfig import TrustConfig
from .headrecord import HeadRecords
from .keys import key_id, load_public
from .manifest import MANIFEST_VERSION, Envelope, Manifest, Target, member_digests, version_at_least


class Refusal(StrEnum):
    """Why a model may not run; the value is the word a job status carries as its `reason`."""

    UNREADABLE = "unreadable"  # not a model, missing, damaged archive
    CORRUPT = "corrupt"  # the flatbuffer does not match its own metadata (bits flipped in transit)
    UNSIGNED = "unsigned"  # no signature, and require_signature = true
    BAD_SIGNATURE_FILE = "bad_signature_file"  # signature.json unreadable
    UNKNOWN_KEY = "unknown_key"  # signed by a key not in the trust list
    RETIRED_KEY = "retired_key"  # signed by a key in [trust] retired
    BAD_SIGNATURE = "bad_signature"  # the manifest was edited, or the signature is not this key's
    DIGEST_MISMATCH = "digest_mismatch"  # the flatbuffer is not the one signed (a copied signature)
    METADATA_CHANGED = "metadata_changed"  # edge_resnet.json, labels or head differ from what was signed
    EXPIRED = "expired"
    WRONG_TARGET = "wrong_target"  # signed for cpu, asked to run on the Edge TPU (or the other way)
    LOWER_VERSION = "lower_version"  # older than the version the device runs
    NEEDS_NEWER = "needs_newer_edge_resnet"  # the manifest asks for a newer edge-resnet
    HEAD_NOT_RECORDED = "head_not_recorded"  # an unsigned learned head this device did not record on a signed backbone
    HEAD_CHANGED = "head_changed"  # a learned head, its labels or metadata changed after this device wrote it


class ModelRefused(ModelError):
    """A model that may not run (exit code 4). `reason` for a job status; the message is one line."""

    def __init__(self, path: object, reason: Refusal, detail: str, fix: str | None) -> None:
        super().__init__(f"{path}: refused ({reason.value}): {detail}" + (f"; {fix}" if fix else ""))
        self.reason = reason


@dataclass(frozen=True)
class TrustPolicy:
    """The keys whose signatures count (key id -> public key), the retired ids, and whether a model
    without a trusted signature may run at all. The empty policy lets everything unsigned run."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    retired: frozenset[str] = frozenset()
    require_signature: bool = False
    heads: HeadRecords | None = None  # the learned heads this device wrote; None: an unsigned head is unsigned

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey], retired: Iterable[str] = (), require_signature: bool = False,
           heads: HeadRecords | None = None) -> TrustPolicy:  # fmt: skip
        return cls({key_id(k): k for k in keys}, frozenset(retired), require_signature, heads)


def load_policy(cfg: TrustConfig, state_dir: str | os.PathLike[str] | None = None) -> TrustPolicy:
    """Read the `[trust]` keys (a missing or foreign .pub is one ConfigError naming it). `state_dir`:
    the device's, where it records the heads it learned (None: on a workstation, none is vouched for)."""
    heads = HeadRecords(state_dir) if state_dir is not None else None
    return TrustPolicy.of((load_public(p) for p in cfg.keys), cfg.retired, cfg.require_signature, heads)


def check_model(
    model: str | os.PathLike[str] | ModelFile | BundleParts,
    policy: TrustPolicy,
    *,
    min_version: int | None = None,
    target: Target | None = None,
    now: datetime | None = None,
) -> Manifest | None:
    """Decide whether `model` may run under `policy`: the verified manifest, None (unsigned or by a
    key this device does not know, and the policy allows it), or ModelRefused.

    `model`: a path (read here in one streaming pass: the flatbuffer is hashed once and never held),
    or a ModelFile from `read_model` (its digest is already checked: nothing is hashed again).
    `min_version`: the running model's version; an older one is refused (the same one passes, so the
    running model re-checks after a restart). `target`: where it will run; None skips the check.
    `now`: the clock (default: the system's, UTC).
    """
    parts = _parts(model)
    where = parts.path
    meta = parts.meta
    if meta is not None and (parts.model_sha256 != meta.model_sha256 or parts.model_size != meta.model_size):
        raise ModelRefused(where, Refusal.CORRUPT, "its SHA-256 does not match the one recorded at conversion",
                           "copy it again")
    if parts.signature is None:
        if not policy.require_signature:
            return None
        if meta is not None and meta.head is not None and policy.heads is not None:
            return _check_learned(parts, policy.heads, policy, min_version, target, now or datetime.now(UTC))
        raise ModelRefused(where, Refusal.UNSIGNED, "it carries no signature, and one is required",
                           "sign it on the workstation: edge-resnet sign MODEL --key ID.key --version N")
    m = _verified(where, parts.signature, policy)
    if m is None:
        return None  # an unsigned copy of it would run too
    _check_contents(where, parts.model_sha256, parts.model_size, member_digests(parts.members), m)
    _check_terms(where, m, min_version, target, now or datetime.now(UTC))
    return m


def _verified(where: object, signature: bytes, policy: TrustPolicy) -> Manifest | None:
    """The manifest of `signature` once it verifies with a trusted key; None when its key is unknown
    and the policy lets unsigned models run; else ModelRefused."""
    try:
        env = Envelope.from_bytes(signature)
    except ValueError as e:
        raise ModelRefused(where, Refusal.BAD_SIGNATURE_FILE, f"its signature.json is unreadable ({e})",
                           "sign it again") from None
    if env.key_id in policy.retired:
        raise ModelRefused(where, Refusal.RETIRED_KEY, f"signed by key {env.key_id}, which is retired",
                           "sign it with a current key")
    key = policy.keys.get(env.key_id)
    if key is None:
        if not policy.require_signature:
            return None
        raise ModelRefused(where, Refusal.UNKNOWN_KEY, f"signed by key {env.key_id}, which is not trusted here",
                           f"add {env.key_id}.pub to [trust] keys, or sign it with a trusted key")
    try:
        key.verify(env.signature, env.manifest)
    except InvalidSignature:
        raise ModelRefused(where, Refusal.BAD_SIGNATURE,
                           f"its manifest does not verify with key {env.key_id} (edited, or not signed by it)",
                           "sign it again; never edit signature.json") from None
    try:
        m = Manifest.from_bytes(env.manifest)
    except ValueError as e:  # signed, so a bug of the signer or a newer format
        raise ModelRefused(where, Refusal.NEEDS_NEWER, f"its signed manifest is not readable here ({e})",
                           "upgrade edge-resnet") from None
    if m.manifest_version > MANIFEST_VERSION:
        raise ModelRefused(where, Refusal.NEEDS_NEWER, f"its manifest is v{m.manifest_version}, newer than this reads",
                           "upgrade edge-resnet on the device")
    if m.key_id != env.key_id:  # the signer's own slip: the key named outside is the one that verified
        raise ModelRefused(where, Refusal.BAD_SIGNATURE, f"its manifest names key {m.key_id}, signed by {env.key_id}",
                           "sign it again")
    return m


def _check_learned(parts: BundleParts, heads: HeadRecords, policy: TrustPolicy, min_version: int | None,
                   target: Target | None, now: datetime) -> Manifest:  # fmt: skip
    """An unsigned learned head under require_signature: it runs when this device recorded writing
    exactly this file on a backbone whose signature verifies now, against this file's flatbuffer.
    Returns the backbone's manifest (its version is the running model's)."""
    where = parts.path
    rec = heads.find(parts.members)
    if rec is None:
        before = heads.written_at(where)
        if before is not None:
            raise ModelRefused(where, Refusal.HEAD_CHANGED,
                               f"its learned head, labels or metadata changed after this device wrote it "
                               f"({before.written_at})",
                               "run edge-resnet learn again, or copy back the file it wrote")
        head = parts.meta.head if parts.meta is not None and parts.meta.head is not None else {}
        backbone = str(head.get("backbone_sha256", ""))[:12]
        raise ModelRefused(where, Refusal.HEAD_NOT_RECORDED,
                           f"it carries a learned head (backbone {backbone}) and no signature, and this device has "
                           f"no record of learning it on a signed backbone (in {heads.dir})",
                           "learn it on this device from a signed bundle, as the service's user "
                           "(edge-resnet learn EXAMPLES --model SIGNED.tflite --out FILE), or sign it on the "
                           "workstation: edge-resnet sign MODEL --key ID.key --version N")
    inner = f"{where}: its backbone"  # every refusal below is about the signed backbone
    if rec.model_sha256 != parts.model_sha256:
        raise ModelRefused(inner, Refusal.DIGEST_MISMATCH, "its flatbuffer is not the one this device learned on",
                           "run edge-resnet learn again")
    m = _verified(inner, rec.backbone_signature, policy)
    if m is None:  # require_signature: an unknown key is refused above
        raise ModelRefused(inner, Refusal.UNKNOWN_KEY, "its key is not trusted here", "sign it with a trusted key")
    _check_contents(inner, parts.model_sha256, parts.model_size, rec.backbone_files, m)
    _check_terms(inner, m, min_version, target, now)
    return m


def _parts(model: str | os.PathLike[str] | ModelFile | BundleParts) -> BundleParts:
    if isinstance(model, BundleParts):
        return model
    if isinstance(model, ModelFile):
        # read_model checked the flatbuffer against the metadata's digest: reuse it, hash nothing again
        meta = model.meta
        if meta is None:  # a foreign model: it carries no signature, so its digest is never compared
            return BundleParts(model.path, "", len(model.flatbuffer), None, {}, None)
        return BundleParts(model.path, meta.model_sha256, len(model.flatbuffer), meta, model.members, model.signature)
    try:
        return read_parts(model)
    except ModelError as e:
        raise ModelRefused(model, Refusal.UNREADABLE, str(e), None) from None  # its own message names the fix


def _check_contents(where: object, model_sha256: str, model_size: int, have: Mapping[str, str], m: Manifest
                    ) -> None:  # fmt: skip
    """The flatbuffer and every archive member (`have`: name -> SHA-256) are the ones signed, no more
    and no fewer."""
    if model_sha256 != m.model_sha256 or model_size != m.model_size:
        raise ModelRefused(
            where, Refusal.DIGEST_MISMATCH,
            f"its flatbuffer (sha256 {model_sha256[:12]}, {model_size} bytes) is not the one signed "
            f"(sha256 {m.model_sha256[:12]}, {m.model_size} bytes): changed since, or another model's signature",
            "copy the signed bundle again, or sign this one",
        )
    changed = sorted(n for n in set(have) | set(m.files) if have.get(n) != m.files.get(n))
    if changed:
        name = changed[0]
        how = "added" if name not in m.files else "removed" if name not in have else "edited"
        raise ModelRefused(where, Refusal.METADATA_CHANGED, f"{name} was {how} after signing",
                           "copy the signed bundle again, or sign it again")


def _check_terms(where: object, m: Manifest, min_version: int | None, target: Target | None, now: datetime) -> None:
    """The manifest's own terms against this device: expiry, target, version, edge-resnet version."""
    today = now.astimezone(UTC).date()
    if m.expires is not None and today > date.fromisoformat(m.expires):
        raise ModelRefused(where, Refusal.EXPIRED, f"its signature expired on {m.expires} (today is {today} UTC)",
                           "sign it again with a later --expires")
    if target is not None and m.target != target:
        raise ModelRefused(where, Refusal.WRONG_TARGET, f"signed for {m.target}, this device runs {target}",
                           f"install the {target} model")
    if min_version is not None and m.version < min_version:
        raise ModelRefused(where, Refusal.LOWER_VERSION, f"version {m.version} is older than {min_version}, which runs",
                           f"sign it with --version {min_version} or higher if it should replace it")
    if not version_at_least(__version__, m.min_edge_resnet):
        raise ModelRefused(where, Refusal.NEEDS_NEWER,
                           f"it needs edge-resnet {m.min_edge_resnet}, this is {__version__}",
                           "upgrade edge-resnet on the device")


def describe(m: Manifest) -> str:
    """The one line `sign` and `verify` print after the model's path."""
    return (f"signed by {m.key_id}, version {m.version}, target {m.target}, "
            + (f"expires {m.expires}" if m.expires else "no expiry"))
