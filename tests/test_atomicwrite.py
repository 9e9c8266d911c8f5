"""edge_resnet/atomicwrite.py on real files: a write replaces a file whole or not at all; a full or a
read-only disk (the small tmpfs tests/test_example_store.py mounts) or a file-size limit keeps the old
file byte for byte, leaves no temporary file, and is named in the words the callers print."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_resnet.atomicwrite import DiskProblem, disk_problem, fsync_dir, why_disk, write_atomic, write_temp
from tests.conftest import REPO
from tests.test_example_store import _mount, fill_disk
from tests.test_example_store import tiny_disk as tiny_disk  # the fixture: a 200 KB tmpfs

OLD = b"the old file, whole\n" * 100


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_a_write_replaces_the_file_whole_and_a_reader_keeps_the_old_one(tmp_path: Path) -> None:
    f = tmp_path / "state.json"
    f.write_bytes(OLD)
    with open(f, "rb") as reader:  # opened before the write: a rename, never an overwrite in place
        assert write_atomic(f, "écrit en UTF-8\n", sync_dir=True) == f
        assert reader.read() == OLD
    assert f.read_bytes() == "écrit en UTF-8\n".encode()
    write_atomic(f, [b"model", b"+", b"archive"])  # parts one after another, never joined in memory
    assert f.read_bytes() == b"model+archive"
    assert names(tmp_path) == ["state.json"]  # no temporary file left


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_file_gets_the_mode_open_gives_unless_told(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        plain = write_atomic(tmp_path / "plain", b"x")
        private = write_atomic(tmp_path / "private", b"x", mode=0o640)
        temp = write_temp(tmp_path, b"x", mode=0o600, prefix=".tmp-", suffix=".jpg")
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == mode  # mkstemp alone gives 0600: the service user could not read it
    assert private.stat().st_mode & 0o777 == 0o640
    assert temp.name.startswith(".tmp-") and temp.name.endswith(".jpg") and temp.read_bytes() == b"x"


def test_a_full_disk_keeps_the_old_file_and_leaves_nothing(tiny_disk: Path) -> None:
    f = tiny_disk / "ledger.json"
    write_atomic(f, OLD)
    fill_disk(tiny_disk / "ballast")
    with pytest.raises(OSError) as replacing:
        write_atomic(f, bytes(64 * 1024), sync_dir=True)
    with pytest.raises(OSError) as temp:
        write_temp(tiny_disk, b"x" * 8192)  # what the example store writes before its renames
    for e in (replacing.value, temp.value):
        assert e.errno == errno.ENOSPC and disk_problem(e) is DiskProblem.FULL
        assert why_disk(e) == ("the disk is full", "space is freed")
    assert f.read_bytes() == OLD
    assert names(tiny_disk) == ["ballast", "ledger.json"]  # no temporary file left
    (tiny_disk / "ballast").unlink()
    write_atomic(f, bytes(64 * 1024))
    assert f.read_bytes() == bytes(64 * 1024)


def test_a_read_only_disk_keeps_the_old_file(tiny_disk: Path) -> None:
    f = tiny_disk / "head.json"
    write_atomic(f, OLD)
    assert _mount("-o", "remount,ro", str(tiny_disk))[0]
    with pytest.raises(OSError) as e:
        write_atomic(f, b"new")
    assert disk_problem(e.value) is DiskProblem.READ_ONLY
    assert why_disk(e.value) == ("the file system is read-only", "it is writable again")
    assert f.read_bytes() == OLD
    assert _mount("-o", "remount,rw", str(tiny_disk))[0]
    write_atomic(f, b"new")
    assert names(tiny_disk) == ["head.json"] and f.read_bytes() == b"new"


def _child(code: str, *args: str) -> str:
    """`code` in a fresh interpreter whose files may not grow past 16 KB (RLIMIT_FSIZE: writes fail with
    EFBIG; Python ignores SIGXFSZ)."""
    prelude = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))\n"
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args], capture_output=True,
                       text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_file_size_limit_is_a_full_disk(tmp_path: Path) -> None:
    f = tmp_path / "model.tflite"
    f.write_bytes(OLD)
    said = _child(
        """
        import sys
        from edge_resnet.atomicwrite import disk_problem, why_disk, write_atomic
        try:
            write_atomic(sys.argv[1], bytes(64 * 1024))
        except OSError as e:
            print(disk_problem(e).value, why_disk(e)[0], sep="; ")
        """,
        str(f),
    )
    assert said == "full; the disk is full"
    assert f.read_bytes() == OLD and names(tmp_path) == ["model.tflite"]


def test_a_download_past_a_file_size_limit_is_refused_at_once_not_retried(tmp_path: Path) -> None:
    """fleet/fetch.py refuses a download the disk has no room for (ENOSPC, a quota, a file-size limit)
    or cannot write (read-only); the network's failures alone are retried."""
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(64 * 1024))
    said = _child(
        """
        import sys
        from pathlib import Path
        from edge_resnet.fleet.fetch import FetchFailed, FetchRefused, fetch
        d = Path(sys.argv[2])
        try:
            fetch(sys.argv[1], 64 * 1024, sys.argv[3], d / "job.part", d / "model.tflite", retries=2)
        except (FetchRefused, FetchFailed) as e:
            print(type(e).__name__, e, sep=": ")
        """,
        f"file://{src}", str(tmp_path / "fleet"), hashlib.sha256(src.read_bytes()).hexdigest(),
    )  # fmt: skip
    assert said.startswith("FetchRefused: no room for the download in ") and "free space" in said, said
    assert names(tmp_path / "fleet") == []  # the part is removed: no retry can fit it


def test_other_failures_are_named_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / ("x" * 300)  # the rename fails (a name over 255 bytes): the complete temporary file goes too
    with pytest.raises(OSError) as e:
        write_atomic(f, OLD)
    assert disk_problem(e.value) is DiskProblem.OTHER
    assert why_disk(e.value) == ("File name too long", "the disk is fixed")
    assert names(tmp_path) == []
    # what root cannot be refused here, as the kernel says it
    denied = OSError(errno.EACCES, "Permission denied")
    assert why_disk(denied) == ("permission denied", "the service user may write there")
    assert why_disk(OSError(errno.EDQUOT, "Disk quota exceeded")) == ("the disk is full", "space is freed")
    assert why_disk(OSError(errno.EIO, "Input/output error"))[0] == "the disk reports I/O errors (a failing SD card?)"
    assert why_disk(OSError("no errno\nat all")) == ("OSError", "the disk is fixed")


def test_fsync_dir_is_a_best_effort_unless_strict(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "gone")  # the rename stands, less durably: nothing to report
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "gone", strict=True)
