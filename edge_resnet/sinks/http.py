"""HTTP overlay sink: live annotated MJPEG, snapshot, state JSON, /healthz and Prometheus /metrics;
and the writing routes (teaching from the page) through a `Writer` someone else implements.

Served by `front.Front`, a bounded standard-library front (see there for the limits and why);
routes are `_Handler` methods, so a new endpoint is one more entry in its route table.

The page's history of label changes (`timeline.Timeline` over `historywriter.History`, a bounded file
in the state directory that survives restarts) is served as /api/events (JSON, filtered and paged:
see timeline.py for the query string), /api/events.csv (the same filter, streamed, no thumbnails),
/api/events/labels (the labels in it) and /api/events/<id>.jpg (one change's thumbnail).

A POST (`/api/...`, to `Writer.post`) is refused, in this order, before its body is even read:
with a password configured, without the right basic auth (401; 429 past the per-source limit,
shared with GET); with no password, from a client that is not loopback (403), or whose `Host` does
not name loopback (403: DNS rebinding); from another origin (403: an `Origin` that is not
`http(s)://<Host>`, or a `Sec-Fetch-Site` other than `same-origin`/`none`).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hmac
import io
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from email.message import Message
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import cv2

from ..annotate import annotate_observation, annotate_regions
from ..errors import ConfigError
from ..history import MIB, HistoryCaps
from ..historywriter import History
from ..observation import Observation, Status, observation_json
from ..sinkconfig import HttpConfig, parse_listen
from .base import SinkContext, StatusFn
from .front import Accepted, AuthFailures, Front, Limits, Refusal, SocketWriter
from .prometheus import prometheus_text
from .timeline import QueryError, Timeline, parse_query

log = logging.getLogger(__name__)

MAX_STREAM_CLIENTS = Limits().stream_workers  # more viewers get 503: each one holds a worker thread
MAX_STREAMS_PER_SOURCE = 3  # one address (8 slow readers from one attacker) cannot hold every viewer slot
SEND_TIMEOUT_S = Limits().send_timeout_s  # a client that takes no data for this long is dropped
BIND_RETRY_MAX_S = 10.0  # capped backoff while the port is in use

Reply = tuple[int, str, bytes]  # status, content type, body
HISTORY_FILE = "history.sqlite"  # in the state directory
THUMB_CACHE = "private, max-age=86400, immutable"  # an id's thumbnail never changes


class Writer(Protocol):
    """The overlay's writing routes (teaching), implemented elsewhere; called on HTTP worker threads
    after the sink's guards (auth, loopback without a password, same origin)."""

    def post(self, path: str, query: dict[str, str], body: bytes, content_type: str) -> Reply:
        """A POST under /api/: the complete body (at most Limits.max_body_bytes)."""
        ...

    def get(self, path: str, query: dict[str, str]) -> Reply | None:
        """A GET under /api/regions/ (after the GET auth check); None: not mine (404)."""
        ...


CROSS_ORIGIN = Refusal(403, "Forbidden", "cross-origin request refused")
_SAME_SITE_OK = ("same-origin", "none")


def _loopback_ip(text: str) -> bool:
    """127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z); a name is not an address here."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _loopback_host(host: str) -> bool:
    """A `Host` header naming this machine's loopback: localhost, *.localhost, 127.x, [::1]."""
    h = host.strip().lower()
    if h.startswith("["):
        name = h[1 : h.find("]")] if "]" in h else h
    else:
        name = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    name = name.rstrip(".")
    return name == "localhost" or name.endswith(".localhost") or _loopback_ip(name)


def _cross_origin(headers: Message) -> bool:
    """A browser's request from another origin: `Origin` present and not http(s)://<Host>, or
    `Sec-Fetch-Site` present and not same-origin/none. curl and scripts send neither."""
    origin, host = headers.get("Origin"), headers.get("Host")
    if origin is not None:
        o, h = str(origin).strip().lower(), str(host or "").strip().lower()
        if not h or o not in (f"http://{h}", f"https://{h}"):
            return True
    site = headers.get("Sec-Fetch-Site")
    return site is not None and str(site).strip().lower() not in _SAME_SITE_OK


def state_document(obs: Observation | None, status: Status | None, fps: float | None) -> dict[str, Any]:
    """What /api/state returns (and what the page shows)."""
    doc: dict[str, Any] = {**observation_json(obs), "fps": fps}
    if status is not None:
        doc.update(
            healthy=status.healthy,
            reason=status.reason,
            device_id=status.labels.get("device_id"),
            runtime=status.labels.get("device"),
            source=status.labels.get("source"),
        )
    else:
        doc.update(healthy=False, reason="status unavailable")
    return doc


class _Server:
    """What a handler sees as `self.server`: the sink (the front owns the sockets)."""

    def __init__(self, sink: HttpSink) -> None:
        self.sink = sink


class _Handler(BaseHTTPRequestHandler):
    """One request, on a front worker thread; the head was read (and bounded) by the front."""

    server: _Server  # type: ignore[assignment]
    server_version = "edge-resnet"
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        job: Accepted = self.request
        self.connection = job.sock
        self.rfile = io.BytesIO(job.head)
        self.wfile = SocketWriter(job.sock)
        self.body = job.body  # a POST's complete body, read by the front

    def finish(self) -> None:
        self.rfile.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        sink = self.server.sink
        sink.requests += 1
        url = urlsplit(self.path)
        path = url.path
        refusal = sink.auth_refusal(self.headers, str(self.client_address[0]))
        self.authorised = refusal is None
        if refusal is not None and (refusal.code == 429 or path != "/healthz"):
            self._refuse(refusal)
            return
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        if path.startswith("/api/regions/"):
            writer = sink.writer
            query = self.query
            self._write_reply(None if writer is None else (lambda: writer.get(path, query)), f"GET {path}")
            return
        if path.startswith("/api/events/"):
            with contextlib.suppress(OSError):
                self._event_item(path.removeprefix("/api/events/"))
            return
        routes = {
            "/": self._index,
            "/index.html": self._index,
            "/stream.mjpg": self._stream,
            "/snapshot.jpg": self._snapshot,
            "/api/state": self._state,
            "/api/events": self._events,
            "/api/events.csv": self._events_csv,
            "/healthz": self._healthz,
            "/metrics": self._metrics,
        }
        handler = routes.get(path)
        if handler is None:
            self.send_response(404)
            self._body(
                b"not found; try / /stream.mjpg /snapshot.jpg /api/state /api/events /healthz /metrics\n",
                "text/plain; charset=utf-8",
                sent=True,
            )
            return
        with contextlib.suppress(OSError):  # the client went away or stopped reading: counted, not logged
            handler()

    def do_HEAD(self) -> None:  # probes and link checkers
        self.do_GET()

    def do_POST(self) -> None:
        """The writing routes: the sink's guards (the front asked them too, before reading the body),
        then `Writer.post` for paths under /api/."""
        sink = self.server.sink
        sink.requests += 1
        refusal = sink.write_refusal(self.headers, self.client_address)
        if refusal is not None:
            self._refuse(refusal)
            return
        url = urlsplit(self.path)
        path, writer = url.path, sink.writer
        if writer is None or not path.startswith("/api/"):
            self._write_reply(None, f"POST {path}")
            return
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        ctype = str(self.headers.get("Content-Type", ""))
        self._write_reply(lambda: writer.post(path, query, self.body, ctype), f"POST {path}")

    def _refuse(self, r: Refusal) -> None:
        self.send_response(r.code)
        for k, v in r.headers:
            self.send_header(k, v)
        self._body(f"{r.message}\n".encode(), "text/plain; charset=utf-8", sent=True)

    def _write_reply(self, call: Callable[[], Reply | None] | None, what: str) -> None:
        """The writer's answer with its status, type and body; 404 without a writer or when it says
        None; 500 (logged at most once a minute) when it raises or answers nonsense."""
        try:
            reply = None if call is None else call()
            if reply is not None:
                code, ctype, body = reply
                if not (isinstance(code, int) and 200 <= code <= 599 and isinstance(body, bytes | bytearray)):
                    raise TypeError(f"the writer answered {type(code).__name__} {code!r} with {type(body).__name__}")
                if not isinstance(ctype, str) or not ctype.isprintable():
                    raise TypeError(f"the writer answered the content type {ctype!r}")
        except Exception:
            self.server.sink.writer_failed(what)
            self._body(f"internal error in {what}; see the device log\n".encode(), "text/plain; charset=utf-8", 500)
            return
        with contextlib.suppress(OSError):  # the client went away: counted by the front, not logged
            if reply is None:
                self._body(f"not found: {what}\n".encode(), "text/plain; charset=utf-8", 404)
            else:
                self._body(bytes(body), ctype, code)

    def _body(self, body: bytes, ctype: str, code: int = 200, sent: bool = False, cache: str = "no-store") -> None:
        if not sent:
            self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _index(self) -> None:
        self._body(self.server.sink.index_html, "text/html; charset=utf-8")

    def _state(self) -> None:
        doc = self.server.sink.state()
        self._body(json.dumps(doc).encode(), "application/json")

    def _events(self) -> None:
        """A page of the history as JSON; 400 and the reason for a bad query string."""
        try:
            doc = self.server.sink.timeline.document(self.query)
        except QueryError as e:
            self._body(f"{e}\n".encode(), "text/plain; charset=utf-8", 400)
            return
        self._body(json.dumps(doc).encode(), "application/json")

    def _events_csv(self) -> None:
        """The history as CSV, streamed in chunks (HTTP/1.0: the body ends when the connection closes)."""
        sink = self.server.sink
        try:
            q = parse_query(self.query, csv_default=True)
        except QueryError as e:
            self._body(f"{e}\n".encode(), "text/plain; charset=utf-8", 400)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/csv; charset=utf-8")
        name = f"{sink.device_id or 'edge-resnet'}-history.csv"
        self.send_header("Content-Disposition", f'attachment; filename="{name}"')
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command == "HEAD":
            return
        for chunk in sink.timeline.csv_chunks(q):
            self.wfile.write(chunk)

    def _event_item(self, name: str) -> None:
        """/api/events/labels, or /api/events/<id>.jpg: a change's thumbnail (404 once evicted)."""
        timeline = self.server.sink.timeline
        if name == "labels":
            self._body(json.dumps(timeline.labels_document()).encode(), "application/json")
            return
        stem = name.removesuffix(".jpg")
        ok = name.endswith(".jpg") and re.fullmatch(r"[0-9]{1,18}", stem) is not None
        jpeg = timeline.history.thumbnail(int(stem)) if ok else None
        if jpeg is None:
            self._body(b"no such change in the history (evicted, or never had a thumbnail)\n",
                       "text/plain; charset=utf-8", 404)  # fmt: skip
            return
        self._body(jpeg, "image/jpeg", cache=THUMB_CACHE)

    def _healthz(self) -> None:
        """200 "ok" when frames flow, else 503 and the reason; then one `sink: words` line per sink
        (only for an authorised client when basic auth is on: they name the broker). Degraded keeps
        200 and makes the first line `degraded: <why>`: the pipeline's (the Edge TPU failed and its CPU
        twin classifies; the daemon tries the Edge TPU again every minute, and a restart brings no
        accelerator back), else a sink's summary (e.g. MQTT never connected: a config error a restart
        cannot fix). A probe that restarted on it would only lose the frames of the restart."""
        from .base import DEGRADED, degraded_summary  # (here: this method is all issue 22 touches in this file)

        sink = self.server.sink
        st = sink.status()
        words = sink.sinks()
        degraded = [s for s in map(degraded_summary, words.values()) if s is not None]
        if st.reason.startswith(DEGRADED):  # the pipeline's own: "degraded: Edge TPU failed (...); ..."
            degraded.insert(0, st.reason)
        lines = [(degraded[0] if degraded else "ok") if st.healthy else st.reason]
        if self.authorised:
            lines += [f"{name}: {w}" for name, w in words.items()]
        self._body(("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8", 200 if st.healthy else 503)

    def _metrics(self) -> None:
        sink = self.server.sink
        text = prometheus_text(sink.status(), sink.counters())
        self._body(text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _snapshot(self) -> None:
        jpeg = self.server.sink.jpeg()
        if jpeg is None:
            self._body(b"no frame yet\n", "text/plain; charset=utf-8", 503)
        else:
            self._body(jpeg[1], "image/jpeg")

    def _stream(self) -> None:
        sink = self.server.sink
        source = self.client_address[0]
        if not sink.enter_stream(source):
            self._body(b"too many stream viewers; try again later\n", "text/plain; charset=utf-8", 503)
            return
        try:
            self.connection.settimeout(SEND_TIMEOUT_S)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            self.end_headers()
            if self.command == "HEAD":
                return
            interval = 1.0 / sink.cfg.stream_fps
            last_seq = -1
            while not sink.stopping.is_set():
                t0 = time.monotonic()
                jpeg = sink.wait_jpeg(last_seq, timeout=1.0)
                if jpeg is None:
                    continue
                last_seq, data = jpeg
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n"
                )
                self.wfile.flush()
                left = interval - (time.monotonic() - t0)
                if left > 0:
                    sink.stopping.wait(left)
        finally:
            sink.leave_stream(source)


class HttpSink:
    """The live overlay. `publish` keeps a reference to the newest observation (no work on the
    pipeline thread); annotation and JPEG encoding happen on HTTP threads, at most `stream_fps` times
    a second however many viewers there are, and each viewer gets the newest frame.

    A port in use (or an address not yet available at boot) is not fatal: it is logged once with the
    fix, reported by `healthy()`, and the bind is retried with capped backoff until it works.
    """

    name = "http"

    def __init__(
        self,
        cfg: HttpConfig,
        status: StatusFn,
        sink_health: Callable[[], dict[str, str]] | None = None,
        *,
        limits: Limits | None = None,
        device_id: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """`sink_health` (optional, e.g. Pipeline.sink_health): name -> each sink's own words, shown by
        /healthz under the first line and in /api/state; a broker that is away is reported there.
        `limits`: the front's caps (tests make them small). `state_dir`: where the history of label
        changes is kept (None, or [http] history = false: in memory only)."""
        self.cfg = cfg
        self.limits = limits or Limits()
        self.device_id = device_id
        self._status = status
        self._sink_health = sink_health
        self.host, self.port = parse_listen(cfg.listen)
        self._auth: bytes | None = None
        if cfg.username is not None:
            password = os.environ.get(cfg.password_env)
            if not password:
                raise ConfigError(
                    f"[http] username is set but the environment variable {cfg.password_env} is empty; "
                    "set the password there, or remove username to turn basic auth off"
                )
            self._auth = b"Basic " + base64.b64encode(f"{cfg.username}:{password}".encode())
        self.index_html = resources.files("edge_resnet").joinpath("static/index.html").read_bytes()
        self.auth_failures = AuthFailures(self.limits.auth_failures_per_min)
        self.stopping = threading.Event()
        self._server: Front | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._latest: Observation | None = None
        self._regions: dict[str, Observation] = {}  # [[region]] name -> its newest observation
        self._parts: frozenset[str | None] | None = None  # the regions that run (set_regions); None: never told
        self._fps: float | None = None
        self._last_at: float | None = None
        self._enc_lock = threading.Lock()
        self._enc: tuple[int, bytes] | None = None
        self._enc_at = 0.0
        self._bind_error: str | None = None
        caps = HistoryCaps(cfg.history_max_events, int(cfg.history_max_mib * MIB), cfg.history_max_age_days * 86400)
        path = state_dir / HISTORY_FILE if state_dir is not None and cfg.history else None
        self.history = History(path, caps, flush_s=cfg.history_flush_s)  # opened by start()
        self.timeline = Timeline(self.history)  # label changes in and out (/api/events)
        self.clients = 0
        self._streams_by_source: dict[str, int] = {}
        self.encoded = 0
        self.requests = 0
        self._writer: Writer | None = None
        self.writer_errors = 0

    # -- Sink protocol --

    def start(self) -> None:
        if self._auth is None and self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "http: the overlay on %s:%d is open to the network without a password; set [http] username "
                "and the password in %s",
                self.host,
                self.port,
                self.cfg.password_env,
            )
        self.history.start()
        self.stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="http-sink", daemon=True)
        self._thread.start()

    def set_regions(self, names: Sequence[str]) -> None:
        """The `[[region]]` names that run now (none: the whole frame), as the daemon says at start and after
        each reload: a removed region leaves the page, /api/state and the overlay's boxes at once, and its
        last frames (still in flight) are not shown again. Its history stays (it happened)."""
        parts: frozenset[str | None] = frozenset(names) if names else frozenset({None})
        with self._new_frame:
            self._parts = parts
            self._regions = {n: o for n, o in self._regions.items() if n in parts}
            if self._latest is not None and self._latest.region not in parts:
                self._latest = None  # the newest frame came from a part that is gone

    def publish(self, obs: Observation) -> None:
        """Pipeline thread: O(1), no copies; the only encoding is a thumbnail when the label changes."""
        parts = self._parts
        if parts is not None and obs.region not in parts:
            return  # a part that no longer runs (see set_regions)
        self.timeline.add(obs)
        with self._new_frame:
            t = obs.classified_at
            if obs.region is not None:
                self._regions[obs.region] = obs
            new_frame = self._latest is None or obs.frame.seq != self._latest.frame.seq
            if new_frame and self._last_at is not None and t > self._last_at:  # regions: one frame, many
                inst = 1.0 / (t - self._last_at)
                self._fps = inst if self._fps is None else 0.9 * self._fps + 0.1 * inst
            if new_frame:
                self._last_at = t
            self._latest = obs
            self._new_frame.notify_all()

    def stop(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        self.stopping.set()
        with self._new_frame:
            self._new_frame.notify_all()
        server = self._server
        if server is not None:
            server.stop()  # closes every socket; workers blocked in a send wake up
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if server is not None:
            server.join(max(0.1, deadline - time.monotonic()))
        self.history.stop(max(0.5, deadline - time.monotonic()))  # stores what waits

    def healthy(self) -> tuple[bool, str]:
        """Healthy however the history fares (a full disk degrades it, not the daemon); its words say."""
        history = self.history.health()
        if self._bind_error is not None:
            return True, f"{self._bind_error}; {history}"
        if self._server is None:
            return True, f"http starting; {history}"
        return True, f"http serving on {self.url}; {history}"

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.bound_port}/"

    @property
    def bound_port(self) -> int:
        """The real port (useful with port 0 in tests)."""
        return self._server.port if self._server is not None else self.port

    @property
    def auth_required(self) -> bool:
        return self._auth is not None

    def counters(self) -> dict[str, float]:
        out = {
            "http_stream_clients": float(self.clients),
            "http_frames_encoded_total": float(self.encoded),
            "http_requests_total": float(self.requests),
            "http_auth_failures_total": float(self.auth_failures.failures),
            "http_auth_throttled_total": float(self.auth_failures.refused),
            "http_writer_errors_total": float(self.writer_errors),
            **self.history.counters(),
        }
        server = self._server
        if server is not None:
            out["http_open_connections"] = float(server.open_connections())
            out["http_body_bytes"] = float(server.body_bytes())
            out.update({k: float(v) for k, v in server.stats.items()})
        return out

    # -- used by the request handler (HTTP threads) --

    def status(self) -> Status:
        try:
            return self._status()
        except Exception as e:  # someone else's code: report it instead of failing the request
            return Status(False, f"status unavailable ({e})")

    def state(self) -> dict[str, Any]:
        with self._lock:
            obs, fps, regions = self._latest, self._fps, dict(self._regions)
        doc = state_document(None if regions else obs, self.status(), round(fps, 2) if fps is not None else None)
        if regions:
            doc["regions"] = {name: observation_json(o) for name, o in sorted(regions.items())}
        if self.device_id is not None:
            doc["device_id"] = self.device_id
        doc["sinks"] = self.sinks()
        doc["timeline_seq"] = self.timeline.seq  # the page fetches /api/events only when this moves
        return doc

    def sinks(self) -> dict[str, str]:
        if self._sink_health is None:
            return {}
        try:
            return dict(self._sink_health())
        except Exception as e:
            return {"sinks": f"unavailable ({e})"}

    def authorized(self, header: str | None) -> bool:
        if self._auth is None:
            return True
        return header is not None and hmac.compare_digest(header.encode(), self._auth)

    # -- the writing routes (teaching) --

    def set_writer(self, writer: Writer | None) -> None:
        """Who answers POST /api/... and GET /api/regions/...; None: those are 404."""
        self._writer = writer

    @property
    def writer(self) -> Writer | None:
        return self._writer

    def auth_refusal(self, headers: Message, source: str) -> Refusal | None:
        """Basic auth, for GET and POST alike: 429 while `source` is throttled (wrong passwords are
        counted per source, whatever the method), 401 without the right credentials, else None."""
        if self._auth is None:
            return None
        if self.auth_failures.throttled(source):
            return Refusal(
                429, "Too Many Requests", "too many wrong passwords; try again in a minute", (("Retry-After", "60"),)
            )
        header = headers.get("Authorization")
        if self.authorized(None if header is None else str(header)):
            return None
        if header is not None:
            self.auth_failures.failed(source)
        return Refusal(
            401,
            "Unauthorized",
            "authentication required",
            (("WWW-Authenticate", 'Basic realm="edge-resnet", charset="UTF-8"'),),
        )

    def write_refusal(self, headers: Message, addr: tuple[Any, ...]) -> Refusal | None:
        """Why a writing request (POST) is refused, or None: (a) with a password, basic auth (401/429);
        (b) without one, only loopback clients asking for a loopback Host (403); (c) same origin (403).
        The front asks this before reading the body; do_POST asks again."""
        source = str(addr[0])
        if self._auth is not None:
            refusal = self.auth_refusal(headers, source)
            if refusal is not None:
                return refusal
        else:
            host = headers.get("Host")
            if not _loopback_ip(source) or (host is not None and not _loopback_host(str(host))):
                return Refusal(
                    403,
                    "Forbidden",
                    "without a password, teaching answers only on this machine (http://127.0.0.1 or localhost); "
                    f"set [http] username and the password in {self.cfg.password_env} to teach from another machine",
                )
        if _cross_origin(headers):
            return CROSS_ORIGIN
        return None

    def writer_failed(self, what: str) -> None:
        """In an `except` block: the writer raised; counted, and logged with its traceback at most
        once a minute (the front's limit for unexpected errors)."""
        self.writer_errors += 1
        msg = f"http: {what} failed in the writing route"
        server = self._server
        if server is not None:
            server.note_error(msg, exc_info=True)
        else:
            log.warning("%s", msg, exc_info=True)

    def enter_stream(self, source: str = "") -> bool:
        """A viewer slot, if one is free and `source` holds fewer than MAX_STREAMS_PER_SOURCE."""
        with self._lock:
            mine = self._streams_by_source.get(source, 0)
            if self.clients >= MAX_STREAM_CLIENTS or mine >= MAX_STREAMS_PER_SOURCE:
                return False
            self.clients += 1
            self._streams_by_source[source] = mine + 1
            return True

    def leave_stream(self, source: str = "") -> None:
        with self._lock:
            self.clients -= 1
            left = self._streams_by_source.get(source, 1) - 1
            if left > 0:
                self._streams_by_source[source] = left
            else:
                self._streams_by_source.pop(source, None)

    def jpeg(self) -> tuple[int, bytes] | None:
        """(frame seq, JPEG) of the newest annotated frame; re-encoded at most stream_fps times a second."""
        with self._lock:
            obs, fps, regions = self._latest, self._fps, list(self._regions.values())
        if obs is None:
            return None
        with self._enc_lock:
            now = time.monotonic()
            fresh = self._enc is not None and now - self._enc_at < 1.0 / self.cfg.stream_fps
            if self._enc is not None and (self._enc[0] == obs.frame.seq or fresh):
                return self._enc
            st = self.status()
            warn = None if st.healthy else st.reason
            if regions:
                img = annotate_regions(obs.frame.image, regions, fps, warn)
            else:
                img = annotate_observation(obs, fps, warn)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
            if not ok:
                return self._enc
            self._enc = (obs.frame.seq, buf.tobytes())
            self._enc_at = now
            self.encoded += 1
            return self._enc

    def wait_jpeg(self, after_seq: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest JPEG once there is a frame newer than `after_seq` (None after `timeout`)."""
        with self._new_frame:
            if not self._new_frame.wait_for(
                lambda: self.stopping.is_set() or (self._latest is not None and self._latest.frame.seq != after_seq),
                timeout,
            ):
                return None
        if self.stopping.is_set():
            return None
        got = self.jpeg()
        return got if got is not None and got[0] != after_seq else None

    # -- the server thread --

    def _bind(self) -> Front:
        shim = _Server(self)

        def handle(job: Accepted) -> None:
            _Handler(job, job.addr, shim)  # type: ignore[arg-type]

        return Front(self.host, self.port, handle, self.limits, tick=self.auth_failures.tick, screen=self.write_refusal)

    def _serve(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._server = self._bind()
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    msg = (
                        f"http port {self.port} on {self.host} is in use (another edge-resnet or web server?); "
                        f"set [http] listen or --http HOST:PORT to a free port; retrying"
                    )
                elif e.errno in (errno.EACCES, errno.EPERM):
                    msg = (
                        f"http port {self.port} needs privileges; use a port >= 1024 in [http] listen or "
                        "--http HOST:PORT; retrying"
                    )
                else:
                    msg = f"http cannot listen on {self.host}:{self.port} ({e.strerror}); check [http] listen; retrying"
                if self._bind_error != msg:
                    log.error("%s", msg)
                self._bind_error = msg
                self.stopping.wait(delay)
                delay = min(BIND_RETRY_MAX_S, delay * 2)
                continue
            if self._bind_error is not None:
                log.info("http: listening on %s after all", self.url)
            else:
                log.info("http: overlay on %s", self.url)
            self._bind_error = None
            self._server.serve()
            return


def make_sink(cfg: HttpConfig, ctx: SinkContext) -> HttpSink:
    """The registry's factory for `[http]`."""
    return HttpSink(cfg, ctx.status, ctx.sink_health, device_id=ctx.device_id, state_dir=ctx.state_dir)
