"""Label changes into the history store (history.py) without touching the disk on the pipeline thread.

`add` only appends to a small queue; one writer thread owns the store's writes and stores the queue
in batches: when `flush_events` changes wait, when the oldest has waited `flush_s` seconds, and on
`stop` (SD-card care: a few larger writes instead of one per change). Readers (the overlay's HTTP
threads) see stored and waiting changes alike, so the page shows a change at once.

The queue is bounded: QUEUE_MAX changes (a burst far beyond any smoother's pace), and while the
store is degraded (a full disk, see history.py) only `2 * flush_events`, so that changes which cannot
be stored are soon dropped and counted, not piled up; the page still shows what waits. The thread
retries every RETRY_S and stores what waits as soon as a retry succeeds.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from pathlib import Path

from .history import MIB, HistoryCaps, HistoryEvent, HistoryPage, HistoryQuery, HistoryStore

log = logging.getLogger(__name__)

FLUSH_EVENTS = 16
QUEUE_MAX = 512  # changes waiting while the store works (about 1.5 MB of thumbnails at most)
RETRY_S = 5.0  # while degraded, try to write again this often
EXPIRE_EVERY_S = 60.0  # the age cap is applied this often, also when no change comes


class History:
    """The history of label changes: a queue the pipeline fills and a writer thread that stores it."""

    def __init__(
        self, path: Path | None, caps: HistoryCaps, flush_s: float = 5.0, flush_events: int = FLUSH_EVENTS
    ) -> None:
        """`path` None: kept in memory only (same caps), e.g. with [http] history = false."""
        self.store = HistoryStore(path, caps)
        self.flush_s = flush_s
        self.flush_events = flush_events
        self.hold_degraded = 2 * flush_events  # waiting changes kept while the store cannot write
        self._lock = threading.Lock()  # the queue, ids and counters; taken after _db_lock, never before
        self._db_lock = threading.Lock()  # the store (one SQLite connection)
        self._written = threading.Condition(self._lock)
        self._queued: collections.deque[HistoryEvent] = collections.deque()
        self._queued_since: float | None = None  # monotonic time the oldest waiting change came
        self._inflight: list[HistoryEvent] = []  # being written now
        self._next_id = 1
        self._unsaved_drops = 0  # dropped and not yet added to the counter on disk
        self._stored_upto = 0  # the newest id written
        self._sync_asked = 0  # sync() requests so far
        self._sync_served = 0  # the newest request a writer step has finished
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the pipeline's side -----------------------------------------------------------------------

    def add(
        self,
        at: float,
        region: str | None,
        label: str,
        class_index: int,
        score: float,
        previous: str | None,
        frame_seq: int,
        thumbnail: bytes | None,
    ) -> int:
        """Queue one change (no I/O); returns its id."""
        with self._lock:
            e = HistoryEvent(self._next_id, at, region, label, class_index, score, previous, frame_seq, thumbnail)
            self._next_id += 1
            self._queued.append(e)
            if self._queued_since is None:
                self._queued_since = time.monotonic()
            self._trim()
            wake = len(self._queued) >= self.flush_events
        if wake:
            self._wake.set()
        return e.id

    def _trim(self) -> None:
        """Under _lock: drop (and count) the oldest waiting changes beyond the queue's bound."""
        hold = QUEUE_MAX if self.store.problem is None else self.hold_degraded
        while len(self._queued) > hold:
            self._queued.popleft()
            self._unsaved_drops += 1

    # -- the thread --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (a corrupt file is set aside; a full or read-only disk degrades it) and start
        the writer."""
        with self._db_lock:
            if self.store.open():
                self.store.expire()
            with self._lock:
                self._renumber()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Store what waits (one try), close the store and join the writer within `timeout`."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("history: the writer did not stop within %.1f s; the last changes may be lost", timeout)

    def sync(self, timeout: float = 5.0) -> bool:
        """Ask the writer to store what waits now (a retry, when degraded) and wait for it; False: not
        stored (degraded, or `timeout`)."""
        with self._lock:
            self._sync_asked += 1
            asked, target = self._sync_asked, self._next_id - 1
        self._wake.set()
        with self._written:
            self._written.wait_for(lambda: self._sync_served >= asked, timeout)
            return self._stored_upto >= target and self.store.problem is None

    def _renumber(self) -> None:
        """Under both locks: ids continue above what the store handed out (also after a reopen)."""
        first = max(self._next_id, self.store.last_id + 1)
        if self._queued and self._queued[0].id <= self.store.last_id:
            self._queued = collections.deque(dataclasses.replace(e, id=first + i) for i, e in enumerate(self._queued))
            first += len(self._queued)
        self._next_id = first
        self._stored_upto = max(self._stored_upto, self.store.last_id)

    def _timeout(self) -> float:
        with self._lock:
            since = self._queued_since
        if self.store.problem is not None:
            return max(0.05, self._retry_at - time.monotonic())
        if since is None:
            return EXPIRE_EVERY_S
        return max(0.0, since + self.flush_s - time.monotonic())

    def _run(self) -> None:
        next_expire = time.monotonic() + EXPIRE_EVERY_S
        while not self._stopping.is_set():
            self._wake.wait(self._timeout())
            self._wake.clear()
            if self._stopping.is_set():
                break
            self._step()
            if time.monotonic() >= next_expire and self.store.problem is None:
                next_expire = time.monotonic() + EXPIRE_EVERY_S
                with self._db_lock:
                    self.store.expire()
        self._final()

    def _step(self) -> None:
        with self._lock:
            asked, n, since = self._sync_asked, len(self._queued), self._queued_since
        forced = asked > self._sync_served
        if self.store.problem is not None:
            if forced or time.monotonic() >= self._retry_at:
                self._retry()
        elif n and (forced or n >= self.flush_events or time.monotonic() - (since or 0.0) >= self.flush_s):
            self._flush_all()
        with self._written:
            self._sync_served = asked
            self._written.notify_all()

    def _retry(self) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        with self._db_lock:
            reopened = self.store.is_open or self.store.open()
            if reopened:
                with self._lock:
                    self._renumber()
        if not reopened:
            return
        if self._flush_once(1):  # one change and the drop counter: a small write that tells the disk works again
            self.store.recovered()
            self._flush_all()
        else:
            self._retry_at = time.monotonic() + RETRY_S

    def _flush_all(self) -> bool:
        """Write batches until nothing waits."""
        while True:
            with self._lock:
                if not self._queued:
                    return True
            if not self._flush_once():
                self._retry_at = time.monotonic() + RETRY_S
                return False

    def _flush_once(self, most: int | None = None) -> bool:
        """Write the oldest waiting changes (at most `most`, `flush_events` and a quarter of the WAL's
        share of the byte cap) and the drop counter in one transaction."""
        most = self.flush_events if most is None else most
        with self._db_lock:
            with self._lock:
                batch: list[HistoryEvent] = []
                budget = self.store.caps.wal_bytes // 4  # one transaction stays well inside the WAL's share
                while self._queued and len(batch) < most and (not batch or budget > 0):
                    e = self._queued.popleft()
                    budget -= len(e.thumbnail or b"")
                    batch.append(e)
                self._queued_since = time.monotonic() if self._queued else None
                self._inflight = batch
                drops = self._unsaved_drops
            ok = self.store.write(batch, drops)
            with self._written:
                self._inflight = []
                if ok:
                    self._unsaved_drops -= drops
                    if batch:
                        self._stored_upto = batch[-1].id
                else:
                    self._queued.extendleft(reversed(batch))
                    self._queued_since = time.monotonic()
                    self._trim()
                self._written.notify_all()
        return ok

    def _final(self) -> None:
        """On stop: one try to store what waits, then close; what could not be stored is counted."""
        if self.store.problem is not None:
            with self._db_lock:
                if not self.store.is_open:
                    self.store.open()
        self._flush_all()
        with self._db_lock, self._lock:
            lost = len(self._queued)
            if lost:
                self._unsaved_drops += lost
                self._queued.clear()
                log.warning("history: %d label changes could not be stored before stopping (%s)", lost,
                            self.store.problem)  # fmt: skip
            self.store.close()

    # -- the readers' side (HTTP threads) ----------------------------------------------------------

    def _unsaved(self) -> list[HistoryEvent]:
        with self._lock:
            return [*self._inflight, *self._queued]

    def query(self, q: HistoryQuery) -> HistoryPage:
        with self._db_lock:
            return self.store.query(q, self._unsaved())

    def thumbnail(self, event_id: int) -> bytes | None:
        for e in self._unsaved():
            if e.id == event_id:
                return e.thumbnail
        with self._db_lock:
            return self.store.thumbnail(event_id)

    def labels(self) -> dict[str, int]:
        """Label -> changes to it, stored and waiting."""
        with self._db_lock:
            out = collections.Counter(self.store.labels())
            out.update(e.label for e in self._unsaved())
        return dict(out)

    @property
    def latest_id(self) -> int:
        """The newest change's id (0: none yet); the page asks for the history again when it moves."""
        with self._lock:
            return self._next_id - 1

    @property
    def dropped(self) -> int:
        """Changes never stored: the counter on disk and those since its last write."""
        with self._lock:
            return self.store.stored_dropped + self._unsaved_drops

    def waiting(self) -> int:
        with self._lock:
            return len(self._queued) + len(self._inflight)

    def health(self) -> str:
        """The sink's words about its history, for /healthz and /api/state."""
        s = self.store
        if s.problem is not None:
            n = self.dropped
            return (f"history degraded ({s.problem}); {n} change{'' if n == 1 else 's'} not stored, "
                    f"{self.waiting()} waiting; retrying every {RETRY_S:g} s")  # fmt: skip
        if s.path is None:
            return f"history in memory, {s.count} changes (not kept over a restart)"
        cap = s.caps.max_bytes / MIB
        waiting = self.waiting()
        more = f" (+{waiting} waiting)" if waiting else ""
        return f"history {s.count} changes{more}, {s.size_bytes() / MIB:.1f} of {cap:g} MiB"

    def counters(self) -> dict[str, float]:
        s = self.store
        return {
            "history_events": float(s.count),
            "history_bytes": float(s.size_bytes()),
            "history_waiting": float(self.waiting()),
            "history_degraded": 1.0 if s.problem is not None else 0.0,
            "history_dropped_total": float(self.dropped),
            "history_evicted_total": float(sum(s.evicted.values())),
        }
