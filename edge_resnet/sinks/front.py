"""A bounded HTTP/1.0 front for the overlay, standard library only.

Why not `ThreadingHTTPServer`: it gives every connection a thread and reads headers without a
total limit or a deadline, so idle or slow clients exhaust threads, file descriptors and memory
before authentication is even looked at. Why not a server library: the device package stays at
numpy, OpenCV, paho and the interpreter, and what the overlay needs (a handful of GET routes) is
small enough to bound by hand.

How it is bounded:
- one thread (`http-front`) owns every socket that is still sending its request head, through a
  `selectors` loop: an idle or slow socket costs a file descriptor and at most `max_head_bytes`
  of buffer, never a thread, and no CPU while it sits there;
- the head must be complete within `head_timeout_s` and fit `max_head_bytes` and
  `max_header_lines` (else 408/431 and close); requests carry no body (GET/HEAD: else 413);
- at most `max_connections` sockets in all states: a new one closes the oldest socket still
  sending its head (idle and slow clients make room for real ones); when every slot is doing
  real work it gets a `503` and is closed;
- complete requests go to a fixed pool of worker threads (`workers`, plus one per MJPEG viewer
  slot); writes time out after `send_timeout_s`;
- `accept()` failing for lack of descriptors pauses accepting for a second instead of spinning;
- client disconnects are counted, not logged; unexpected handler errors are logged once a minute.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("edge_resnet.sinks.http")


@dataclass(frozen=True)
class Limits:
    """The front's caps. Sized far below the unit's LimitNOFILE, TasksMax and MemoryMax."""

    max_connections: int = 64  # sockets in all states (fds: the unit allows 1024)
    max_head_bytes: int = 16 * 1024  # request line + headers
    max_header_lines: int = 64
    head_timeout_s: float = 10.0  # the whole request head within this: slow and idle clients are closed
    send_timeout_s: float = 10.0  # a write that makes no progress this long drops the client
    workers: int = 4  # threads for ordinary requests
    stream_workers: int = 8  # extra threads, one per MJPEG viewer slot
    auth_failures_per_min: int = 10  # wrong credentials per source per minute before 429


@dataclass
class Accepted:
    """A connection whose request head is complete, handed to a worker."""

    sock: socket.socket
    addr: tuple[Any, ...]
    head: bytes


class _Pending:
    __slots__ = ("addr", "buf", "since", "sock")

    def __init__(self, sock: socket.socket, addr: tuple[Any, ...]) -> None:
        self.sock, self.addr = sock, addr
        self.buf = bytearray()
        self.since = time.monotonic()


_BODY = re.compile(rb"^(content-length:\s*0*[1-9]|transfer-encoding:)", re.IGNORECASE | re.MULTILINE)
Handle = Callable[[Accepted], None]


def _reply(sock: socket.socket, code: int, reason: str, extra: str = "") -> None:
    """Best effort, never blocks: a short error response before closing."""
    body = f"{reason}\n".encode()
    head = f"HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n{extra}"
    try:
        sock.setblocking(False)
        sock.send(head.encode() + b"Connection: close\r\n\r\n" + body)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class Front:
    """Accepts and reads request heads on one thread; runs `handle` on a fixed worker pool."""

    def __init__(self, host: str, port: int, handle: Handle, limits: Limits, tick: Callable[[], None]) -> None:
        self.limits = limits
        self._handle = handle
        self._tick = tick
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._lsock.bind((host, port))
            self._lsock.listen(128)
            self._lsock.setblocking(False)
        except OSError:
            self._lsock.close()
            raise
        self.port = int(self._lsock.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # oldest first; front thread only
        self._jobs: queue.Queue[Accepted | None] = queue.Queue()  # bounded by max_connections
        self._lock = threading.Lock()
        self._busy: set[socket.socket] = set()  # handed to workers
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self.stats = {
            "http_connections_total": 0,
            "http_rejected_total": 0,  # 503: every slot busy with real work
            "http_evicted_total": 0,  # idle/slow sockets closed to make room
            "http_head_timeouts_total": 0,
            "http_too_large_total": 0,
            "http_client_errors_total": 0,  # resets, broken pipes, send timeouts
            "http_accept_errors_total": 0,
        }
        self._errors_logged_at = -1e9

    # -- life cycle --------------------------------------------------------------------------------

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._busy)

    def serve(self) -> None:
        """Run until stop(): the accept/read loop on the calling thread, workers on their own."""
        n = self.limits.workers + self.limits.stream_workers
        self._workers = [threading.Thread(target=self._work, name=f"http-{i}", daemon=True) for i in range(n)]
        for t in self._workers:
            t.start()
        self._sel.register(self._lsock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        listening = True
        next_tick = 0.0
        try:
            while not self._stopping.is_set():
                for key, _ in self._sel.select(timeout=0.5):
                    if key.data == "listen":
                        listening = self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if not listening and now >= self._accept_paused_until:
                    self._sel.register(self._lsock, selectors.EVENT_READ, "listen")
                    listening = True
                if now >= next_tick:
                    next_tick = now + 1.0
                    self._expire(now)
                    self._tick()
        finally:
            self._close_all()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        with self._lock:
            busy = list(self._busy)
        for s in busy:  # wakes workers blocked in a send to a client that does not read
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for _ in self._workers:
            self._jobs.put(None)

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, end - time.monotonic()))

    def _close_all(self) -> None:
        for p in list(self._pending.values()):
            _close(p.sock)
        with self._lock:
            self._pending.clear()
        self._sel.close()
        _close(self._lsock)
        _close(self._wake_r)
        _close(self._wake_w)

    # -- the front thread --------------------------------------------------------------------------

    def _accept(self) -> bool:
        """Accept what is waiting; False when accepting is paused (out of file descriptors)."""
        for _ in range(64):
            try:
                sock, addr = self._lsock.accept()
            except BlockingIOError:
                return True
            except OSError as e:
                self.stats["http_accept_errors_total"] += 1
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._note_error(f"http: cannot accept connections ({e.strerror}); pausing accept for 1 s")
                    self._sel.unregister(self._lsock)
                    self._accept_paused_until = time.monotonic() + 1.0
                    return False
                continue  # ECONNABORTED and the like: that client is gone
            self.stats["http_connections_total"] += 1
            if self.open_connections() >= self.limits.max_connections and not self._evict_oldest():
                self.stats["http_rejected_total"] += 1
                _reply(sock, 503, "Service Unavailable: too many connections, try again later", "Retry-After: 5\r\n")
                _close(sock)
                continue
            sock.setblocking(False)
            p = _Pending(sock, addr)
            with self._lock:
                self._pending[sock.fileno()] = p
            self._sel.register(sock, selectors.EVENT_READ, p)
        return True

    def _evict_oldest(self) -> bool:
        """Close the oldest socket still sending its head, to make room; False if there is none."""
        if not self._pending:
            return False
        fd = next(iter(self._pending))
        self._drop(self._pending[fd])
        self.stats["http_evicted_total"] += 1
        return True

    def _drop(self, p: _Pending) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(p.sock)
        with self._lock:
            self._pending.pop(p.sock.fileno(), None)
        _close(p.sock)

    def _read(self, p: _Pending) -> None:
        try:
            data = p.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self.stats["http_client_errors_total"] += 1
            self._drop(p)
            return
        if not data:
            self._drop(p)
            return
        p.buf += data
        lim = self.limits
        end = p.buf.find(b"\r\n\r\n")
        size = end + 4 if end >= 0 else len(p.buf)
        if size > lim.max_head_bytes or p.buf.count(b"\n", 0, size) > lim.max_header_lines + 1:
            self.stats["http_too_large_total"] += 1
            _reply(p.sock, 431, "Request Header Fields Too Large")
            self._drop(p)
            return
        if end < 0:
            return
        head = bytes(p.buf[: end + 4])
        if _BODY.search(head):
            self.stats["http_too_large_total"] += 1
            _reply(p.sock, 413, "Content Too Large: requests carry no body here")
            self._drop(p)
            return
        self._sel.unregister(p.sock)
        with self._lock:
            self._pending.pop(p.sock.fileno(), None)
            self._busy.add(p.sock)
        self._jobs.put(Accepted(p.sock, p.addr, head))

    def _expire(self, now: float) -> None:
        """Close sockets whose head has not arrived within head_timeout_s (oldest first)."""
        while self._pending:
            p = next(iter(self._pending.values()))
            if now - p.since < self.limits.head_timeout_s:
                return
            self.stats["http_head_timeouts_total"] += 1
            _reply(p.sock, 408, "Request Timeout")
            self._drop(p)

    def _note_error(self, msg: str, exc_info: bool = False) -> None:
        """At most one such line a minute (logs on an SD card)."""
        now = time.monotonic()
        if now - self._errors_logged_at >= 60.0:
            self._errors_logged_at = now
            log.warning("%s (more within a minute are not logged)", msg, exc_info=exc_info)

    # -- workers -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                if job is not None:
                    self._finish(job.sock)
                return
            try:
                job.sock.setblocking(True)
                job.sock.settimeout(self.limits.send_timeout_s)
                self._handle(job)
            except OSError:  # resets, broken pipes, timeouts: the client's business, not a log line
                self.stats["http_client_errors_total"] += 1
            except Exception:
                self._note_error("http: request failed", exc_info=True)
            finally:
                self._finish(job.sock)

    def _finish(self, sock: socket.socket) -> None:
        with self._lock:
            self._busy.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        _close(sock)


class SocketWriter(io.BufferedIOBase):
    """`wfile` for a handler: every write goes straight to the socket (sendall, with its timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes


class AuthFailures:
    """Wrong credentials per source address: counted, throttled (429) past `limit` a minute, and
    logged once per source per minute (the first failure, then one summary line)."""

    WINDOW_S = 60.0
    MAX_SOURCES = 4096  # a bounded table, whatever the number of sources

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._by_source: OrderedDict[str, list[float]] = OrderedDict()  # source -> [since, failures, refused]
        self.failures = 0
        self.refused = 0

    def throttled(self, source: str) -> bool:
        """True (and counted) when `source` has used up its failures for this minute."""
        with self._lock:
            entry = self._by_source.get(source)
            if entry is None or entry[1] < self.limit or time.monotonic() - entry[0] >= self.WINDOW_S:
                return False
            entry[2] += 1
            self.refused += 1
            return True

    def failed(self, source: str) -> None:
        with self._lock:
            self.failures += 1
            now = time.monotonic()
            entry = self._by_source.get(source)
            if entry is None:
                if len(self._by_source) >= self.MAX_SOURCES:
                    self._by_source.popitem(last=False)
                self._by_source[source] = [now, 1, 0]
                log.warning(
                    "http: wrong credentials from %s; more failures from it are throttled after %d a minute "
                    "and summarised once a minute",
                    source,
                    self.limit,
                )
            else:
                entry[1] += 1

    def tick(self) -> None:
        """Front thread, every second: one summary line per source whose minute is over."""
        now = time.monotonic()
        with self._lock:
            done = [(s, e) for s, e in self._by_source.items() if now - e[0] >= self.WINDOW_S]
            for s, _ in done:
                del self._by_source[s]
        for source, (_, failures, refused) in done:
            if failures > 1 or refused:
                log.warning(
                    "http: %d wrong credentials from %s in the last minute; %d requests refused with 429",
                    int(failures),
                    source,
                    int(refused),
                )
