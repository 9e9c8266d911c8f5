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

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from ...sqlitefile import Corrupt, SqliteFile, transaction

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


class QueuedEvent(NamedTuple):
    seq: int
    queued_at: float
    body: dict[str, Any]


class EventQueue(SqliteFile):
    """FIFO of events on disk, at most `max_len` long; when full the oldest are dropped and counted."""

    _log = log
    _what = "event queue"
    _fresh = "started a fresh queue (events in it are not sent)"
    _schema = _SCHEMA
    _probe = "SELECT COUNT(*), MAX(seq) FROM events"

    def __init__(self, path: Path, max_len: int) -> None:
        super().__init__(path)
        self.path: Path = path
        self.max_len = max_len
        self._len = 0
        self._stored_dropped = 0  # the counter on disk
        self._unsaved_dropped = 0  # dropped while degraded, not yet added to the counter on disk
        self._pending_delete: set[int] = set()  # acknowledged, but the delete could not be written
        self.last_seq = 0  # the newest seq still on disk (0: empty)
        self._retry_at = 0.0
        self.open()

    # -- for SqliteFile ------------------------------------------------------------------------------

    def _handed_out(self) -> int:
        return self.last_seq

    def _goes_on(self) -> str:
        return (
            "classification and live MQTT go on, events that cannot be stored are counted as dropped; "
            f"retrying every {RETRY_S:.0f} s"
        )

    def _summary(self) -> str:
        return f"{self._len} events queued, {self.dropped} dropped in all"

    def _degrade(self, why: str) -> None:
        if self.problem is None:
            self._retry_at = time.monotonic() + RETRY_S
        super()._degrade(why)

    def poll(self) -> None:
        """Sink thread, often: while degraded, at most every RETRY_S, reopen and try the writes again."""
        if self.problem is None or time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RETRY_S
        if not self.open():
            return
        try:
            self._write_pending()
        except sqlite3.Error as e:
            self._failed(e, "writing")
            return
        self.recovered()

    def _write_pending(self) -> None:
        """Deletes and the drop count that could not be written while degraded."""
        with transaction(self._require()) as db:
            if self._pending_delete:
                db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in sorted(self._pending_delete)])
            if self._unsaved_dropped:
                self._add_dropped(db, self._unsaved_dropped)
        self._pending_delete.clear()
        self._stored_dropped += self._unsaved_dropped
        self._unsaved_dropped = 0
        self._refresh()

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
        with transaction(db):
            cur = db.execute(
                "INSERT INTO events (queued_at, body) VALUES (?, ?)", (time.time(), json.dumps(body, sort_keys=True))
            )
            seq = int(cur.lastrowid or 0)
            excess = self._len + 1 - self.max_len
            if excess > 0:
                db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
                self._add_dropped(db, excess)
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
            self._failed(e if isinstance(e, sqlite3.Error) else Corrupt(str(e)), "reading events")
            return []

    def delete(self, seqs: list[int]) -> None:
        """Forget delivered events (acknowledged by the broker); remembered if it cannot be written."""
        if not seqs:
            return
        if self.problem is not None:
            self._pending_delete.update(seqs)
            return
        try:
            with transaction(self._require()) as db:
                cur = db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
        except sqlite3.Error as e:
            self._pending_delete.update(seqs)
            self._failed(e, "deleting delivered events")
            return
        self._len = max(0, self._len - max(cur.rowcount, 0))
