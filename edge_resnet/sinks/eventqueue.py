"""Store and forward for MQTT events: a bounded SQLite queue that survives restarts and `kill -9`.

Only label-change events are written (never per-frame data: SD-card care). The database is in WAL
mode with `synchronous=NORMAL`: a commit survives a crash or `kill -9` of the process (the data is in
the OS page cache and the WAL), and at most the last commits may be lost on a power cut, in
exchange for no fsync per event. `seq` comes from SQLite's AUTOINCREMENT, so it keeps increasing
across restarts, also after the queue has been emptied. One thread owns a queue object.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ConfigError

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


class EventQueue:
    """FIFO of events on disk, at most `max_len` long; when full the oldest are dropped and counted."""

    def __init__(self, path: Path, max_len: int) -> None:
        self.path = path
        self.max_len = max_len
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(
                f"event queue {path} cannot be opened ({e}); make the state directory writable "
                "(--state-dir or [daemon] state_dir)"
            ) from None
        self._len = 0
        self.dropped = 0
        self.last_seq = 0  # the newest seq still on disk (0: empty)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the length and the dropped counter (another process or sink may have written since)."""
        n, last = self._db.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM events").fetchone()
        self._len, self.last_seq = int(n), int(last)
        self.dropped = self._counter("dropped")

    def __len__(self) -> int:
        return self._len

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def put(self, body: dict[str, Any]) -> int:
        """Append an event; returns its seq. Drops the oldest events beyond `max_len` (counted in `dropped`)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT INTO events (queued_at, body) VALUES (?, ?)", (time.time(), json.dumps(body, sort_keys=True))
            )
            seq = int(cur.lastrowid or 0)
            excess = self._len + 1 - self.max_len
            if excess > 0:
                db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
                db.execute(
                    "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.last_seq = seq
        if excess > 0:
            self.dropped += excess
            self._len = self.max_len
        else:
            self._len += 1
        return seq

    def after(self, seq: int, limit: int) -> list[QueuedEvent]:
        """Up to `limit` queued events with a seq greater than `seq`, oldest first."""
        rows = self._db.execute(
            "SELECT seq, queued_at, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [QueuedEvent(int(s), float(t), json.loads(b)) for s, t, b in rows]

    def delete(self, seqs: list[int]) -> None:
        """Forget delivered events (acknowledged by the broker)."""
        if not seqs:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._len = max(0, self._len - max(cur.rowcount, 0))

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
