"""Store and forward for MQTT events: a bounded SQLite queue that survives restarts and `kill -9`.

Only label-change events are written (never per-frame data: SD-card care). The database is in WAL
mode with `synchronous=NORMAL`: a commit survives a crash or `kill -9` of the process (the data is in
the OS page cache and the WAL), and at most the last commits may be lost on a power cut, in
exchange for no fsync per event. `seq` comes from SQLite's AUTOINCREMENT, so it keeps increasing
across restarts, also after the queue has been emptied. One thread owns a queue object.

The queue never stops the daemon. A full disk, a read-only file or an I/O error makes it
*degraded* (`problem` says why): events that cannot be written are counted in `dropped`, acks
that cannot be deleted are remembered, and `poll()` retries every few seconds, so it recovers by
itself once writes work again. A corrupt file is moved aside (kept for inspection) and a fresh
queue is started, with one warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

RETRY_S = 5.0  # while degraded, try to write again this often

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queued_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class QueuedEvent(NamedTuple):
    seq: int
    queued_at: float
    body: dict[str, Any]


class _Corrupt(Exception):
    """The file is not a usable SQLite database (bad header, bad page, failed integrity check)."""


def _is_corrupt(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, _Corrupt) or (isinstance(code, int) and code & 0xFF in _CORRUPT)


class EventQueue:
    """FIFO of events on disk, at most `max_len` long; when full the oldest are dropped and counted."""

    def __init__(self, path: Path, max_len: int) -> None:
        self.path = path
        self.max_len = max_len
        self._db: sqlite3.Connection | None = None
        self._len = 0
        self._stored_dropped = 0  # the counter on disk
        self._unsaved_dropped = 0  # dropped while degraded, not yet added to the counter on disk
        self._pending_delete: set[int] = set()  # acknowledged, but the delete could not be written
        self.last_seq = 0  # the newest seq still on disk (0: empty)
        self.problem: str | None = None  # why the queue is degraded; None when it works
        self.set_aside: list[Path] = []  # corrupt files moved away by this object
        self._retry_at = 0.0
        self._open()

    # -- opening, corruption, degradation ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("PRAGMA quick_check").fetchone()  # reads every page: the queue is small and bounded
            if row is None or row[0] != "ok":
                raise _Corrupt(f"integrity check: {row[0] if row else 'no answer'}")
            db.execute("SELECT COUNT(*), MAX(seq) FROM events").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> bool:
        """Open (or reopen) the file; a corrupt one is set aside and replaced. False: degraded."""
        self._close_db()
        try:
            try:
                self._db = self._connect()
            except (sqlite3.Error, _Corrupt) as e:
                if not _is_corrupt(e):
                    raise
                self._move_aside(e)
                self._db = self._connect()
                # `seq` must keep increasing past what the corrupt file handed out, which cannot be read
                # back: start from the clock in milliseconds, above any counter (and any earlier restart)
                start = max(self.last_seq, int(time.time() * 1000))
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (start,))
            self._refresh()
        except (sqlite3.Error, OSError, _Corrupt) as e:
            self._close_db()
            self._degrade(f"cannot open it ({e})")
            return False
        return True

    def _move_aside(self, e: BaseException) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(target) + suffix))
        self.set_aside.append(target)
        log.warning(
            "event queue %s is corrupt (%s); moved it to %s for inspection and started a fresh queue "
            "(events in it are not sent)",
            self.path,
            e,
            target.name,
        )

    def _degrade(self, why: str) -> None:
        if self.problem is None:
            log.warning(
                "event queue %s degraded: %s; classification and live MQTT go on, events that cannot be "
                "stored are counted as dropped; retrying every %.0f s",
                self.path,
                why,
                RETRY_S,
            )
            self._retry_at = time.monotonic() + RETRY_S
        self.problem = why

    def _failed(self, e: BaseException, doing: str) -> None:
        if self._db is None and self.problem is not None:
            return  # not open: the reason it could not be opened says it best
        if _is_corrupt(e):
            log.debug("event queue corrupt while %s: %s", doing, e)
            self._open()  # moves it aside and starts fresh
            return
        self._degrade(f"{doing} failed: {e}")

    def poll(self) -> None:
        """Sink thread, often: while degraded, at most every RETRY_S, reopen and try the writes again."""
        if self.problem is None or time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RETRY_S
        if not self._open():
            return
        try:
            self._write_pending()
        except sqlite3.Error as e:
            self._failed(e, "writing")
            return
        log.info("event queue %s works again; %d events queued, %d dropped in all", self.path, self._len, self.dropped)
        self.problem = None

    def _write_pending(self) -> None:
        """Deletes and the drop count that could not be written while degraded."""
        db = self._require()
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._pending_delete:
                db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in sorted(self._pending_delete)])
            if self._unsaved_dropped:
                self._add_dropped(db, self._unsaved_dropped)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._pending_delete.clear()
        self._stored_dropped += self._unsaved_dropped
        self._unsaved_dropped = 0
        self._refresh()

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError(self.problem or "queue is not open")
        return self._db

    @staticmethod
    def _add_dropped(db: sqlite3.Connection, n: int) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (n,),
        )

    # -- the queue -------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Events lost: pushed out of a full queue, or not storable while degraded."""
        return self._stored_dropped + self._unsaved_dropped

    def refresh(self) -> None:
        """Re-read the length and the dropped counter (another process or sink may have written since)."""
        try:
            self._refresh()
        except sqlite3.Error as e:
            self._failed(e, "reading")

    def _refresh(self) -> None:
        db = self._require()
        n, last = db.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM events").fetchone()
        self._len = int(n)
        self.last_seq = int(last)
        row = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        self._stored_dropped = int(row[0]) if row else 0

    def __len__(self) -> int:
        return self._len

    def put(self, body: dict[str, Any]) -> int | None:
        """Append an event; returns its seq, or None when it could not be stored (degraded: counted
        as dropped). Drops the oldest events beyond `max_len` (counted in `dropped`)."""
        if self.problem is not None:
            self.poll()
        if self.problem is not None:
            self._unsaved_dropped += 1
            return None
        try:
            return self._put(self._require(), body)
        except sqlite3.Error as e:
            self._failed(e, "writing an event")
            self._unsaved_dropped += 1
            return None

    def _put(self, db: sqlite3.Connection, body: dict[str, Any]) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT INTO events (queued_at, body) VALUES (?, ?)", (time.time(), json.dumps(body, sort_keys=True))
            )
            seq = int(cur.lastrowid or 0)
            excess = self._len + 1 - self.max_len
            if excess > 0:
                db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
                self._add_dropped(db, excess)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.last_seq = seq
        if excess > 0:
            self._stored_dropped += excess
            self._len = self.max_len
        else:
            self._len += 1
        return seq

    def after(self, seq: int, limit: int) -> list[QueuedEvent]:
        """Up to `limit` queued events with a seq greater than `seq`, oldest first."""
        try:
            rows = (
                self._require()
                .execute("SELECT seq, queued_at, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
                .fetchall()
            )
            return [QueuedEvent(int(s), float(t), json.loads(b)) for s, t, b in rows]
        except (sqlite3.Error, ValueError) as e:
            self._failed(e if isinstance(e, sqlite3.Error) else _Corrupt(str(e)), "reading events")
            return []

    def delete(self, seqs: list[int]) -> None:
        """Forget delivered events (acknowledged by the broker); remembered if it cannot be written."""
        if not seqs:
            return
        if self.problem is not None:
            self._pending_delete.update(seqs)
            return
        db = self._db
        try:
            db = self._require()
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            self._pending_delete.update(seqs)
            self._failed(e, "deleting delivered events")
            return
        self._len = max(0, self._len - max(cur.rowcount, 0))

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def close(self) -> None:
        self._close_db()
