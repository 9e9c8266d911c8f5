"""Writing a file so that a failure never loses the old one, and saying why the disk refused.

A file is written whole under a temporary name in its own folder (`.tmp-...`, so a sweep can tell
what a crash left), fsynced and renamed over the old one: a reader, the next start or a power cut
sees the old file or the new one, never half. A write that fails removes its temporary file and
raises the OSError; `disk_problem` and `why_disk` name the cause (a full disk, a read-only card, a
failing card, permissions) in the words the callers print. The fleet's ledger and downloads, the
example store, model bundles and learned-head records all write this way.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path

Data = bytes | str | Sequence[bytes]  # str is written as UTF-8; a sequence of bytes one part after another


class DiskProblem(Enum):
    """Why the disk refused a write: the fix differs for each."""

    FULL = "full"  # ENOSPC, EDQUOT (a quota), EFBIG (a file-size limit): no room for the file
    READ_ONLY = "read-only"  # EROFS: the card was remounted read-only (often after errors)
    IO = "io"  # EIO: a failing card
    PERMISSION = "permission"  # EACCES, EPERM
    OTHER = "other"


_ERRNOS = {
    errno.ENOSPC: DiskProblem.FULL,
    errno.EDQUOT: DiskProblem.FULL,
    errno.EFBIG: DiskProblem.FULL,
    errno.EROFS: DiskProblem.READ_ONLY,
    errno.EIO: DiskProblem.IO,
    errno.EACCES: DiskProblem.PERMISSION,
    errno.EPERM: DiskProblem.PERMISSION,
}

# what went wrong, and what must happen before writing works again
_WORDS = {
    DiskProblem.FULL: ("the disk is full", "space is freed"),
    DiskProblem.READ_ONLY: ("the file system is read-only", "it is writable again"),
    DiskProblem.IO: ("the disk reports I/O errors (a failing SD card?)", "the disk is replaced"),
    DiskProblem.PERMISSION: ("permission denied", "the service user may write there"),
}


def disk_problem(e: OSError) -> DiskProblem:
    """The kind of disk failure an OSError from a write is."""
    return _ERRNOS.get(e.errno or 0, DiskProblem.OTHER)


def why_disk(e: OSError) -> tuple[str, str]:
    """(what went wrong, what must happen first) for a line such as `...: {why}; ... until {until}`;
    one line whatever the OS said."""
    problem = disk_problem(e)
    if problem is DiskProblem.OTHER:
        return (e.strerror or type(e).__name__).replace("\n", " "), "the disk is fixed"
    return _WORDS[problem]


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_mode() -> int:
    """The mode a plain `open()` gives a new file (0644 under umask 022). mkstemp's 0600 would leave a
    file written with `sudo` (a model, a learned head) unreadable to the service user."""
    return 0o666 & ~current_umask()


def fsync_dir(d: str | os.PathLike[str], *, strict: bool = False) -> None:
    """Make a rename in `d` durable (a power cut right after it must not undo it). `strict`: an error
    is raised (the caller reports it as the disk's); otherwise the rename stands, only less durably."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def write_temp(
    folder: str | os.PathLike[str], data: Data, *, mode: int | None = None, prefix: str = ".tmp-", suffix: str = ""
) -> Path:
    """`data` in a new temporary file in `folder`, fsynced, with permission bits `mode` (None: what
    `open()` would give); on any failure the temporary file is removed and the error raised."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    tmp = Path(name)
    with _removed_on_failure(tmp):
        try:
            os.fchmod(fd, open_mode() if mode is None else mode)
            for part in _parts(data):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    return tmp


def write_atomic(
    path: str | os.PathLike[str],
    data: Data,
    *,
    mode: int | None = None,
    prefix: str = ".tmp-",
    suffix: str = ".tmp",
    sync_dir: bool = False,
) -> Path:
    """Replace `path` (in a folder that exists) with `data`, atomically: the old file stays whole until
    the new one is complete on disk. `sync_dir`: also fsync the folder, so the rename survives a power
    cut. OSError as the disk gave it (`why_disk` names it); nothing is left behind."""
    p = Path(path)
    tmp = write_temp(p.parent, data, mode=mode, prefix=prefix, suffix=suffix)
    with _removed_on_failure(tmp):
        os.replace(tmp, p)
    if sync_dir:
        fsync_dir(p.parent)
    return p


@contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """The block's error goes on up; the temporary file it was writing or renaming does not stay."""
    try:
        yield
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def _parts(data: Data) -> Sequence[bytes]:
    if isinstance(data, str):
        return (data.encode("utf-8"),)
    if isinstance(data, bytes):
        return (data,)
    return data
