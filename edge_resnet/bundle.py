"""The model bundle: one `.tflite` that carries its labels, preprocessing and a digest.

Format (version 1): the TFLite flatbuffer, followed by a ZIP archive holding `edge_resnet.json`
(metadata) and `labels.txt`. This is the same trick TFLite Support uses for associated files: the
flatbuffer is untouched and interpreters ignore what follows it, so the file still loads anywhere,
while `unzip -l model.tflite` shows the metadata. The JSON records the flatbuffer's length and
SHA-256, so a copy with flipped bits is refused before it can classify silently wrong. Version 2
adds a head trained on the device (`head.npz`, written by `learn`): an older reader refuses it
rather than read the user's labels against the backbone's own outputs. A signed bundle also carries
`signature.json` (edge_resnet/fleet/: a manifest of the flatbuffer's and every other member's digest,
signed with Ed25519); it is kept apart from the associated files, so a bundle derived from this one
(`learn`) never carries a signature that no longer fits it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .atomicwrite import write_atomic
from .errors import ModelError
from .preprocess import PreprocessSpec

FORMAT = "edge-resnet-bundle"
VERSION = 2  # the newest this reader knows; a bundle is written as v1 unless it carries a head
HEAD_VERSION = 2
META_NAME = "edge_resnet.json"
LABELS_NAME = "labels.txt"
HEAD_NAME = "head.npz"
SIGNATURE_NAME = "signature.json"
TFLITE_IDENT = b"TFL3"
MAX_ARCHIVE_BYTES = 64 << 20  # what the members may unpack to: labels and a head are small, a ZIP bomb is not
EDGETPU_OP = b"edgetpu-custom-op"

OutputKind = Literal["logits", "probabilities"]


@dataclass
class BundleMeta:
    """What the device needs to feed the model exactly as it was calibrated, and to name its classes."""

    preprocess: PreprocessSpec
    labels: list[str] = field(default_factory=list)
    label_offset: int = 0
    output_kind: OutputKind = "logits"
    model_sha256: str = ""
    model_size: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    # the pooled feature output in front of the classifier: {"output": TFLite tensor name, "size": D,
    # "onnx_tensor": where it came from}; None for older bundles and foreign models
    embedding: dict[str, Any] | None = None
    # a head trained on the device (`learn`): kind, classes, backbone digest, head.npz digest, report summary
    head: dict[str, Any] | None = None

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": HEAD_VERSION if self.head is not None else self.version,
            "model_sha256": self.model_sha256,
            "model_size": self.model_size,
            "preprocess": self.preprocess.to_dict(),
            "label_offset": self.label_offset,
            "output_kind": self.output_kind,
            "num_labels": len(self.labels),
            "source": self.source,
        }
        if self.embedding is not None:
            d["embedding"] = self.embedding
        if self.head is not None:
            d["head"] = self.head
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, labels: list[str], where: str) -> BundleMeta:
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise ValueError(f"format is {d.get('format')!r}")
            if int(d["version"]) > VERSION:
                raise ModelError(
                    f"{where}: bundle format v{d['version']} is newer than this edge-resnet reads "
                    f"(v{VERSION}); upgrade edge-resnet"
                )
            return cls(
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                labels=labels,
                label_offset=int(d.get("label_offset", 0)),
                output_kind=d.get("output_kind", "logits"),
                model_sha256=str(d["model_sha256"]),
                model_size=int(d["model_size"]),
                source=dict(d.get("source", {})),
                version=int(d["version"]),
                embedding=dict(d["embedding"]) if d.get("embedding") else None,
                head=dict(d["head"]) if d.get("head") else None,
            )
        except ModelError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{where}: unreadable edge-resnet metadata ({e}); re-convert the model") from None


@dataclass
class ModelFile:
    """A verified model read from disk: the flatbuffer bytes, and the bundle metadata if any."""

    path: Path
    flatbuffer: bytes
    meta: BundleMeta | None
    files: dict[str, bytes] = field(default_factory=dict)  # associated files beyond metadata and labels
    # every archive member as stored (metadata and labels too), but the signature: what a signature covers
    members: dict[str, bytes] = field(default_factory=dict)
    signature: bytes | None = None  # signature.json as stored; None: unsigned

    @property
    def is_edgetpu(self) -> bool:
        return EDGETPU_OP in self.flatbuffer

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.flatbuffer).hexdigest()


def read_model(path: str | os.PathLike[str]) -> ModelFile:
    """Read and verify a model file; every failure is a one-line ModelError naming the fix."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model {p} not found; check --model / [model] path") from None
    except IsADirectoryError:
        raise ModelError(f"model {p} is a directory; point --model at a .tflite file") from None
    except OSError as e:
        raise ModelError(f"model {p} cannot be read ({e.strerror}); check its permissions") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENT:
        # an ONNX file is a protobuf ModelProto: field 1 (ir_version, a small varint), then a string field
        h = data[:3]
        onnx = p.suffix == ".onnx" or (len(h) == 3 and h[0] == 8 and 0 < h[1] < 32 and h[2] in b"\x12\x1a\x22:")
        fix = f"it looks like ONNX: convert it first, edge-resnet convert {p} --calib IMAGES/ --eval IMAGES/ --out out/"
        raise ModelError(f"{p} is not a TFLite model (no TFL3 identifier); {fix if onnx else 'pass a .tflite file'}")
    found = _read_meta(data, p)
    if found is None:
        _check_sidecar_digest(p, data)
        return ModelFile(p, data, None)
    meta, members, signature = found
    flat = data[: meta.model_size]
    digest = hashlib.sha256(flat).hexdigest()
    if len(flat) != meta.model_size or digest != meta.model_sha256:
        raise ModelError(
            f"{p} is corrupt: its SHA-256 does not match the one recorded at conversion; copy it again or re-convert"
        )
    files = {n: b for n, b in members.items() if n not in (META_NAME, LABELS_NAME)}
    return ModelFile(p, flat, meta, files, members, signature)


@dataclass
class BundleParts:
    """A bundle as a verifier sees it, read without holding the flatbuffer: its digest and size
    (hashed once, streaming) and the archive's members. A foreign model's digest is the whole file's."""

    path: Path
    model_sha256: str
    model_size: int
    meta: BundleMeta | None
    members: dict[str, bytes]
    signature: bytes | None


def read_parts(path: str | os.PathLike[str], chunk: int = 1 << 20) -> BundleParts:
    """The digest and members of a model file in one streaming pass (a 100 MB bundle is never in
    memory at once). The digest is computed, not checked: the verifier compares it with what was
    signed, and with the metadata's own record."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[4:8] != TFLITE_IDENT:
                raise ModelError(f"{p} is not a TFLite model (no TFL3 identifier); pass a .tflite file")
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 65557))
            found = _read_meta(f.read(), p, f)
            meta = found[0] if found else None
            limit = meta.model_size if meta is not None else size
            f.seek(0)
            h = hashlib.sha256()
            left = limit
            while left > 0:
                block = f.read(min(chunk, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
    except FileNotFoundError:
        raise ModelError(f"model {p} not found; check the path") from None
    except IsADirectoryError:
        raise ModelError(f"model {p} is a directory; point at a .tflite file") from None
    except OSError as e:
        raise ModelError(f"model {p} cannot be read ({e.strerror}); check its permissions") from None
    if found is None:
        return BundleParts(p, h.hexdigest(), limit - left, None, {}, None)
    return BundleParts(p, h.hexdigest(), limit - left, found[0], found[1], found[2])


def _read_meta(
    tail: bytes, p: Path, source: BinaryIO | None = None
) -> tuple[BundleMeta, dict[str, bytes], bytes | None] | None:
    """The metadata, the members as stored (signature apart) and the signature, from the archive at the
    end of the file (`source`, or `tail` when it is the whole file); None if there is no bundle archive."""
    if b"PK\x05\x06" not in tail[-65557:]:
        return None
    try:
        zf = zipfile.ZipFile(source if source is not None else io.BytesIO(tail))
        listed = zf.namelist()
    except zipfile.BadZipFile:
        return None
    names = set(listed)
    if META_NAME not in names:
        return None
    if len(names) != len(listed):  # two members of one name: which one counts would depend on the reader
        raise ModelError(f"{p}: damaged metadata archive (a member appears twice); copy the model again")
    unpacked = sum(info.file_size for info in zf.infolist())  # zipfile reads no member past its stated size
    if unpacked > MAX_ARCHIVE_BYTES:
        raise ModelError(
            f"{p}: its metadata archive unpacks to {unpacked / 1e6:.0f} MB, over {MAX_ARCHIVE_BYTES >> 20} MiB; "
            "this is no edge-resnet bundle, copy the model again"
        )
    try:
        members = {n: zf.read(n) for n in sorted(names) if not n.endswith("/")}
        text = members[META_NAME].decode("utf-8")
        labels = members[LABELS_NAME].decode("utf-8").splitlines() if LABELS_NAME in members else []
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, zlib.error, EOFError) as e:
        raise ModelError(f"{p}: damaged metadata archive ({e}); copy the model again") from None
    signature = members.pop(SIGNATURE_NAME, None)
    return BundleMeta.from_json(text, labels, str(p)), members, signature


def _check_sidecar_digest(p: Path, data: bytes) -> None:
    """Foreign models may ship `MODEL.tflite.sha256` (sha256sum format); honour it when present."""
    side = p.with_name(p.name + ".sha256")
    if not side.exists():
        return
    want = side.read_text().split()[0].strip().lower() if side.read_text().strip() else ""
    if want and hashlib.sha256(data).hexdigest() != want:
        raise ModelError(f"{p} does not match {side.name}; the copy is corrupt, copy it again")


def write_bundle(
    flatbuffer: bytes, meta: BundleMeta, out: str | os.PathLike[str], files: dict[str, bytes] | None = None
) -> Path:
    """Write flatbuffer + metadata (+ associated `files`, e.g. a learned head) atomically (temp file +
    rename), so a reader never sees half a model.

    The file gets the mode a plain `open()` would give it (0644 under umask 022): mkstemp's 0600
    would leave a model copied with `sudo cp` unreadable to the service user.
    """
    if flatbuffer[4:8] != TFLITE_IDENT:
        raise ModelError("refusing to bundle bytes that are not a TFLite flatbuffer")
    meta.model_sha256 = hashlib.sha256(flatbuffer).hexdigest()
    meta.model_size = len(flatbuffer)
    labels = "\n".join(meta.labels) + ("\n" if meta.labels else "")
    members = {META_NAME: meta.to_json().encode(), LABELS_NAME: labels.encode()}
    return write_members(flatbuffer, {**members, **dict(sorted((files or {}).items()))}, out)


def write_members(
    flatbuffer: bytes, members: dict[str, bytes], out: str | os.PathLike[str], mode: int | None = None
) -> Path:
    """Write a flatbuffer and its archive `members` (as given, in order: `sign` adds its signature to
    the bytes it signed) atomically. `mode`: the file's permission bits (default: what `open()` gives)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shifted = _shift_zip(buf.getvalue(), len(flatbuffer))
    return write_atomic(out_path, (flatbuffer, shifted), mode=mode, suffix=".tflite")


def _shift_zip(zip_bytes: bytes, offset: int) -> bytes:
    """Rewrite a ZIP so its offsets count from the start of the combined file (plain unzip tools need this)."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    out.write(b"\0" * offset)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
    return out.getvalue()[offset:]
