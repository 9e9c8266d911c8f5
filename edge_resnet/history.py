"""The device's own history of label changes: a bounded SQLite file under the state directory.

One row a change (time, region, label, score, the label before, frame number) and its small JPEG
thumbnail in a table of its own, so listing and filtering never read an image. Kept within three
caps, the oldest out first: a count, bytes on disk (database, WAL and shared-memory file together)
and an age. Pure of HTTP and of threads: `historywriter.History` batches changes into it on its own
thread and the overlay reads through that.

Why SQLite (standard library): a batch is one transaction, so `kill -9` or a power cut leaves the
last complete batch and never half a row, and eviction commits together with the rows that caused
it. WAL with `synchronous=NORMAL`, as the MQTT event queue: a commit appends the batch's pages to
the WAL without an fsync (nothing committed is lost when the process dies; a power cut may lose the
last batches, seconds of history), readers never wait for the writer's I/O, and the WAL is
checkpointed and truncated only when it outgrows a small share of the byte cap; together with
batches of several changes every few seconds, the SD card sees few, sequential writes.

A full disk, a read-only file or an I/O error *degrades* the store, never the daemon: the write
returns False (the caller keeps or counts the changes), reading goes on, `problem` says why (logged
once), and the caller retries every few seconds, so it recovers by itself when space returns. A
corrupt file is moved aside (kept for inspection) and a fresh one started, with one warning.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sqlitefile import SqliteFile, transaction

log = logging.getLogger(__name__)

MIB = 1024 * 1024
SHM_BYTES = 32 * 1024  # SQLite's shared-memory file beside a WAL database
_ROW_BYTES = 160  # an event row with its index entries, roughly (the thumbnail apart)
_EVICT_ROUNDS = 64  # the byte cap: at most this many delete rounds in one write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    region TEXT,
    label TEXT NOT NULL,
    class_index INTEGER NOT NULL,
    score REAL NOT NULL,
    previous TEXT,
    frame_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE INDEX IF NOT EXISTS events_label ON events (label, id);
CREATE TABLE IF NOT EXISTS thumbs (
    id INTEGER PRIMARY KEY,
    jpeg BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_COLUMNS = "id, at, region, label, class_index, score, previous, frame_seq"


@dataclass(frozen=True)
class HistoryCaps:
    """The store's bounds; past any of them the oldest changes are evicted."""

    max_events: int = 10_000
    max_bytes: int = 20 * MIB  # database + WAL + shared memory on disk
    max_age_s: float = 30 * 86400.0

    @property
    def wal_bytes(self) -> int:
        """The WAL's share of the byte cap: checkpointed and truncated past half of it."""
        return max(64 * 1024, min(MIB, self.max_bytes // 8))

    @property
    def db_bytes(self) -> int:
        """What the database's pages in use may take: the cap less the WAL's share and shared memory."""
        return max(64 * 1024, self.max_bytes - self.wal_bytes - SHM_BYTES)


@dataclass(frozen=True)
class HistoryEvent:
    """One label change. `region` None: the whole frame. `thumbnail`: a small JPEG (None in query
    answers: served one by one, by id)."""

    id: int
    at: float  # time.time() of the change
    region: str | None
    label: str
    class_index: int
    score: float
    previous: str | None  # the label before, None for the first one this run saw
    frame_seq: int
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class HistoryQuery:
    """A filter and a page. `after`/`before` are id cursors (exclusive); `start` <= at < `end`."""

    label: str | None = None
    region: str | None = None
    start: float | None = None
    end: float | None = None
    after: int | None = None
    before: int | None = None
    limit: int = 8
    ascending: bool = False  # False: newest first

    def matches(self, e: HistoryEvent, cursors: bool = True) -> bool:
        """The same test as `where()`, for changes not written yet."""
        return (
            (self.label is None or e.label == self.label)
            and (self.region is None or e.region == self.region)
            and (self.start is None or e.at >= self.start)
            and (self.end is None or e.at < self.end)
            and not (cursors and self.after is not None and e.id <= self.after)
            and not (cursors and self.before is not None and e.id >= self.before)
        )

    def where(self, cursors: bool = True) -> tuple[str, list[Any]]:
        parts: list[str] = []
        args: list[Any] = []
        for cond, value, use in (
            ("label = ?", self.label, True),
            ("region = ?", self.region, True),
            ("at >= ?", self.start, True),
            ("at < ?", self.end, True),
            ("id > ?", self.after, cursors),
            ("id < ?", self.before, cursors),
        ):
            if use and value is not None:
                parts.append(cond)
                args.append(value)
        return " AND ".join(parts) or "1", args


@dataclass(frozen=True)
class HistoryPage:
    """A query's answer: the page, how many changes match the filter in all, whether there is more."""

    events: list[HistoryEvent]
    total: int
    more: bool


def _event(row: Sequence[Any]) -> HistoryEvent:
    i, at, region, label, class_index, score, previous, frame_seq = row
    return HistoryEvent(int(i), float(at), region, str(label), int(class_index), float(score), previous, int(frame_seq))


class HistoryStore(SqliteFile):
    """The SQLite file (or, with `path` None, a database in memory with the same caps). Not
    thread-safe: one owner at a time (historywriter.History holds a lock around every call)."""

    _log = log
    _what = "history"
    _fresh = "started a fresh history"
    _schema = _SCHEMA

    def __init__(self, path: Path | None, caps: HistoryCaps) -> None:
        super().__init__(path)
        self.caps = caps
        self.count = 0  # events in the store
        self.last_id = 0  # the newest id the store has handed out (0: none)
        self.stored_dropped = 0  # the counter on disk: changes that were never stored
        self.evicted: collections.Counter[str] = collections.Counter()  # reason -> events, this process
        self._evicted_pending: collections.Counter[str] = collections.Counter()  # in the open transaction

    # -- for SqliteFile ----------------------------------------------------------------------------

    def _pragmas(self) -> list[str]:
        return [f"PRAGMA wal_autocheckpoint={self.caps.wal_bytes // 4096}"]  # a backstop; see _checkpoint

    def _handed_out(self) -> int:
        return self.last_id  # a page may still hold a thumbnail URL of an id the lost file had

    def _goes_on(self) -> str:
        return (
            "classification and the overlay go on, label changes that cannot be stored are counted as dropped; "
            "retrying every few seconds"
        )

    def _summary(self) -> str:
        return f"{self.count} changes stored, {self.stored_dropped} dropped in all"

    def open(self) -> bool:
        """Open (or reopen) the file; a corrupt one is set aside and replaced. False: degraded."""
        if not super().open():
            return False
        self._checkpoint(always=True)  # a new file's schema, or a WAL left by kill -9: into the database
        return True

    def _refresh(self) -> None:
        db = self._require()
        n, last = db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM events").fetchone()
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self.count = int(n)
        self.last_id = max(self.last_id, int(last), int(seq[0]) if seq else 0)
        row = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        self.stored_dropped = int(row[0]) if row else 0

    # -- writing -----------------------------------------------------------------------------------

    def write(self, events: Sequence[HistoryEvent], dropped: int = 0, now: float | None = None) -> bool:
        """Store `events` (ids ascending, above every stored id) and add `dropped` to the drop counter,
        evicting the oldest past the caps, in one transaction. False: nothing written (degraded)."""
        if not events and not dropped:
            return True
        now = time.time() if now is None else now
        try:
            with transaction(self._require()) as db:
                count = self._make_room(db, self.count, sum(map(self._estimate, events)), len(events), now)
                db.executemany(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e.id, e.at, e.region, e.label, e.class_index, e.score, e.previous, e.frame_seq) for e in events],
                )
                db.executemany("INSERT INTO thumbs (id, jpeg) VALUES (?, ?)",
                               [(e.id, e.thumbnail) for e in events if e.thumbnail])  # fmt: skip
                count = self._make_room(db, count + len(events), 0, 0, now)  # when the estimate was short
                if dropped:
                    db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (dropped,),
                    )
        except sqlite3.Error as e:
            self._evicted_pending.clear()
            self._failed(e, "writing label changes")
            return False
        self.count = count
        self.stored_dropped += dropped
        self.evicted.update(self._evicted_pending)
        self._evicted_pending.clear()
        if events:
            self.last_id = max(self.last_id, events[-1].id)
        self._checkpoint()
        return True

    def expire(self, now: float | None = None) -> bool:
        """The age cap alone (the caller asks now and then, also when no change comes). False: degraded."""
        now = time.time() if now is None else now
        try:
            db = self._require()
            oldest = db.execute("SELECT MIN(at) FROM events").fetchone()[0]
            if oldest is None or oldest >= now - self.caps.max_age_s:
                return True
            with transaction(db):
                count = self._make_room(db, self.count, 0, 0, now)
        except sqlite3.Error as e:
            self._evicted_pending.clear()
            self._failed(e, "evicting old label changes")
            return False
        self.count = count
        self.evicted.update(self._evicted_pending)
        self._evicted_pending.clear()
        self._checkpoint()
        return True

    def _estimate(self, e: HistoryEvent) -> int:
        """Bytes of pages a new event will take: a thumbnail of half a page or more gets pages of its own."""
        n = len(e.thumbnail or b"")
        page = 4096
        blob = page * math.ceil((n + 64) / (page - 64)) if n >= page // 2 else 2 * n
        return _ROW_BYTES + blob

    def _make_room(self, db: sqlite3.Connection, count: int, incoming_bytes: int, incoming: int, now: float) -> int:
        """Evict (in the open transaction) the oldest past the age cap, then as many as the count and
        byte caps need with `incoming` events of `incoming_bytes` to come; returns the count left."""
        count -= self._delete(db, "at < ?", [now - self.caps.max_age_s], "age")
        excess = count + incoming - self.caps.max_events
        if excess > 0:
            count -= self._delete_oldest(db, excess, "count")
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        for _ in range(_EVICT_ROUNDS):
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
            used = (pages - free) * page_size
            over = used + incoming_bytes - self.caps.db_bytes
            if over <= 0 or count <= 0:
                break
            per_event = max(1, used // count)
            count -= self._delete_oldest(db, max(1, math.ceil(over / per_event)), "bytes")
        return count

    def _delete_oldest(self, db: sqlite3.Connection, n: int, reason: str) -> int:
        return self._delete(db, "id IN (SELECT id FROM events ORDER BY id LIMIT ?)", [n], reason)

    def _delete(self, db: sqlite3.Connection, where: str, args: list[Any], reason: str) -> int:
        db.execute(f"DELETE FROM thumbs WHERE id IN (SELECT id FROM events WHERE {where})", args)
        n = max(0, db.execute(f"DELETE FROM events WHERE {where}", args).rowcount)
        if n:
            self._evicted_pending[reason] += n
        return n

    def _checkpoint(self, always: bool = False) -> None:
        """Copy the WAL into the database and truncate it once it passes half its share of the cap."""
        if self.path is None or self._db is None:
            return
        wal = Path(str(self.path) + "-wal")
        with contextlib.suppress(OSError, sqlite3.Error):  # a failed checkpoint is retried after the next write
            if wal.exists() and (always or wal.stat().st_size > self.caps.wal_bytes // 2):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading -----------------------------------------------------------------------------------

    def query(self, q: HistoryQuery, unsaved: Sequence[HistoryEvent] = ()) -> HistoryPage:
        """A page of changes matching `q`, stored ones and `unsaved` ones (newer than any stored)
        together; on a read error, the unsaved ones alone."""
        extra = sorted((e for e in unsaved if q.matches(e)), key=lambda e: e.id, reverse=not q.ascending)
        extra_total = sum(1 for e in unsaved if q.matches(e, cursors=False))
        rows: list[HistoryEvent] = []
        total = 0
        try:
            if self._db is not None:
                where, args = q.where()
                order = "ASC" if q.ascending else "DESC"
                cur = self._db.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY id {order} LIMIT ?", [*args, q.limit + 1]
                )
                rows = [_event(r) for r in cur.fetchall()]
                where, args = q.where(cursors=False)
                total = int(self._db.execute(f"SELECT COUNT(*) FROM events WHERE {where}", args).fetchone()[0])
        except sqlite3.Error as e:
            self._failed(e, "reading label changes")
            rows, total = [], 0
        merged = rows + extra if q.ascending else extra + rows
        return HistoryPage(merged[: q.limit], total + extra_total, len(merged) > q.limit)

    def thumbnail(self, event_id: int) -> bytes | None:
        try:
            if self._db is None:
                return None
            row = self._db.execute("SELECT jpeg FROM thumbs WHERE id = ?", (event_id,)).fetchone()
        except sqlite3.Error as e:
            self._failed(e, "reading a thumbnail")
            return None
        return bytes(row[0]) if row else None

    def labels(self) -> dict[str, int]:
        """Stored label -> how many changes to it."""
        try:
            if self._db is None:
                return {}
            rows = self._db.execute("SELECT label, COUNT(*) FROM events GROUP BY label").fetchall()
        except sqlite3.Error as e:
            self._failed(e, "reading labels")
            return {}
        return {str(label): int(n) for label, n in rows}

    def close(self) -> None:
        """Checkpoint (the WAL goes away with the last connection) and close."""
        if self._db is not None and self.path is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._close_db()
