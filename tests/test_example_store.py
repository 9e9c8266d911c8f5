"""Issue 21: the examples taught from the live page. The store writes atomically, stays under its
caps by removing the oldest examples (and says so), refuses names and ZIPs that could escape its
folder, skips damaged files, and survives a full or read-only disk.

No model and no interpreter: random embeddings and small JPEGs made with cv2.imencode.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge_resnet.errors import InputError
from edge_resnet.learn.fit import train
from edge_resnet.learn.store import MAX_JPEG, MAX_NPZ, Evicted, ExampleStore, StoreError

pytestmark = pytest.mark.runtime

D = 64
SHA_A = "a" * 64
SHA_B = "b" * 64
MODEL = b"\x1c\0\0\0TFL3" + bytes(range(256)) * 4  # enough of a flatbuffer for the identifier check


def jpeg(seed: int, side: int = 16, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf.tobytes())


def emb(seed: int, d: int = D) -> npt.NDArray[np.float32]:
    return np.random.default_rng(1000 + seed).normal(size=d).astype(np.float32)


def tree(root: Path) -> dict[str, int]:
    """Every file under root and its size: what 'nothing written' compares."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def fill_store(s: ExampleStore, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> list[str]:
    ids = []
    for i in range(per_class):
        for k, c in enumerate(classes):
            seed = 10 * i + k
            ids.append(s.add(c, jpeg(seed), emb(seed), emb(seed + 500) if i % 2 == 0 else None).id)
    return ids


# ---------------------------------------------------------------------------------------- round trip


def test_add_then_load_gives_the_same_embeddings_and_night_variants_in_order(tmp_path: Path) -> None:
    s = ExampleStore(tmp_path, "door")
    added = [
        s.add("open", jpeg(1), emb(1), emb(101)),
        s.add("closed", jpeg(2), emb(2)),
        s.add("open", jpeg(3), emb(3)),
        s.add("closed", jpeg(4), emb(4), emb(104)),
    ]
    assert all(not a.evicted and a.note == "" for a in added)
    ids = [a.id for a in added]
    assert ids == sorted(ids) and len(set(ids)) == 4
    loaded = ExampleStore(tmp_path, "door").load()  # a fresh store object: everything comes from disk
    assert loaded.classes == ["closed", "open"]
    assert loaded.ids == ids
    assert np.array_equal(loaded.embeddings, np.stack([emb(i) for i in (1, 2, 3, 4)]))
    assert loaded.embeddings.dtype == np.float32
    assert loaded.labels.tolist() == [1, 0, 1, 0]
    assert loaded.variant_of.tolist() == [0, 3]
    assert np.array_equal(loaded.variants, np.stack([emb(101), emb(104)]))
    assert loaded.n_skipped == 0 and loaded.embedding_size == D
    assert s.crop(ids[2]) == jpeg(3)
    assert s.counts() == {"closed": 2, "open": 2} and s.classes() == ["closed", "open"]
    assert s.bytes_used() == sum(tree(tmp_path).values())
    assert sorted(tree(tmp_path)) == sorted(f"door/{c}/{i}.{x}" for c, i in zip(
        ["open", "closed", "open", "closed"], ids, strict=True) for x in ("jpg", "npz"))
    # what the daemon does next: retrain from the stored embeddings alone
    t = train(loaded.embeddings, loaded.labels, loaded.classes, variants=loaded.variants, variant_of=loaded.variant_of)
    assert t.head.classes == ("closed", "open")


def test_remove_and_the_last_example_of_a_class_takes_the_class_with_it(tmp_path: Path) -> None:
    s = ExampleStore(tmp_path, "door")
    a = s.add("open", jpeg(1), emb(1))
    b = s.add("closed", jpeg(2), emb(2))
    assert s.remove(a.id) == "open"
    assert s.classes() == ["closed"] and not (tmp_path / "door" / "open").exists()
    assert s.load().ids == [b.id]
    with pytest.raises(InputError, match="no example"):
        s.remove(a.id)
    for bad in ("../../etc/passwd", "x", ""):
        with pytest.raises(InputError, match="not an example id"):
            s.crop(bad)


def test_ids_keep_their_order_when_the_clock_goes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ExampleStore(tmp_path, "r")
    first = s.add("a", jpeg(1), emb(1)).id
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000_000_000)  # 2001: a Pi booting without its clock
    later = [ExampleStore(tmp_path, "r").add("a", jpeg(i), emb(i)).id for i in range(2, 5)]
    assert [first, *later] == sorted([first, *later]) and len({first, *later}) == 4
    assert s.load().ids == [first, *later]


# ---------------------------------------------------------------------------------------- caps


def test_the_count_cap_removes_the_oldest_example_and_says_so(tmp_path: Path) -> None:
    s = ExampleStore(tmp_path, "r", max_examples=3)
    ids = [s.add(c, jpeg(i), emb(i)).id for i, c in enumerate(["cat", "dog", "dog"])]
    a = s.add("dog", jpeg(9), emb(9))
    assert a.evicted == (Evicted(ids[0], "cat", "count"),)
    assert a.note == "the oldest example of cat was removed to make room (the region's number of examples cap)"
    loaded = s.load()
    assert loaded.ids == [*ids[1:], a.id] and loaded.classes == ["dog"]
    assert not (tmp_path / "r" / "cat").exists()


def test_the_byte_cap_removes_the_oldest_examples_until_the_new_one_fits(tmp_path: Path) -> None:
    cap = 64 * 2**10
    s = ExampleStore(tmp_path, "r", max_bytes=cap)
    big = [jpeg(i, side=96, quality=100) for i in range(12)]  # random pixels: about 20 KB each
    evicted: list[Evicted] = []
    for i, j in enumerate(big):
        a = s.add("cat" if i < 3 else "dog", j, emb(i))
        evicted += a.evicted
        assert s.bytes_used() <= cap
        assert all(e.why == "bytes" for e in a.evicted)
        if a.evicted:
            assert "removed to make room (the region's disk space cap)" in a.note
    assert evicted and evicted[0].class_name == "cat"
    assert [e.id for e in evicted] == sorted(e.id for e in evicted)  # oldest first
    left = s.load()
    assert left.ids == sorted(left.ids) and s.bytes_used() == sum(tree(tmp_path).values())
    assert left.ids[-1] == a.id and len(left.ids) + len(evicted) == 12
    assert not set(left.ids) & {e.id for e in evicted}


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "a\nb", "a\\b", "", "  ", "unknown", "x" * 65])
def test_class_names_that_could_escape_or_break_labels_are_refused_with_nothing_written(
    tmp_path: Path, name: str
) -> None:
    s = ExampleStore(tmp_path / "store", "r")
    with pytest.raises(InputError) as e:
        s.add(name, jpeg(1), emb(1))
    assert "\n" not in str(e.value)
    assert tree(tmp_path) == {}


def test_an_oversize_or_foreign_crop_and_a_broken_embedding_are_refused(tmp_path: Path) -> None:
    s = ExampleStore(tmp_path / "store", "r")
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: s.add("a", b"\xff\xd8\xff" + bytes(MAX_JPEG), emb(1)), "over the"),
        (lambda: s.add("a", b"\x89PNG\r\n\x1a\n", emb(1)), "not a JPEG"),
        (lambda: s.add("a", jpeg(1), np.full(D, np.nan, np.float32)), "NaN"),
        (lambda: s.add("a", jpeg(1), np.zeros(0, np.float32)), "0 values"),
        (lambda: s.add("a", jpeg(1), emb(1), emb(2, d=D + 1)), "night embedding"),
    ]
    for call, match in cases:
        with pytest.raises(InputError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    assert tree(tmp_path) == {}
    with pytest.raises(InputError):
        ExampleStore(tmp_path, "../up")


# ---------------------------------------------------------------------------------------- damage


def test_corrupt_truncated_and_foreign_files_are_skipped_and_counted(tmp_path: Path) -> None:
    s = ExampleStore(tmp_path, "r")
    ids = fill_store(s, per_class=4)  # 8 examples
    assert s.load().n_skipped == 0  # cached now: damage done after this must still be seen
    folder = {i: tmp_path / "r" / ("cat" if n % 2 == 0 else "dog") for n, i in enumerate(ids)}
    (folder[ids[0]] / f"{ids[0]}.npz").write_bytes(b"PK\x03\x04 not really")  # a corrupt npz
    npz = folder[ids[1]] / f"{ids[1]}.npz"
    npz.write_bytes(npz.read_bytes()[:-40])  # a truncated npz
    jpg = folder[ids[2]] / f"{ids[2]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # a truncated JPEG
    jpg = folder[ids[3]] / f"{ids[3]}.jpg"
    data = bytearray(jpg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    jpg.write_bytes(bytes(data))  # a flipped bit, same size
    (folder[ids[4]] / f"{ids[4]}.jpg").unlink()  # the image is gone
    other = s.add("cat", jpeg(77), emb(77, d=D * 2))  # another backbone's embedding
    loaded = s.load()
    assert loaded.ids == ids[5:]
    assert loaded.n_skipped == 6, loaded.skipped
    reasons = dict(loaded.skipped)
    assert "another model" in reasons[f"cat/{other.id}"]
    assert "image is missing" in reasons[f"cat/{ids[4]}"]
    assert np.array_equal(loaded.embeddings, np.stack([emb(10 * (n // 2) + n % 2) for n in range(5, 8)]))
    assert s.load(embedding_size=D * 2).ids == [other.id]


def test_leftovers_of_a_crash_are_swept_and_never_loaded(tmp_path: Path) -> None:
    s = ExampleStore(tmp_path, "r")
    keep = s.add("cat", jpeg(1), emb(1)).id
    folder = tmp_path / "r" / "cat"
    tmp = folder / ".tmp-abc.npz"
    orphan = folder / "0000000000001-0000.jpg"  # renamed before the power cut, its .npz not
    tmp.write_bytes(b"half")
    orphan.write_bytes(jpeg(2))
    assert s.load().ids == [keep]
    old = time.time() - 3600
    for p in (tmp, orphan):
        os.utime(p, (old, old))
    ExampleStore(tmp_path, "r")
    assert not tmp.exists() and not orphan.exists()
    assert ExampleStore(tmp_path, "r").load().ids == [keep]


def test_an_io_error_while_writing_is_a_store_error_with_nothing_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ExampleStore(tmp_path, "r")
    s.add("cat", jpeg(1), emb(1))
    before = tree(tmp_path)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="I/O errors") as e:
        s.add("cat", jpeg(2), emb(2))
    assert "\n" not in str(e.value) and "not being stored" in str(e.value)
    assert tree(tmp_path) == before
    monkeypatch.undo()
    assert len(s.add("cat", jpeg(2), emb(2)).id) == 18 and len(s.load().ids) == 2


# ---------------------------------------------------------------------------------------- export / import


def test_export_then_import_into_another_store_gives_the_same_examples(tmp_path: Path) -> None:
    a = ExampleStore(tmp_path / "a", "door")
    fill_store(a, ("open", "closed", "Haustür halb offen"), per_class=3)
    data = a.export_zip(MODEL, backbone_sha256=SHA_A)
    assert len(data) < a.bytes_used() + len(MODEL) + 8192
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
    assert "manifest.json" in names and "model.tflite" in names and len(names) == 2 + 2 * 9
    b = ExampleStore(tmp_path / "b", "porch")
    got = b.import_zip(data, SHA_A)
    assert got.model == MODEL and got.classes == ["Haustür halb offen", "closed", "open"] and len(got.ids) == 9
    assert got.manifest["region"] == "door" and got.manifest["embedding_size"] == D
    assert got.manifest["backbone_sha256"] == SHA_A and got.duplicates == 0
    la, lb = a.load(), b.load()
    assert lb.classes == la.classes
    assert np.array_equal(la.embeddings, lb.embeddings) and np.array_equal(la.labels, lb.labels)
    assert np.array_equal(la.variants, lb.variants) and np.array_equal(la.variant_of, lb.variant_of)
    assert [a.crop(i) for i in la.ids] == [b.crop(i) for i in lb.ids]
    assert all(p.is_relative_to(tmp_path / "b" / "porch") for p in (tmp_path / "b").rglob("*") if p.is_file())
    again = b.import_zip(data, None)  # the same ZIP twice: nothing doubled
    assert again.ids == [] and again.duplicates == 9 and len(b.load().ids) == 9
    c = ExampleStore(tmp_path / "c", "door", max_examples=10)
    c.add("open", jpeg(99), emb(99))
    c.add("open", jpeg(98), emb(98))
    got = c.import_zip(a.export_zip(), None)  # no model in it
    assert got.model is None and len(got.evicted) == 1 and len(c.load().ids) == 10


def with_entry(data: bytes, name: str | zipfile.ZipInfo, payload: bytes = b"x") -> bytes:
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(name, payload)
    return buf.getvalue()


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    return info


def without(data: bytes, drop: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != drop:
                dst.writestr(info, src.read(info))
    return out.getvalue()


def bomb_entry(data: bytes, name: str, expands_to: int, declares: int | None = None) -> bytes:
    """`name` deflated from `expands_to` zero bytes (a few KB in the ZIP); `declares`: the
    uncompressed size written in its headers instead of the true one."""
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w", force_zip64=False) as f:
        chunk = bytes(2**20)
        for _ in range(expands_to // len(chunk)):
            f.write(chunk)
    out = bytearray(buf.getvalue())
    if declares is not None:
        raw = name.encode()
        local = out.find(b"PK\x03\x04" + b"\x14\x00")  # the first local header is another entry's; find ours
        while local >= 0 and out[local + 30 : local + 30 + len(raw)] != raw:
            local = out.find(b"PK\x03\x04", local + 4)
        central = out.find(b"PK\x01\x02")
        while central >= 0 and out[central + 46 : central + 46 + len(raw)] != raw:
            central = out.find(b"PK\x01\x02", central + 4)
        assert local >= 0 and central >= 0
        out[local + 22 : local + 26] = struct.pack("<I", declares)
        out[central + 24 : central + 28] = struct.pack("<I", declares)
    return bytes(out)


def many_entries(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"examples/cat/{i:013d}-0000.jpg", b"")
    return buf.getvalue()


@pytest.fixture
def export(tmp_path: Path) -> bytes:
    a = ExampleStore(tmp_path / "a", "door")
    fill_store(a, per_class=3)
    return a.export_zip(MODEL, backbone_sha256=SHA_A)


EID = "0000000000001-0000"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: with_entry(d, "../../etc/x"), "leads out"),
        (lambda d: with_entry(d, f"examples/cat/../../../{EID}.jpg"), "leads out"),
        (lambda d: with_entry(d, "/etc/x"), "absolute"),
        (lambda d: with_entry(d, f"examples\\..\\..\\{EID}.jpg"), "absolute, Windows"),
        (lambda d: with_entry(d, "C:/x"), "absolute, Windows"),
        (lambda d: with_entry(d, symlink_entry(f"examples/cat/{EID}.jpg"), b"/etc/passwd"), "symbolic link"),
        (lambda d: with_entry(d, f"examples/.hidden/{EID}.jpg"), "starts with a dot"),
        (lambda d: with_entry(d, f"examples/unknown/{EID}.jpg"), "reserves"),
        (lambda d: with_entry(d, "notes.txt"), "not part of an examples export"),
        (lambda d: with_entry(d, f"examples/cat/{EID}.jpg"), "lacks its image or its embedding"),
        (lambda d: without(d, "manifest.json"), "no manifest.json"),
        (lambda d: with_entry(without(d, "manifest.json"), "manifest.json", b'{"format": "x"}'), "not an edge-resnet"),
        (lambda d: b"PK\x05\x06 this is not a zip file", "not a ZIP"),
        (lambda d: many_entries(5000), "directory lists 5000 entries"),
        (lambda d: d[: len(d) // 2], "nothing was imported"),  # zipfile may find a member .npz's directory
        (lambda d: with_entry(d, f"examples/cat/{EID}.jpg", bytes(MAX_JPEG + 1)), "declares"),
        (lambda d: bomb_entry(d, f"examples/cat/{EID}.npz", 16 * 2**20), "declares"),
        (lambda d: bomb_entry(with_entry(d, f"examples/cat/{EID}.jpg", jpeg(5)), f"examples/cat/{EID}.npz",
                              64 * 2**20, declares=MAX_NPZ // 2), "damaged"),
    ],
    ids=[
        "zip-slip", "zip-slip-inside", "absolute", "backslashes", "drive-letter", "symlink", "hidden-class",
        "reserved-class", "stray-file", "half-example", "no-manifest", "foreign-manifest", "not-a-zip", "many-entries",
        "truncated", "oversize-entry", "bomb-declared", "bomb-lying",
    ],
)
def test_malicious_or_broken_zips_are_refused_with_nothing_written(
    tmp_path: Path, export: bytes, make: Callable[[bytes], bytes], match: str
) -> None:
    data = make(export)
    target = tmp_path / "b"
    before = tree(tmp_path)
    b = ExampleStore(target, "porch")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match) as e:
            b.import_zip(data, SHA_A)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(e.value) and "nothing was imported" in str(e.value)
    assert peak < len(data) + 8 * 2**20, f"reading the ZIP took {peak} bytes"  # a bomb is never expanded
    assert tree(tmp_path) == before
    assert not target.exists()


def test_zips_over_the_stores_caps_or_from_another_backbone_are_refused(tmp_path: Path, export: bytes) -> None:
    few = ExampleStore(tmp_path / "few", "r", max_examples=5)  # the export holds 6
    with pytest.raises(InputError, match="files, over the 12 this store's caps allow"):
        few.import_zip(export, SHA_A)
    big = ExampleStore(tmp_path / "a2", "r")
    for i in range(6):
        big.add("cat", jpeg(i, side=96, quality=100), emb(i))
    small = ExampleStore(tmp_path / "small", "r", max_bytes=64 * 2**10)
    with pytest.raises(InputError, match="bytes, over this store's cap"):
        small.import_zip(big.export_zip(), None)
    other = ExampleStore(tmp_path / "other", "r")
    with pytest.raises(InputError, match="another model"):
        other.import_zip(export, SHA_B)
    wide = ExampleStore(tmp_path / "wide", "r")
    wide.add("cat", jpeg(1), emb(1, d=2 * D))
    with pytest.raises(InputError, match="another model"):
        wide.import_zip(export, None)  # digests unknown, but the embedding sizes differ
    bad_model = ExampleStore(tmp_path / "a3", "r")
    bad_model.add("cat", jpeg(1), emb(1))
    with pytest.raises(InputError, match="not a TFLite model"):
        other.import_zip(bad_model.export_zip(b"not a model at all"), None)
    assert not any((tmp_path / n).exists() for n in ("few", "small", "other"))
    assert wide.load().ids and len(wide.load().ids) == 1
    assert other.import_zip(export, None).model == MODEL  # a digest unknown on one side: accepted


# ---------------------------------------------------------------------------------------- a full disk


def _mount(*args: str) -> tuple[bool, str]:
    try:
        r = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return r.returncode == 0, r.stderr.strip()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KB tmpfs (needs root or CAP_SYS_ADMIN: skipped otherwise, but a failure under CI=true)."""
    d = tmp_path / "tiny"
    d.mkdir()
    ok, why = _mount("-t", "tmpfs", "-o", "size=200k", "tmpfs", str(d))
    if not ok:
        msg = f"cannot mount a tmpfs here ({why or 'needs root'})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True)


def fill_disk(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as e:
        assert e.errno == 28, e  # ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_is_a_store_error_with_nothing_half_written_and_recovers(tiny_disk: Path) -> None:
    s = ExampleStore(tiny_disk / "examples", "r", max_examples=6)  # at the cap: an add would remove the oldest
    ids = fill_store(s, per_class=3)
    other = ExampleStore(tiny_disk / "other", "r")
    other.add("bird", jpeg(60), emb(60))
    backup = other.export_zip()
    (tiny_disk / "ballast").parent.mkdir(exist_ok=True)
    fill_disk(tiny_disk / "ballast")
    before = tree(tiny_disk / "examples")
    for cls in ("cat", "newclass"):  # an existing class folder, and one to be made
        with pytest.raises(StoreError) as e:
            s.add(cls, jpeg(50, side=48), emb(50), emb(51))
        msg = str(e.value)
        assert "disk is full" in msg and "not being stored" in msg and "\n" not in msg, msg
        assert tree(tiny_disk / "examples") == before  # no temporary files, no half example, nothing removed
    assert not (tiny_disk / "examples" / "r" / "newclass").exists()
    with pytest.raises(StoreError, match="disk is full"):
        s.import_zip(backup, None)
    assert tree(tiny_disk / "examples") == before
    loaded = s.load()
    assert loaded.ids == ids and loaded.n_skipped == 0
    assert s.crop(ids[0]) == jpeg(0)
    assert s.export_zip()  # reading and exporting still work
    assert _mount("-o", "remount,size=4m", str(tiny_disk))[0]
    a = s.add("cat", jpeg(50, side=48), emb(50), emb(51))
    assert a.evicted == (Evicted(ids[0], "cat", "count"),)
    assert s.load().ids == [*ids[1:], a.id]
    assert np.array_equal(s.load().embeddings[-1], emb(50))
    print(f"\n200 KB tmpfs full: {len(ids)} examples kept, add refused in one line, stored again after growing")


def test_a_read_only_disk_is_a_store_error_and_recovers(tiny_disk: Path) -> None:
    s = ExampleStore(tiny_disk, "r")
    first = s.add("cat", jpeg(1), emb(1)).id
    assert _mount("-o", "remount,ro", str(tiny_disk))[0]
    with pytest.raises(StoreError, match="read-only"):
        s.add("cat", jpeg(2), emb(2))
    with pytest.raises(StoreError, match="read-only"):
        s.remove(first)
    assert s.load().ids == [first]
    assert _mount("-o", "remount,rw", str(tiny_disk))[0]
    second = s.add("cat", jpeg(2), emb(2)).id
    assert s.load().ids == [first, second]
    assert zlib.crc32(s.crop(first)) == zlib.crc32(jpeg(1))
