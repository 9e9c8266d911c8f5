"""The examples a user teaches from the live page, one region at a time (issue 21).

A click on a class button stores the region's current crop (a JPEG) and its embedding; the daemon
retrains from the stored embeddings alone (no interpreter) and swaps the head in.

Layout: `root/<region>/<class>/<id>.jpg` and, beside it, `<id>.npz` holding the embedding
(float32, D values), the night variant's embedding when there is one, and the JPEG's size and
CRC-32. `<id>` is the time in ms and a counter (`1718000000000-0000`): ids sort oldest first, and
never go backwards even when the clock does (a Pi without a real-time clock boots in the past):
a new id is never below the newest one in the store.

Why one small file pair per example rather than one index rewritten atomically:
- a full disk: adding needs room for one example, not for a second copy of the whole index, and
  removing is an unlink, which frees room even on a full disk (an index would have to be rewritten,
  i.e. need free space, to forget an example); SD cards also wear less;
- a power cut or a bad sector loses at most the example being written or the damaged file, never
  the whole store; every file is written to a temporary name, fsynced and renamed, and the
  `.npz` is renamed last: it is the commit record (an example exists iff its `.npz` does), so a
  crash between the two renames leaves only an orphan JPEG, swept at the next start with the
  temporary files (both once older than a minute, so another process's write in flight is left);
- a damaged file is found without decoding every image: the `.npz` records the JPEG's size and
  CRC-32, checked once per file version (`load` caches by inode, size and mtime, so a retrain
  after a click reads only the new files).

Caps: `max_examples` (500) and `max_bytes` (20 MiB: JPEGs and `.npz` files) per region; when an
add would go over either, the region's OLDEST examples are removed (after the new files are safely
written, before they are committed) and `Added.evicted` says which. One JPEG is at most
`MAX_JPEG` (2 MiB). An export holds at most the caps plus a model (`MAX_MODEL`).

Failures: a bad class name, JPEG, embedding or ZIP is an InputError (one line, nothing written);
a full, read-only or failing disk is a StoreError (one line; the temporary files are removed and
the store keeps working once there is room again); a corrupt, truncated or foreign file is skipped
by `load` and counted. One process (the daemon) writes a region; others may read it at any time.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import stat
import threading
import time
import zipfile
import zlib
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..atomicwrite import fsync_dir, open_mode, why_disk, write_temp
from ..bundle import TFLITE_IDENT
from ..config import REGION_NAME
from ..errors import EdgeResnetError, InputError
from .examples import check_class_name

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]

FORMAT = "edge-resnet-examples"
VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.tflite"
EXAMPLES_DIR = "examples"

MAX_EXAMPLES = 500
MAX_BYTES = 20 * 2**20
MAX_JPEG = 2 * 2**20  # one crop; a region crop at full camera resolution is a few hundred KB
MAX_EMBEDDING = 16_384  # values; ResNet-152's pooled embedding has 2,048
MAX_NPZ = 256 * 2**10  # two embeddings of MAX_EMBEDDING float32 values and the zip around them
MAX_MANIFEST = 2**20
MAX_MODEL = 128 * 2**20  # an INT8 ResNet-152 bundle is about 60 MB
STALE_S = 60.0  # a temporary file or orphan JPEG older than this is left over from a crash
JPEG_SOI = b"\xff\xd8\xff"
_ID = re.compile(r"\d{13}-\d{4}")
_SEQ_MAX = 9999
_DRIVE = re.compile(r"[A-Za-z]:")


class StoreError(EdgeResnetError):
    """The disk refused a write (full, read-only, failing): nothing was stored."""


class _Corrupt(Exception):
    """Why one stored file cannot be used (load skips it and says why)."""


@dataclass(frozen=True)
class Evicted:
    id: str
    class_name: str
    why: Literal["count", "bytes"]  # the example cap or the byte cap made room


@dataclass(frozen=True)
class Added:
    id: str
    class_name: str
    evicted: tuple[Evicted, ...] = ()

    @property
    def note(self) -> str:
        """One line for the page ("" when nothing was removed)."""
        if not self.evicted:
            return ""
        cap = "number of examples" if all(e.why == "count" for e in self.evicted) else "disk space"
        if len(self.evicted) == 1:
            one = self.evicted[0].class_name
            return f"the oldest example of {one} was removed to make room (the region's {cap} cap)"
        by = Counter(e.class_name for e in self.evicted)
        what = ", ".join(f"{n} of {c}" for c, n in sorted(by.items()))
        return f"the {len(self.evicted)} oldest examples ({what}) were removed to make room (the region's {cap} cap)"


@dataclass
class Loaded:
    """What retraining needs: `train(embeddings, labels, classes, variants=variants, variant_of=variant_of)`."""

    classes: list[str]  # sorted
    embeddings: Floats  # (n, D), oldest example first
    labels: Ints  # (n,) indices into classes
    variants: Floats  # (m, D) night variants
    variant_of: Ints  # (m,) the example row each variant belongs to
    ids: list[str]  # (n,)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # ("<class>/<id>", why)

    @property
    def embedding_size(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


@dataclass
class Imported:
    ids: list[str]  # the new ids, in the order the ZIP's examples were made
    classes: list[str]
    evicted: tuple[Evicted, ...]
    duplicates: int  # examples the store already had (same class, same JPEG, same embedding)
    model: bytes | None
    manifest: dict[str, Any]


@dataclass(frozen=True)
class _Entry:
    id: str
    cls: str
    jpg: Path
    npz: Path
    size: int  # bytes of both files
    key: tuple[int, ...]  # inodes, sizes and mtimes: a changed file is read again


@dataclass(frozen=True)
class _Record:
    embedding: Floats
    night: Floats | None
    jpeg_size: int
    jpeg_crc32: int


@dataclass
class _Incoming:
    id: str
    cls: str
    jpeg: bytes
    record: _Record


# ---------------------------------------------------------------------------------------- files


def _read_capped(path: Path, cap: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _Corrupt(f"larger than {cap} bytes")
    return data


def _vector(x: npt.ArrayLike, name: str) -> Floats:
    try:
        v = np.asarray(x, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"the {name} is not an array of numbers; pass the engine's embedding output") from None
    if not 0 < v.size <= MAX_EMBEDDING:
        raise InputError(f"the {name} has {v.size} values; an embedding has 1..{MAX_EMBEDDING}")
    if not np.isfinite(v).all():
        raise InputError(f"the {name} holds NaN or infinite values; the model's output is broken, nothing was stored")
    out: Floats = np.ascontiguousarray(v)
    return out


def _npz_bytes(rec: _Record) -> bytes:
    arrays: dict[str, Any] = {
        "embedding": rec.embedding.astype("<f4"),
        "jpeg_size": np.int64(rec.jpeg_size),
        "jpeg_crc32": np.int64(rec.jpeg_crc32),
    }
    if rec.night is not None:
        arrays["night"] = rec.night.astype("<f4")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


_NPY_MAGIC = b"\x93NUMPY"
_NPY_DTYPES: dict[str, np.dtype[Any]] = {"<f4": np.dtype("<f4"), "<i8": np.dtype("<i8")}


def _parse_npy(raw: bytes) -> npt.NDArray[Any]:
    """One .npy member, parsed without trusting it: the header is a bounded literal, only float32
    and int64 vectors or scalars, and the data must be exactly as long as the shape says."""
    if raw[:6] != _NPY_MAGIC or len(raw) < 10:
        raise _Corrupt("not a .npy array")
    major = raw[6]
    if major == 1:
        hlen, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise _Corrupt(f".npy version {major} unknown")
    if hlen > 4096 or start + hlen > len(raw):
        raise _Corrupt("a .npy header is too long or cut short")
    try:
        header = ast.literal_eval(raw[start : start + hlen].decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise _Corrupt("a .npy header is unreadable") from None
    if not isinstance(header, dict):
        raise _Corrupt("a .npy header is unreadable")
    descr, shape = header.get("descr"), header.get("shape")
    if descr not in _NPY_DTYPES or header.get("fortran_order") not in (False, True):
        raise _Corrupt(f"a .npy array has type {descr!r}")
    if not isinstance(shape, tuple) or len(shape) > 1 or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise _Corrupt(f"a .npy array has shape {shape!r}")
    dtype = _NPY_DTYPES[str(descr)]
    count = shape[0] if shape else 1
    body = raw[start + hlen :]
    if count > MAX_EMBEDDING or len(body) != count * dtype.itemsize:
        raise _Corrupt("a .npy array is truncated or too long")
    out: npt.NDArray[Any] = np.frombuffer(body, dtype=dtype).reshape(shape).copy()
    return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """A member's bytes, never more than min(cap, its declared size): reading stops there, so a
    member that expands past what it declares (a zip bomb) costs at most that much memory."""
    limit = min(cap, info.file_size)
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) != info.file_size or len(data) > limit:
        raise _Corrupt(f"{info.filename!r} does not hold the {info.file_size} bytes it declares")
    return data


def _parse_record(data: bytes) -> _Record:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > 8:
                raise _Corrupt("an .npz with too many arrays")
            arrays: dict[str, npt.NDArray[Any]] = {}
            for info in infos:
                if not info.filename.endswith(".npy") or info.file_size > MAX_NPZ:
                    raise _Corrupt(f"an .npz holding {info.filename!r}")
                arrays[info.filename[:-4]] = _parse_npy(_read_member(zf, info, MAX_NPZ))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OSError) as e:
        raise _Corrupt(f"not a readable .npz ({type(e).__name__})") from None
    emb, night = arrays.get("embedding"), arrays.get("night")
    size, crc = arrays.get("jpeg_size"), arrays.get("jpeg_crc32")
    if emb is None or emb.dtype != np.float32 or emb.ndim != 1 or emb.size == 0:
        raise _Corrupt("no float32 embedding")
    if night is not None and (night.dtype != np.float32 or night.shape != emb.shape):
        raise _Corrupt("the night embedding's size differs from the embedding's")
    if size is None or crc is None or size.shape != () or crc.shape != () or size.dtype != np.int64:
        raise _Corrupt("no JPEG size and CRC-32")
    if not (np.isfinite(emb).all() and (night is None or np.isfinite(night).all())):
        raise _Corrupt("an embedding holds NaN or infinite values")
    return _Record(emb.astype(np.float32), None if night is None else night.astype(np.float32), int(size), int(crc))


def _check_jpeg(jpeg: bytes, rec: _Record) -> None:
    if len(jpeg) != rec.jpeg_size:
        raise _Corrupt(f"the image has {len(jpeg)} bytes, {rec.jpeg_size} were stored (truncated?)")
    if not jpeg.startswith(JPEG_SOI) or zlib.crc32(jpeg) != rec.jpeg_crc32:
        raise _Corrupt("the image is damaged (its CRC-32 differs from the stored one)")


def _majority(sizes: list[int]) -> int:
    """The most common embedding size; a tie goes to the size of the newest example."""
    counts = Counter(sizes)
    newest = {s: i for i, s in enumerate(sizes)}
    return max(counts, key=lambda s: (counts[s], newest[s]))


# ---------------------------------------------------------------------------------------- the store


class ExampleStore:
    """The examples of one region under `root/<region>/`; thread-safe within one process."""

    def __init__(self, root: Path, region: str, *, max_examples: int = MAX_EXAMPLES, max_bytes: int = MAX_BYTES):
        if not REGION_NAME.fullmatch(region):
            raise InputError(f"region name {region!r} cannot be a folder; use 1..32 ASCII letters, digits, - and _")
        if max_examples < 1 or max_bytes < 64 * 2**10:
            raise ValueError("an example store needs max_examples >= 1 and max_bytes >= 64 KiB")
        self.root = Path(root)
        self.region = region
        self.dir = self.root / region
        self.max_examples = max_examples
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, str], tuple[tuple[int, ...], _Record]] = {}
        self._last_id = ""
        self._mode = open_mode()
        self._sweep()

    # -- reading

    def _scan(self) -> tuple[list[_Entry], list[tuple[str, str]]]:
        """Committed examples (an `.npz` with its `.jpg`), oldest first, and folders that are not classes."""
        entries: list[_Entry] = []
        odd: list[tuple[str, str]] = []
        try:
            dirs = sorted(os.scandir(self.dir), key=lambda d: d.name)
        except FileNotFoundError:
            return entries, odd
        for d in dirs:
            if d.name.startswith("."):
                continue
            if not d.is_dir(follow_symlinks=False):
                odd.append((d.name, "not a class folder (a file or a symbolic link)"))
                continue
            try:
                if check_class_name(d.name, str(self.dir)) != d.name:
                    raise InputError("spaces around the name")
            except InputError:
                odd.append((d.name, "not a valid class name"))
                continue
            files = {f.name: f for f in os.scandir(d.path) if f.is_file(follow_symlinks=False)}
            for name, f in files.items():
                eid = name[:-4]
                jpg = files.get(eid + ".jpg")
                if not name.endswith(".npz") or not _ID.fullmatch(eid):
                    continue
                if jpg is None:
                    odd.append((f"{d.name}/{eid}", "its image is missing"))
                    continue
                try:
                    sn, sj = f.stat(follow_symlinks=False), jpg.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed by the writer while we looked
                    continue
                key = (sn.st_ino, sn.st_size, sn.st_mtime_ns, sj.st_ino, sj.st_size, sj.st_mtime_ns)
                entries.append(_Entry(eid, d.name, Path(jpg.path), Path(f.path), sn.st_size + sj.st_size, key))
        entries.sort(key=lambda e: (e.id, e.cls))
        return entries, odd

    def _scan_or_fail(self) -> tuple[list[_Entry], list[tuple[str, str]]]:
        try:
            return self._scan()
        except OSError as e:
            why, _ = why_disk(e)
            raise StoreError(f"cannot read the examples of region {self.region} in {self.dir}: {why}") from None

    def _record(self, e: _Entry) -> _Record:
        """The entry's embeddings, its JPEG checked against the stored size and CRC-32 (cached per file version)."""
        hit = self._cache.get((e.cls, e.id))
        if hit is not None and hit[0] == e.key:
            return hit[1]
        try:
            rec = _parse_record(_read_capped(e.npz, MAX_NPZ))
            _check_jpeg(_read_capped(e.jpg, MAX_JPEG), rec)
        except OSError as err:
            raise _Corrupt(f"unreadable ({err.strerror or type(err).__name__})") from None
        self._cache[(e.cls, e.id)] = (e.key, rec)
        return rec

    def _usable(
        self, entries: list[_Entry], embedding_size: int | None
    ) -> tuple[list[tuple[_Entry, _Record]], int | None, list[tuple[str, str]]]:
        good: list[tuple[_Entry, _Record]] = []
        skipped: list[tuple[str, str]] = []
        for e in entries:
            try:
                good.append((e, self._record(e)))
            except _Corrupt as c:
                skipped.append((f"{e.cls}/{e.id}", str(c)))
        live = {(e.cls, e.id) for e in entries}
        for k in [k for k in self._cache if k not in live]:
            del self._cache[k]
        if not good:
            return good, embedding_size, skipped
        size = embedding_size if embedding_size is not None else _majority([r.embedding.size for _, r in good])
        keep = [(e, r) for e, r in good if r.embedding.size == size]
        skipped += [
            (f"{e.cls}/{e.id}", f"its embedding has {r.embedding.size} values, not {size} (another model)")
            for e, r in good
            if r.embedding.size != size
        ]
        return keep, size, skipped

    def load(self, embedding_size: int | None = None) -> Loaded:
        """Every usable example, oldest first. Corrupt or truncated files are skipped and counted, as
        are examples whose embedding size is not `embedding_size` (None: the majority's)."""
        with self._lock:
            entries, odd = self._scan_or_fail()
            good, size, skipped = self._usable(entries, embedding_size)
        classes = sorted({e.cls for e, _ in good})
        index = {c: i for i, c in enumerate(classes)}
        d = size or 0
        emb = np.stack([r.embedding for _, r in good]) if good else np.zeros((0, d), np.float32)
        nights = [(i, r.night) for i, (_, r) in enumerate(good) if r.night is not None]
        return Loaded(
            classes=classes,
            embeddings=emb.astype(np.float32),
            labels=np.array([index[e.cls] for e, _ in good], dtype=np.int64),
            variants=np.stack([n for _, n in nights]).astype(np.float32) if nights else np.zeros((0, d), np.float32),
            variant_of=np.array([i for i, _ in nights], dtype=np.int64),
            ids=[e.id for e, _ in good],
            skipped=odd + skipped,
        )

    def classes(self) -> list[str]:
        """Classes that hold at least one stored example, sorted."""
        return sorted(self.counts())

    def counts(self) -> dict[str, int]:
        """Stored examples per class (as stored: `load` may still skip a damaged one)."""
        with self._lock:
            entries, _ = self._scan_or_fail()
        return dict(sorted(Counter(e.cls for e in entries).items()))

    def bytes_used(self) -> int:
        with self._lock:
            entries, _ = self._scan_or_fail()
        return sum(e.size for e in entries)

    def _find(self, example_id: str, entries: list[_Entry]) -> list[_Entry]:
        if not _ID.fullmatch(example_id):
            raise InputError(f"{example_id!r} is not an example id (like 1718000000000-0000)")
        hit = [e for e in entries if e.id == example_id]
        if not hit:
            raise InputError(f"region {self.region} has no example {example_id}; it may have been removed to make room")
        return hit

    def crop(self, example_id: str) -> bytes:
        """The example's JPEG, for the page."""
        with self._lock:
            entries, _ = self._scan_or_fail()
            e = self._find(example_id, entries)[0]
            try:
                return _read_capped(e.jpg, MAX_JPEG)
            except (OSError, _Corrupt) as err:
                raise StoreError(f"example {example_id} of region {self.region} is unreadable: {err}") from None

    # -- writing

    def _sweep(self) -> None:
        """Remove what a crash left: temporary files and JPEGs without their `.npz` (older than STALE_S)."""
        now = time.time()
        with suppress(OSError):
            for d in os.scandir(self.dir):
                if not d.is_dir(follow_symlinks=False) or d.name.startswith("."):
                    continue
                names = {f.name: f for f in os.scandir(d.path) if f.is_file(follow_symlinks=False)}
                for name, f in names.items():
                    orphan = name.endswith(".jpg") and _ID.fullmatch(name[:-4]) and name[:-4] + ".npz" not in names
                    if (name.startswith(".tmp-") or orphan) and now - f.stat(follow_symlinks=False).st_mtime > STALE_S:
                        with suppress(OSError):
                            os.unlink(f.path)

    def _next_id(self, entries: list[_Entry]) -> str:
        last = max([self._last_id, *(e.id for e in entries)])
        now = time.time_ns() // 1_000_000
        ms, seq = (int(last[:13]), int(last[14:])) if last else (-1, 0)
        if now > ms:
            ms, seq = now, 0
        elif seq < _SEQ_MAX:
            seq += 1
        else:
            ms, seq = ms + 1, 0
        self._last_id = f"{ms:013d}-{seq:04d}"
        return self._last_id

    def _folder(self, path: Path) -> None:
        """`path` as a real folder (created if missing), never a symbolic link to elsewhere."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            with suppress(FileExistsError):
                os.mkdir(path)
            fsync_dir(path.parent, strict=True)
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{path} is not a folder (a file or a symbolic link); move it away to store examples")

    def _unlink(self, e: _Entry) -> None:
        """The `.npz` (the commit record) first: a crash in between leaves an orphan JPEG, swept later."""
        e.npz.unlink(missing_ok=True)
        e.jpg.unlink(missing_ok=True)
        self._cache.pop((e.cls, e.id), None)
        with suppress(OSError):
            e.jpg.parent.rmdir()  # the class's last example: the class goes (fails while others are there)

    def _disk_error(self, e: OSError, detail: str = "") -> StoreError:
        why, until = why_disk(e)
        return StoreError(
            f"cannot store examples of region {self.region} in {self.dir}: {why}; {detail}examples are not being "
            f"stored until {until}"
        )

    def _add(self, cls: str, jpeg: bytes, npz: bytes, entries: list[_Entry]) -> Added:
        """Write, evict, commit (lock held). `entries` is kept up to date for the next call."""
        new_id = self._next_id(entries)
        folder = self.dir / cls
        jpg, rec = folder / f"{new_id}.jpg", folder / f"{new_id}.npz"
        temps: list[Path] = []
        final: list[Path] = []
        evicted: list[Evicted] = []
        need = len(jpeg) + len(npz)
        try:
            self._folder(self.dir)
            self._folder(folder)
            temps.append(write_temp(folder, jpeg, mode=self._mode, suffix=".jpg"))
            temps.append(write_temp(folder, npz, mode=self._mode, suffix=".npz"))
            # the new example is on disk; now make room for it, oldest first
            count, used = len(entries), sum(e.size for e in entries)
            while entries and (count + 1 > self.max_examples or used + need > self.max_bytes):
                old = entries.pop(0)
                why: Literal["count", "bytes"] = "count" if count + 1 > self.max_examples else "bytes"
                self._unlink(old)
                evicted.append(Evicted(old.id, old.cls, why))
                count, used = count - 1, used - old.size
            for tmp, dst in zip(temps, (jpg, rec), strict=True):  # the .npz last: it commits
                os.replace(tmp, dst)
                final.append(dst)
            temps.clear()
            fsync_dir(folder, strict=True)
            sn, sj = os.stat(rec), os.stat(jpg)
        except OSError as e:
            for p in temps + final[::-1]:
                with suppress(OSError):
                    p.unlink()
            with suppress(OSError):
                folder.rmdir()  # a class folder made for this example (fails when it holds others)
            gone = f"{len(evicted)} older examples were removed first; " if evicted else ""
            raise self._disk_error(e, gone) from None
        key = (sn.st_ino, sn.st_size, sn.st_mtime_ns, sj.st_ino, sj.st_size, sj.st_mtime_ns)
        entries.append(_Entry(new_id, cls, jpg, rec, sn.st_size + sj.st_size, key))
        return Added(new_id, cls, tuple(evicted))

    def _check_size(self, cls: str, jpeg: bytes, npz: bytes) -> None:
        if len(jpeg) + len(npz) > self.max_bytes:
            raise InputError(
                f"an example of {cls} takes {len(jpeg) + len(npz)} bytes, over region {self.region}'s cap of "
                f"{self.max_bytes}; store a smaller crop"
            )

    def add(
        self,
        class_name: str,
        jpeg: bytes,
        embedding: npt.ArrayLike,
        night_embedding: npt.ArrayLike | None = None,
    ) -> Added:
        """Store one example atomically (both files or neither); the oldest go when a cap is reached."""
        cls = check_class_name(class_name, f"region {self.region}")
        jpeg = bytes(jpeg)
        if len(jpeg) > MAX_JPEG:
            raise InputError(f"the crop is {len(jpeg)} bytes, over the {MAX_JPEG} one example may take; crop less")
        if not jpeg.startswith(JPEG_SOI):
            raise InputError("the crop is not a JPEG (cv2.imencode('.jpg', crop) makes one); nothing was stored")
        emb = _vector(embedding, "embedding")
        night = None if night_embedding is None else _vector(night_embedding, "night embedding")
        if night is not None and night.size != emb.size:
            raise InputError(f"the night embedding has {night.size} values, the embedding {emb.size}; nothing stored")
        rec = _Record(emb, night, len(jpeg), zlib.crc32(jpeg))
        npz = _npz_bytes(rec)
        self._check_size(cls, jpeg, npz)
        with self._lock:
            entries, _ = self._scan_or_fail()
            added = self._add(cls, jpeg, npz, entries)
            self._cache[(cls, added.id)] = (entries[-1].key, rec)
            return added

    def remove(self, example_id: str) -> str:
        """Remove one example; returns its class."""
        with self._lock:
            entries, _ = self._scan_or_fail()
            hit = self._find(example_id, entries)
            try:
                for e in hit:
                    self._unlink(e)
            except OSError as err:
                why, _ = why_disk(err)
                raise StoreError(f"cannot remove example {example_id} of region {self.region}: {why}") from None
            return hit[0].cls

    # -- export and import

    def export_zip(self, model: bytes | None = None, *, backbone_sha256: str | None = None) -> bytes:
        """The region's usable examples (and `model`, e.g. its learned bundle) as one ZIP in memory.
        `backbone_sha256`: the digest of the model the embeddings came from, checked on import."""
        if model is not None and len(model) > MAX_MODEL:
            raise InputError(f"the model is {len(model)} bytes, over the {MAX_MODEL} an export may carry")
        with self._lock:
            entries, _ = self._scan_or_fail()
            good, size, skipped = self._usable(entries, None)
            files: list[tuple[str, bytes, bytes]] = []
            for e, _ in good:
                try:
                    files.append((f"{EXAMPLES_DIR}/{e.cls}/{e.id}", _read_capped(e.jpg, MAX_JPEG),
                                  _read_capped(e.npz, MAX_NPZ)))
                except (OSError, _Corrupt) as err:
                    skipped.append((f"{e.cls}/{e.id}", str(err)))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "region": self.region,
            "classes": sorted({e.cls for e, _ in good}),
            "examples_per_class": dict(sorted(Counter(e.cls for e, _ in good).items())),
            "embedding_size": size,
            "backbone_sha256": backbone_sha256,
            "model": MODEL_NAME if model is not None else None,
            "skipped": len(skipped),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # JPEGs and float32 barely compress
            zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1), zipfile.ZIP_DEFLATED)
            for stem, jpg, npz in files:
                zf.writestr(stem + ".jpg", jpg)
                zf.writestr(stem + ".npz", npz)
            if model is not None:
                zf.writestr(MODEL_NAME, model)
        return buf.getvalue()

    def _refuse(self, why: str) -> InputError:
        return InputError(f"refusing the examples ZIP for region {self.region}: {why}; nothing was imported")

    def _class(self, name: str) -> str:
        try:
            cls = check_class_name(name, "the ZIP")
        except InputError as e:
            raise self._refuse(str(e)) from None
        if cls != name:
            raise self._refuse(f"class folder {name!r} has spaces around its name")
        return cls

    def _member_kind(self, info: zipfile.ZipInfo) -> tuple[str, str, str]:
        """("manifest"|"model"|"dir"|"jpg"|"npz", class, id) for an allowed entry; InputError otherwise."""
        raw = info.orig_filename
        name = info.filename
        mode = info.external_attr >> 16
        if not raw or "\x00" in raw or "\\" in raw or raw.startswith("/") or _DRIVE.match(raw) or raw != name:
            raise self._refuse(f"entry {raw!r} has an absolute, Windows or odd path")
        parts = name.rstrip("/").split("/") if name.endswith("/") else name.split("/")
        if any(p in ("", ".", "..") for p in parts) or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise self._refuse(f"entry {name!r} has a path that leads out of its folder")
        if stat.S_ISLNK(mode) or (stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)):
            raise self._refuse(f"entry {name!r} is a symbolic link or a device, not a file")
        if info.flag_bits & 0x1:
            raise self._refuse(f"entry {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self._refuse(f"entry {name!r} uses compression method {info.compress_type}")
        if name.endswith("/"):
            if parts[0] != EXAMPLES_DIR or len(parts) > 2:
                raise self._refuse(f"entry {name!r} is not part of an examples export")
            if len(parts) == 2:
                self._class(parts[1])
            return "dir", "", ""
        if name == MANIFEST_NAME:
            return "manifest", "", ""
        if name == MODEL_NAME:
            return "model", "", ""
        if len(parts) != 3 or parts[0] != EXAMPLES_DIR:
            raise self._refuse(f"entry {name!r} is not part of an examples export")
        cls = self._class(parts[1])
        stem, dot, ext = parts[2].rpartition(".")
        if not dot or ext not in ("jpg", "npz") or not _ID.fullmatch(stem):
            raise self._refuse(f"entry {name!r} is not an example (<class>/<id>.jpg and .npz)")
        return ext, cls, stem

    def import_zip(self, data: bytes, backbone_sha256: str | None) -> Imported:
        """Add the examples of a ZIP from `export_zip` (after checking all of it) and return its model.

        Refused with nothing written: not a ZIP, a path that escapes, a symbolic link, a bad class
        name, more entries or bytes than this store's caps (declared or read), a missing manifest
        or one from another backbone, a damaged example, or embeddings of another size than the
        store's. Examples the store already holds are not added twice."""
        limit = self.max_bytes + MAX_MODEL + MAX_MANIFEST + 2 * self.max_examples * 512
        if len(data) > limit:
            raise self._refuse(f"it is {len(data)} bytes, over the {limit} this store takes")
        self._check_directory(data)
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, NotImplementedError):
            raise self._refuse("it is not a ZIP file (export one from the page)") from None
        with zf:
            incoming, manifest, model = self._read_zip(zf, backbone_sha256)
        with self._lock:
            entries, _ = self._scan_or_fail()
            good, size, _ = self._usable(entries, None)
            want = manifest.get("embedding_size")
            if good and incoming and size != want:
                raise self._refuse(f"its embeddings have {want} values, this region's examples {size} (another model)")
            have = {(e.cls, r.jpeg_size, r.jpeg_crc32, r.embedding.tobytes()) for e, r in good}
            todo = [
                (x, _npz_bytes(x.record))
                for x in incoming
                if (x.cls, x.record.jpeg_size, x.record.jpeg_crc32, x.record.embedding.tobytes()) not in have
            ]
            for x, npz in todo:
                self._check_size(x.cls, x.jpeg, npz)
            added: list[Added] = []
            try:
                for x, npz in todo:
                    added.append(self._add(x.cls, x.jpeg, npz, entries))
                    self._cache[(x.cls, added[-1].id)] = (entries[-1].key, x.record)
            except StoreError as err:
                mine = {a.id for a in added}
                for e in [e for e in entries if e.id in mine]:
                    with suppress(OSError):
                        self._unlink(e)
                raise StoreError(f"{err}; the {len(added)} examples imported so far were taken out again") from None
        gone = {ev.id for a in added for ev in a.evicted}
        return Imported(
            ids=[a.id for a in added if a.id not in gone],
            classes=sorted({x.cls for x in incoming}),
            evicted=tuple(ev for a in added for ev in a.evicted if ev.id not in {b.id for b in added}),
            duplicates=len(incoming) - len(todo),
            model=model,
            manifest=manifest,
        )

    def _max_entries(self) -> int:
        return 3 * self.max_examples + 3  # the example files, manifest and model, and folder entries

    def _check_directory(self, data: bytes) -> None:
        """Bound the central directory before zipfile parses it (it builds an object per entry, and
        a ZIP of a million empty entries would take the Pi's memory). ZIP64 is refused: an export
        never needs it (under 65,535 entries and 4 GiB)."""
        end = len(data) - 22
        if end >= 0 and data[end : end + 4] == b"PK\x05\x06" and data[-2:] == b"\0\0":
            at = end  # no comment: where zipfile looks first
        else:
            at = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
        if at < 0 or at + 22 > len(data):
            raise self._refuse("it is not a ZIP file (export one from the page)")
        entries = int.from_bytes(data[at + 10 : at + 12], "little")
        size = int.from_bytes(data[at + 12 : at + 16], "little")
        offset = int.from_bytes(data[at + 16 : at + 20], "little")
        if offset + size > at and size != 0xFFFFFFFF:  # the directory must lie before its end record
            raise self._refuse("it is not a ZIP file (export one from the page)")
        if data[max(0, at - 20) : max(0, at - 16)] == b"PK\x06\x07" or entries == 0xFFFF or size == 0xFFFFFFFF:
            raise self._refuse("it is a ZIP64 archive, which an export of examples never is")
        if entries > self._max_entries() or size > self._max_entries() * 512:
            raise self._refuse(
                f"its directory lists {entries} entries ({size} bytes), over the {self._max_entries()} this store's "
                "caps allow"
            )

    def _read_zip(
        self, zf: zipfile.ZipFile, backbone_sha256: str | None
    ) -> tuple[list[_Incoming], dict[str, Any], bytes | None]:
        infos = zf.infolist()
        most = 2 * self.max_examples + 2
        if len(infos) > self._max_entries():
            raise self._refuse(f"it has {len(infos)} entries, over the {self._max_entries()} this store's caps allow")
        kinds: dict[str, tuple[str, str, str]] = {}
        for info in infos:
            if info.filename in kinds:
                raise self._refuse(f"entry {info.filename!r} appears twice")
            kinds[info.filename] = self._member_kind(info)
        files = [i for i in infos if kinds[i.filename][0] != "dir"]
        if len(files) > most:
            raise self._refuse(f"it has {len(files)} files, over the {most} this store's caps allow")
        pairs: dict[str, dict[str, zipfile.ZipInfo]] = {}
        classes: dict[str, str] = {}
        declared = 0
        caps = {"manifest": MAX_MANIFEST, "model": MAX_MODEL, "jpg": MAX_JPEG, "npz": MAX_NPZ}
        for info in files:
            kind, cls, eid = kinds[info.filename]
            if info.file_size > caps[kind]:
                raise self._refuse(f"entry {info.filename!r} declares {info.file_size} bytes (cap {caps[kind]})")
            if kind in ("jpg", "npz"):
                declared += info.file_size
                if classes.setdefault(eid, cls) != cls:
                    raise self._refuse(f"example {eid} is in two classes")
                pairs.setdefault(eid, {})[kind] = info
        if declared > self.max_bytes:
            raise self._refuse(f"its examples declare {declared} bytes, over this store's cap of {self.max_bytes}")
        if len(pairs) > self.max_examples:
            raise self._refuse(f"it has {len(pairs)} examples, over this store's cap of {self.max_examples}")
        lonely = [eid for eid, p in pairs.items() if len(p) != 2]
        if lonely:
            raise self._refuse(f"example {lonely[0]} lacks its image or its embedding")
        if MANIFEST_NAME not in kinds:
            raise self._refuse(f"it has no {MANIFEST_NAME} (not an export of edge-resnet examples)")
        try:
            manifest = self._manifest(_read_member(zf, zf.getinfo(MANIFEST_NAME), MAX_MANIFEST), backbone_sha256)
            size = int(manifest["embedding_size"]) if manifest.get("embedding_size") is not None else None
            incoming: list[_Incoming] = []
            read = 0
            for eid in sorted(pairs):
                p = pairs[eid]
                jpeg = _read_member(zf, p["jpg"], MAX_JPEG)
                npz = _read_member(zf, p["npz"], MAX_NPZ)
                read += len(jpeg) + len(npz)
                if read > self.max_bytes:  # declared sizes are checked; this is the belt to their braces
                    raise self._refuse(f"its examples hold over {self.max_bytes} bytes")
                rec = _parse_record(npz)
                _check_jpeg(jpeg, rec)
                if rec.embedding.size != size:
                    raise _Corrupt(f"example {eid} has {rec.embedding.size} values, the manifest says {size}")
                incoming.append(_Incoming(eid, classes[eid], jpeg, rec))
            model = _read_member(zf, zf.getinfo(MODEL_NAME), MAX_MODEL) if MODEL_NAME in kinds else None
        except _Corrupt as c:
            raise self._refuse(str(c)) from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as e:
            raise self._refuse(f"an entry is damaged ({type(e).__name__}: {str(e)[:80]})".replace("\n", " ")) from None
        if model is not None and model[4:8] != TFLITE_IDENT:
            raise self._refuse(f"its {MODEL_NAME} is not a TFLite model")
        return incoming, manifest, model

    def _manifest(self, raw: bytes, backbone_sha256: str | None) -> dict[str, Any]:
        try:
            m = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise self._refuse(f"its {MANIFEST_NAME} is not JSON") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise self._refuse(f"its {MANIFEST_NAME} is not an edge-resnet examples manifest")
        version = m.get("version")
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise self._refuse(f"its format version {version!r} is newer than this edge-resnet reads; upgrade")
        size = m.get("embedding_size")
        if size is not None and (not isinstance(size, int) or not 0 < size <= MAX_EMBEDDING):
            raise self._refuse(f"its manifest's embedding size {size!r} is not a size")
        theirs = m.get("backbone_sha256")
        if theirs is not None and not isinstance(theirs, str):
            raise self._refuse("its manifest's backbone digest is not a string")
        if theirs and backbone_sha256 and theirs.lower() != backbone_sha256.lower():
            raise self._refuse(
                f"its examples come from another model (backbone {theirs[:12]}, this one {backbone_sha256[:12]}); "
                "import them where that model runs"
            )
        return m
