"""A bounded HTTP/1.0 front for the overlay, standard library only.

Why not `ThreadingHTTPServer`: it gives every connection a thread and reads headers and bodies
without a total limit or a deadline, so idle or slow clients exhaust threads, file descriptors and
memory before authentication is even looked at. Why not a server library: the device package stays
at numpy, OpenCV, paho and the interpreter, and what the overlay needs (a handful of GET routes, a
few POST routes whose body has a `Content-Length`) is small enough to bound by hand.

How it is bounded:
- one thread (`http-front`) owns every socket that is still sending its request head or body,
  through a `selectors` loop: an idle or slow socket costs a file descriptor and its buffer
  (`max_head_bytes` for a head), never a thread, and no CPU while it sits there;
- the head must be complete within `head_timeout_s` and fit `max_head_bytes` and
  `max_header_lines` (else 408/431 and close);
- only POST carries a body (GET, HEAD and the rest: else 413), and only with `Content-Length`:
  411 without it, 501 for `Transfer-Encoding` (no chunked bodies), 400 when it is not one number,
  413 above `max_body_bytes`, all said before a byte of the body is read; then the sink's `screen`
  (its auth, loopback and same-origin rules: 401/429/403) is asked, also before the body is read;
- the body must be complete within `body_timeout_s` of the head (else 408); all bodies being read
  or handled at once fit `max_body_total_bytes` (else 503), so bodies cost at most that much
  memory however many clients send them;
- a request refused while its body may still be coming is answered, then drained (discarded) for
  at most `DRAIN_S` and `DRAIN_BYTES`, so the client reads the answer instead of a reset;
- at most `max_connections` sockets in all states: a new one closes the oldest socket still
  sending its head or being drained (idle and slow clients make room for real ones); when every
  slot is doing real work (handled, or sending a body that passed the screen) it gets a `503` and
  is closed;
- complete requests (head and body) go to a fixed pool of worker threads (`workers`, plus one per
  MJPEG viewer slot); writes time out after `send_timeout_s`;
- `accept()` failing for lack of descriptors pauses accepting for a second instead of spinning;
- client disconnects are counted, not logged; unexpected handler errors are logged once a minute.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
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
from email.message import Message
from typing import Any

log = logging.getLogger("edge_resnet.sinks.http")

DRAIN_S = 2.0  # a refused request's body is read and discarded this long at most ...
DRAIN_BYTES = 1024 * 1024  # ... and this much at most, then the socket is closed


@dataclass(frozen=True)
class Limits:
    """The front's caps. Sized far below the unit's LimitNOFILE, TasksMax and MemoryMax."""

    max_connections: int = 64  # sockets in all states (fds: the unit allows 1024)
    max_head_bytes: int = 16 * 1024  # request line + headers
    max_header_lines: int = 64
    head_timeout_s: float = 10.0  # the whole request head within this: slow and idle clients are closed
    max_body_bytes: int = 8 * 1024 * 1024  # one POST body (an exported ZIP of a region's examples)
    max_body_total_bytes: int = 16 * 1024 * 1024  # all bodies being read or handled at once (MemoryMax=512M)
    body_timeout_s: float = 30.0  # the whole body within this after the head: slow bodies are closed
    send_timeout_s: float = 10.0  # a write that makes no progress this long drops the client
    workers: int = 4  # threads for ordinary requests
    stream_workers: int = 8  # extra threads, one per MJPEG viewer slot
    auth_failures_per_min: int = 10  # wrong credentials per source per minute before 429


@dataclass
class Accepted:
    """A connection whose request head (and body, for a POST) is complete, handed to a worker."""

    sock: socket.socket
    addr: tuple[Any, ...]
    head: bytes
    body: bytes = b""


@dataclass(frozen=True)
class Refusal:
    """A short error answer: status, its reason phrase, a one-line body and extra headers."""

    code: int
    reason: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


# the sink's rules for a POST (auth, loopback, same origin), asked on the front thread before its
# body is read: the parsed headers and the client's address; a Refusal, or None to go on
Screen = Callable[[Message, tuple[Any, ...]], Refusal | None]

_HEAD, _BODY_STATE, _DRAINING = 0, 1, 2


class _Pending:
    __slots__ = ("addr", "body", "buf", "deadline", "got", "head", "need", "since", "sock", "state")

    def __init__(self, sock: socket.socket, addr: tuple[Any, ...], head_timeout_s: float) -> None:
        self.sock, self.addr = sock, addr
        self.buf = bytearray()
        self.since = time.monotonic()
        self.deadline = self.since + head_timeout_s
        self.state = _HEAD
        self.head = b""
        self.body = bytearray()  # a POST's body, allocated at its Content-Length once admitted
        self.need = 0  # that Content-Length (reserved in the front's body budget while reading)
        self.got = 0  # bytes of body (or drained bytes) so far


_BODY = re.compile(rb"^(content-length:\s*0*[1-9]|transfer-encoding:)", re.IGNORECASE | re.MULTILINE)
_DIGITS = re.compile(r"[0-9]+")
Handle = Callable[[Accepted], None]


def _reply(sock: socket.socket, code: int, reason: str, extra: str = "", body: str | None = None) -> None:
    """Best effort, never blocks: a short error response before closing."""
    data = f"{reason if body is None else body}\n".encode()
    ctype = "Content-Type: text/plain; charset=utf-8"
    head = f"HTTP/1.0 {code} {reason}\r\n{ctype}\r\nContent-Length: {len(data)}\r\n{extra}"
    try:
        sock.setblocking(False)
        sock.send(head.encode() + b"Connection: close\r\n\r\n" + data)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def post_framing(head: bytes, limits: Limits) -> tuple[int, Message, bool] | Refusal:
    """A POST head's body length, its headers and whether it asks for `100 Continue`; or why it is
    refused (before any of the body is read)."""
    line, _, rest = head.partition(b"\r\n")
    words = line.split()
    try:
        headers: Message = http.client.parse_headers(io.BytesIO(rest))
    except http.client.HTTPException:
        return Refusal(400, "Bad Request", "Bad Request: malformed headers")
    if headers.get_all("Transfer-Encoding"):
        msg = "Transfer-Encoding (chunked) is not supported here; send the body with Content-Length"
        return Refusal(501, "Not Implemented", msg)
    lengths = {str(v).strip() for v in headers.get_all("Content-Length") or ()}
    if not lengths:
        return Refusal(411, "Length Required", "a POST needs a Content-Length header (chunked bodies are not taken)")
    value = lengths.pop()
    if lengths or not _DIGITS.fullmatch(value):
        return Refusal(400, "Bad Request", "Bad Request: Content-Length is not one number")
    n = int(value) if len(value) <= 18 else limits.max_body_bytes + 1
    if n > limits.max_body_bytes:
        return Refusal(
            413, "Content Too Large", f"Content Too Large: a body of {n} bytes; at most {limits.max_body_bytes} here"
        )
    expect = str(headers.get("Expect", "")).strip().lower() == "100-continue"
    return n, headers, expect and len(words) == 3 and words[2] == b"HTTP/1.1"


class Front:
    """Accepts and reads request heads and bodies on one thread; runs `handle` on a fixed worker pool."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Handle,
        limits: Limits,
        tick: Callable[[], None],
        screen: Screen | None = None,
    ) -> None:
        self.limits = limits
        self._handle = handle
        self._tick = tick
        self._screen = screen
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
        self._body_bytes = 0  # reserved by bodies being read or handled (under _lock)
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self.stats = {
            "http_connections_total": 0,
            "http_rejected_total": 0,  # 503: every slot busy with real work, or the body budget used up
            "http_evicted_total": 0,  # idle/slow sockets closed to make room
            "http_head_timeouts_total": 0,
            "http_body_timeouts_total": 0,
            "http_too_large_total": 0,
            "http_bodies_total": 0,  # POST bodies read completely and handed to a worker
            "http_client_errors_total": 0,  # resets, broken pipes, send timeouts
            "http_accept_errors_total": 0,
        }
        self._errors_logged_at = -1e9

    # -- life cycle --------------------------------------------------------------------------------

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._busy)

    def body_bytes(self) -> int:
        """Bytes reserved by request bodies being read or handled (at most max_body_total_bytes)."""
        with self._lock:
            return self._body_bytes

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
            p = _Pending(sock, addr, self.limits.head_timeout_s)
            with self._lock:
                self._pending[sock.fileno()] = p
            self._sel.register(sock, selectors.EVENT_READ, p)
        return True

    def _evict_oldest(self) -> bool:
        """Close the oldest socket still sending its head (or being drained), to make room; False if
        there is none (a body that passed the screen is real work, bounded by its own deadline)."""
        for p in self._pending.values():
            if p.state != _BODY_STATE:
                self._drop(p)
                self.stats["http_evicted_total"] += 1
                return True
        return False

    def _drop(self, p: _Pending) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(p.sock)
        with self._lock:
            self._pending.pop(p.sock.fileno(), None)
            if p.state == _BODY_STATE:
                self._body_bytes -= p.need
        p.state, p.body = _DRAINING, bytearray()
        _close(p.sock)

    def _refuse(self, p: _Pending, r: Refusal) -> None:
        """Answer `r`, then drain what the client may still be sending (its body) before closing: a
        socket closed with unread data sends a reset, which can destroy the answer on its way."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in r.headers)
        _reply(p.sock, r.code, r.reason, extra, r.message)
        if p.state == _BODY_STATE:
            with self._lock:
                self._body_bytes -= p.need
        p.state, p.body, p.buf, p.got = _DRAINING, bytearray(), bytearray(), 0
        p.deadline = time.monotonic() + DRAIN_S
        try:
            p.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(p)

    def _read(self, p: _Pending) -> None:
        if p.state == _BODY_STATE:
            self._read_body(p)
            return
        try:
            data = p.sock.recv(65536 if p.state == _DRAINING else 4096)
        except BlockingIOError:
            return
        except OSError:
            if p.state == _HEAD:
                self.stats["http_client_errors_total"] += 1
            self._drop(p)
            return
        if not data:
            self._drop(p)
            return
        if p.state == _DRAINING:
            p.got += len(data)
            if p.got > DRAIN_BYTES:
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
        if head.startswith(b"POST "):  # methods are case-sensitive
            self._start_body(p, head, bytes(p.buf[end + 4 :]))
            return
        if _BODY.search(head):
            self.stats["http_too_large_total"] += 1
            self._refuse(p, Refusal(413, "Content Too Large", "Content Too Large: only POST carries a body here"))
            return
        self._hand_off(p, head, b"")

    def _start_body(self, p: _Pending, head: bytes, early: bytes) -> None:
        """A POST's head is complete: check its framing and ask the screen, all before reading its
        body; then reserve the body's bytes and read it (`early`: what came with the head)."""
        lim = self.limits
        framing = post_framing(head, lim)
        if isinstance(framing, Refusal):
            if framing.code == 413:
                self.stats["http_too_large_total"] += 1
            self._refuse(p, framing)
            return
        n, headers, expect = framing
        if self._screen is not None:
            try:
                refusal = self._screen(headers, p.addr)
            except Exception:
                self._note_error("http: checking a request failed", exc_info=True)
                refusal = Refusal(500, "Internal Server Error", "internal error; see the device log")
            if refusal is not None:
                self._refuse(p, refusal)
                return
        with self._lock:
            admitted = self._body_bytes + n <= lim.max_body_total_bytes
            if admitted:
                self._body_bytes += n
        if not admitted:
            self.stats["http_rejected_total"] += 1
            msg = "Service Unavailable: busy reading other uploads, try again later"
            self._refuse(p, Refusal(503, "Service Unavailable", msg, (("Retry-After", "5"),)))
            return
        p.state, p.head, p.need, p.buf = _BODY_STATE, head, n, bytearray()
        p.body = bytearray(n)
        p.got = min(n, len(early))
        p.body[: p.got] = early[: p.got]
        p.deadline = time.monotonic() + lim.body_timeout_s
        if p.got >= n:
            self._hand_off(p, head, bytes(p.body))
        elif expect:  # HTTP/1.1 clients such as curl wait for this (or a second) before the body
            with contextlib.suppress(OSError):
                p.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_body(self, p: _Pending) -> None:
        try:
            k = p.sock.recv_into(memoryview(p.body)[p.got :], min(p.need - p.got, 256 * 1024))
        except BlockingIOError:
            return
        except OSError:
            self.stats["http_client_errors_total"] += 1
            self._drop(p)
            return
        if k == 0:  # the client gave up before sending all of it
            self._drop(p)
            return
        p.got += k
        if p.got >= p.need:
            self._hand_off(p, p.head, bytes(p.body))

    def _hand_off(self, p: _Pending, head: bytes, body: bytes) -> None:
        """The request is complete: to a worker (a body's reservation goes with it until it is done)."""
        self._sel.unregister(p.sock)
        with self._lock:
            self._pending.pop(p.sock.fileno(), None)
            self._busy.add(p.sock)
        if p.state == _BODY_STATE:
            self.stats["http_bodies_total"] += 1
        p.body = bytearray()
        self._jobs.put(Accepted(p.sock, p.addr, head, body))

    def _expire(self, now: float) -> None:
        """Close sockets whose head (head_timeout_s) or body (body_timeout_s) is late, and drained
        sockets whose time is up."""
        for p in [p for p in self._pending.values() if now >= p.deadline]:
            if p.state == _HEAD:
                self.stats["http_head_timeouts_total"] += 1
                _reply(p.sock, 408, "Request Timeout")
                self._drop(p)
            elif p.state == _BODY_STATE:
                self.stats["http_body_timeouts_total"] += 1
                self._refuse(p, Refusal(408, "Request Timeout", "Request Timeout: the body came too slowly"))
            else:
                self._drop(p)

    def note_error(self, msg: str, exc_info: bool = False) -> None:
        """At most one such line a minute (logs on an SD card); shared by the front and the routes."""
        now = time.monotonic()
        with self._lock:
            if now - self._errors_logged_at < 60.0:
                return
            self._errors_logged_at = now
        log.warning("%s (more within a minute are not logged)", msg, exc_info=exc_info)

    _note_error = note_error

    # -- workers -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                if job is not None:
                    self._finish(job)
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
                self._finish(job)

    def _finish(self, job: Accepted) -> None:
        with self._lock:
            self._busy.discard(job.sock)
            self._body_bytes -= len(job.body)
        with contextlib.suppress(OSError):
            job.sock.shutdown(socket.SHUT_WR)
        _close(job.sock)


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
