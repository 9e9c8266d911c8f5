"""A bounded SQLite file on an SD card: opened with an integrity check, set aside when corrupt,
degraded (never fatal) on a full disk or an I/O error, and recovered by the owner's retry.

The MQTT event queue (sinks/mqtt/eventqueue.py) and the history of label changes (history.py) are
both such a file; each keeps its own schema, caps and policies (acks, checkpoints, when to retry)
and subclasses `SqliteFile` for the rest. WAL with `synchronous=NORMAL`: a commit survives `kill -9`
without an fsync, a power cut may lose the last commits. `quick_check` reads every page, which is
fine only because the owners bound the file. A corrupt file is moved aside with its WAL and shared
memory (kept for inspection) and a fresh one started whose ids go on from the clock, above any the
lost file handed out (they may still be in a subscriber's or a page's hands).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
SUFFIXES = ("", "-wal", "-shm")  # the database, its WAL and its shared memory


class Corrupt(Exception):
    """The file is not a usable SQLite database (bad header, bad page, failed integrity check)."""


def is_corrupt(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, Corrupt) or (isinstance(code, int) and code & 0xFF in _CORRUPT)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT; rolled back on any error (the rollback's own error is not news)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


class SqliteFile:
    """The connection and the degraded state of one file (`path` None: a database in memory). A
    subclass sets the class attributes and `_refresh`/`_handed_out`/`_goes_on`/`_summary`."""

    _log = logging.getLogger(__name__)  # the owner's logger, so its lines keep their origin
    _what = "database"  # the file in log lines: "event queue", "history"
    _fresh = "started a fresh one"  # the corrupt-file warning's end
    _schema = ""
    _table = "events"  # its AUTOINCREMENT ids restart from the clock in a fresh file
    _probe = ""  # a query that must work on a usable file, beyond the integrity check

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.problem: str | None = None  # why the file is degraded; None when it works
        self.set_aside: list[Path] = []  # corrupt files moved away by this object

    # -- for the subclass --------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read what the owner keeps in memory (counts, newest id) from the open file."""

    def _handed_out(self) -> int:
        """The newest id the owner has handed out; a fresh file's ids start above it."""
        return 0

    def _pragmas(self) -> list[str]:
        """More PRAGMAs for a new connection, after the WAL ones."""
        return []

    def _goes_on(self) -> str:
        """The degraded warning's end: what goes on and how it retries."""
        return "retrying every few seconds"

    def _summary(self) -> str:
        """The recovered line's end: what the file holds now."""
        return "works again"

    # -- opening, corruption, degradation ----------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for pragma in self._pragmas():
                db.execute(pragma)
            db.executescript(self._schema)
            row = db.execute("PRAGMA quick_check").fetchone()  # reads every page: the owner bounds the file
            if row is None or row[0] != "ok":
                raise Corrupt(f"integrity check: {row[0] if row else 'no answer'}")
            if self._probe:
                db.execute(self._probe).fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def open(self) -> bool:
        """Open (or reopen) the file; a corrupt one is set aside and replaced. False: degraded."""
        self._close_db()
        try:
            try:
                self._db = self._connect()
            except (sqlite3.Error, Corrupt) as e:
                if not is_corrupt(e):
                    raise
                self._move_aside(e)
                self._db = self._connect()
                # ids must keep increasing past what the corrupt file handed out, which cannot be read
                # back: start from the clock in milliseconds, above any counter (and any earlier restart)
                start = max(self._handed_out(), int(time.time() * 1000))
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (self._table, start))
            self._refresh()
        except (sqlite3.Error, OSError, Corrupt) as e:
            self._close_db()
            self._degrade(f"cannot open it ({e})")
            return False
        return True

    def _move_aside(self, e: BaseException) -> None:
        assert self.path is not None  # a database in memory cannot be corrupt on disk
        target = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in SUFFIXES:
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(target) + suffix))
        self.set_aside.append(target)
        self._log.warning(
            "%s %s is corrupt (%s); moved it to %s for inspection and %s", self._what, self.path, e, target.name,
            self._fresh,
        )  # fmt: skip

    def _degrade(self, why: str) -> None:
        if self.problem is None:
            self._log.warning("%s %s degraded: %s; %s", self._what, self.path or "(in memory)", why, self._goes_on())
        self.problem = why

    def recovered(self) -> None:
        """The owner's retry wrote again: one line, and the file is no longer degraded."""
        if self.problem is not None:
            self._log.info("%s %s works again; %s", self._what, self.path, self._summary())
        self.problem = None

    def _failed(self, e: BaseException, doing: str) -> None:
        if self._db is None and self.problem is not None:
            return  # not open: the reason it could not be opened says it best
        if is_corrupt(e) and self.path is not None:
            self._log.debug("%s corrupt while %s: %s", self._what, doing, e)
            self.open()  # moves it aside and starts fresh; if that fails, degraded with the reason
            return
        self._degrade(f"{doing} failed: {e}")

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError(self.problem or f"the {self._what} is not open")
        return self._db

    def size_bytes(self) -> int:
        """The files on disk (database, WAL, shared memory); 0 in memory."""
        if self.path is None:
            return 0
        total = 0
        for suffix in SUFFIXES:
            with contextlib.suppress(OSError):
                total += Path(str(self.path) + suffix).stat().st_size
        return total

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def close(self) -> None:
        self._close_db()
