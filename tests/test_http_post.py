"""Issue 21: the overlay's writing routes. POST bodies are framed by Content-Length only, capped,
read by the front's selector loop under a deadline and handed whole to the sink's `Writer`; the
guards (basic auth and its 429, loopback only without a password, same origin) answer before the
body is read. Real sockets on addresses of this machine only; assertions on status codes, with
generous timeouts (a loaded 2-core machine)."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from email.message import Message

import pytest

from edge_resnet.observation import Status
from edge_resnet.sinkconfig import HttpConfig
from edge_resnet.sinks.front import Limits
from edge_resnet.sinks.http import HttpSink, Reply, _cross_origin, _loopback_host
from tests.test_http_limits import closed_by_server, sockets

__all__ = ["sockets"]  # the fixture

PASSWORD = "s3cret pass"
TIMEOUT = 20.0  # per socket operation: far above what a loaded machine needs


class ToyWriter:
    """Records every call; `/api/regions/boom` raises."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[tuple[str, dict[str, str], bytes, str]] = []
        self.gets: list[tuple[str, dict[str, str]]] = []

    def post(self, path: str, query: dict[str, str], body: bytes, content_type: str) -> Reply:
        with self.lock:
            self.posts.append((path, query, body, content_type))
        if path.endswith("/boom"):
            raise RuntimeError("the writer broke")
        return 201, "application/json", b'{"stored": %d}' % len(body)

    def get(self, path: str, query: dict[str, str]) -> Reply | None:
        with self.lock:
            self.gets.append((path, query))
        if path.endswith("/boom"):
            raise ValueError("the writer broke on a GET")
        if path.startswith("/api/regions/x"):
            return 200, "text/plain; charset=utf-8", b"region x " + query.get("k", "").encode()
        return None


def status() -> Status:
    return Status(True, "ok", {"frames_total": 1.0})


def start(
    limits: Limits | None = None, *, auth: bool = False, listen: str = "127.0.0.1:0", writer: ToyWriter | None = None
) -> HttpSink:
    cfg = HttpConfig(listen=listen, username="teacher" if auth else None)
    sink = HttpSink(cfg, status, limits=limits or Limits())
    if writer is not None:
        sink.set_writer(writer)
    sink.start()
    end = time.monotonic() + 10
    while "serving" not in sink.healthy()[1]:
        assert time.monotonic() < end, sink.healthy()
        time.sleep(0.02)
    return sink


@pytest.fixture
def auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RESNET_HTTP_PASSWORD", PASSWORD)


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def connect(port: int, held: list[socket.socket] | None = None, host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((host, port), timeout=TIMEOUT, source_address=(host, 0))
    if held is not None:
        held.append(s)
    return s


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    while data.startswith(b"HTTP/1.1 100"):  # an interim answer
        data = data.partition(b"\r\n\r\n")[2]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def post_head(port: int, path: str, length: int | None, extra: dict[str, str] | None = None, host: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.0", f"Host: {host or f'127.0.0.1:{port}'}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(
    port: int,
    path: str,
    body: bytes = b"{}",
    extra: dict[str, str] | None = None,
    *,
    addr: str = "127.0.0.1",
    host: str = "",
) -> tuple[int, dict[str, str], bytes]:
    with connect(port, host=addr) as s:
        s.sendall(post_head(port, path, len(body), extra, host) + body)
        return parse(closed_by_server(s, 20.0))


def get(port: int, path: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as s:
        extra = f"Authorization: {auth}\r\n" if auth else ""
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode())
        return parse(closed_by_server(s, 20.0))


def wait_for(cond: object, what: str, timeout: float = TIMEOUT) -> None:
    assert callable(cond)
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.02)


# -- framing and the body ------------------------------------------------------------------------------


def test_post_body_reaches_the_writer_exactly() -> None:
    writer = ToyWriter()
    sink = start(writer=writer)
    try:
        body = os.urandom(300_000)  # many reads on the front thread
        code, headers, answer = post(
            sink.bound_port, "/api/regions/gate/import?a=1&b=x%20y&empty=", body, {"Content-Type": "application/zip"}
        )
        assert code == 201 and answer == b'{"stored": 300000}', (code, answer)
        assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
        assert writer.posts == [
            ("/api/regions/gate/import", {"a": "1", "b": "x y", "empty": ""}, body, "application/zip")
        ]
        code, _, _ = post(sink.bound_port, "/api/regions/gate/empty", b"")  # Content-Length: 0
        assert code == 201 and writer.posts[-1][2] == b"" and writer.posts[-1][3] == ""
        assert sink.counters()["http_bodies_total"] == 2
        wait_for(lambda: sink.counters()["http_body_bytes"] == 0, "the body's reservation is released")
    finally:
        sink.stop()


def test_expect_100_continue(sockets: list[socket.socket]) -> None:
    """curl sends `Expect: 100-continue` with HTTP/1.1 and waits for the interim answer."""
    writer = ToyWriter()
    sink = start(writer=writer)
    try:
        s = connect(sink.bound_port, sockets)
        s.sendall(
            f"POST /api/regions/gate/label HTTP/1.1\r\nHost: 127.0.0.1:{sink.bound_port}\r\n"
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += s.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        code, _, _ = parse(closed_by_server(s, 20.0))
        assert code == 201 and writer.posts[0][2] == b"hello"
    finally:
        sink.stop()


def test_framing_refusals_before_the_body(sockets: list[socket.socket]) -> None:
    """Over the cap (413), no Content-Length (411), chunked (501), not a number (400): answered
    from the head alone, the writer never called; GET and HEAD with a body stay 413."""
    writer = ToyWriter()
    sink = start(Limits(max_body_bytes=1000), writer=writer)
    port = sink.bound_port
    try:
        s = connect(port, sockets)  # the head only: the answer does not wait for the body
        s.sendall(post_head(port, "/api/regions/gate/import", 1001))
        code, _, answer = parse(closed_by_server(s, 20.0))
        assert code == 413 and b"1000" in answer, answer
        assert post(port, "/api/regions/gate/import", b"z" * 1001)[0] == 413  # and with the body sent
        assert post(port, "/api/regions/gate/import", b"z" * 1000)[0] == 201  # at the cap: taken
        cases = {
            411: post_head(port, "/api/x", None),
            501: post_head(port, "/api/x", None, {"Transfer-Encoding": "chunked"}) + b"5\r\nhello\r\n0\r\n\r\n",
            400: post_head(port, "/api/x", None, {"Content-Length": "12abc"}),
        }
        for want, raw in cases.items():
            with connect(port) as c:
                c.sendall(raw)
                code, _, answer = parse(closed_by_server(c, 20.0))
                assert code == want, (want, code, answer)
        with connect(port) as c:  # both: Transfer-Encoding wins, and is refused
            c.sendall(post_head(port, "/api/x", 5, {"Transfer-Encoding": "chunked"}) + b"hello")
            assert parse(closed_by_server(c, 20.0))[0] == 501
        with connect(port) as c:
            c.sendall(b"GET /api/state HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
            assert parse(closed_by_server(c, 20.0))[0] == 413
        assert len(writer.posts) == 1
        assert sink.counters()["http_too_large_total"] >= 3
    finally:
        sink.stop()


def test_slow_body_gets_408_while_others_are_served(sockets: list[socket.socket]) -> None:
    writer = ToyWriter()
    sink = start(Limits(body_timeout_s=1.0, head_timeout_s=30.0), writer=writer)
    port = sink.bound_port
    try:
        slow = connect(port, sockets)
        slow.sendall(post_head(port, "/api/regions/gate/import", 10_000) + b"x" * 5_000)  # half, then nothing
        t0 = time.monotonic()
        wait_for(lambda: sink.counters()["http_body_bytes"] == 10_000, "the body is being read")
        assert get(port, "/healthz")[0] == 200, "a slow body holds no thread"
        assert post(port, "/api/regions/gate/label", b"cat")[0] == 201
        code, _, answer = parse(closed_by_server(slow, 20.0))
        took = time.monotonic() - t0
        assert code == 408, answer
        assert took >= 0.5, took  # never before body_timeout_s (upper bound: the socket timeout)
        assert [p[2] for p in writer.posts] == [b"cat"]
        assert sink.counters()["http_body_timeouts_total"] == 1
        wait_for(lambda: sink.counters()["http_body_bytes"] == 0, "the slow body's reservation is released")
    finally:
        sink.stop()


def test_idle_half_sent_bodies_do_not_block_a_get(sockets: list[socket.socket]) -> None:
    writer = ToyWriter()
    sink = start(Limits(head_timeout_s=60.0, body_timeout_s=60.0), writer=writer)
    port = sink.bound_port
    try:
        assert get(port, "/healthz")[0] == 200  # the worker pool exists now
        threads = threading.active_count()
        for _ in range(25):
            connect(port, sockets).sendall(post_head(port, "/api/regions/gate/import", 20_000) + b"y" * 10_000)
        wait_for(lambda: sink.counters()["http_body_bytes"] == 25 * 20_000, "25 bodies being read")
        assert threading.active_count() == threads, "a thread per slow body"
        code, _, body = get(port, "/healthz")
        assert code == 200 and body.startswith(b"ok"), body
        assert writer.posts == []
        for s in sockets:
            s.close()
        wait_for(lambda: sink.counters()["http_body_bytes"] == 0, "reservations released when clients leave")
    finally:
        sink.stop()


def test_bodies_in_flight_share_a_budget(sockets: list[socket.socket]) -> None:
    """All bodies being read fit max_body_total_bytes: past it, a clear 503 before reading."""
    writer = ToyWriter()
    sink = start(Limits(max_body_bytes=1000, max_body_total_bytes=1500), writer=writer)
    port = sink.bound_port
    try:
        first = connect(port, sockets)
        first.sendall(post_head(port, "/api/regions/gate/import", 1000) + b"a" * 10)
        wait_for(lambda: sink.counters()["http_body_bytes"] == 1000, "the first body is being read")
        code, headers, _ = post(port, "/api/regions/gate/import", b"b" * 1000)
        assert code == 503 and headers.get("Retry-After") == "5"
        assert post(port, "/api/regions/gate/label", b"c" * 400)[0] == 201  # a small one still fits
        first.sendall(b"a" * 990)
        assert parse(closed_by_server(first, 20.0))[0] == 201
        assert post(port, "/api/regions/gate/import", b"b" * 1000)[0] == 201
    finally:
        sink.stop()


# -- the guards ----------------------------------------------------------------------------------------


def test_password_auth_and_429_shared_with_get(auth_env: None, sockets: list[socket.socket]) -> None:
    writer = ToyWriter()
    sink = start(Limits(auth_failures_per_min=3), auth=True, writer=writer)
    port = sink.bound_port
    right = {"Authorization": basic("teacher", PASSWORD)}
    try:
        s = connect(port, sockets)  # asked before the body is read: the answer comes from the head
        s.sendall(post_head(port, "/api/regions/gate/label", 5000))
        code, headers, _ = parse(closed_by_server(s, 20.0))
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert post(port, "/api/regions/gate/label")[0] == 401
        assert post(port, "/api/regions/gate/label", b"dog", right)[0] == 201
        codes = [
            post(port, "/api/regions/gate/label", b"x", {"Authorization": basic("teacher", f"guess{i}")})[0]
            for i in range(5)
        ]
        assert codes == [401, 401, 401, 429, 429], codes
        assert post(port, "/api/regions/gate/label", b"dog", right)[0] == 429, "throttled source, even right"
        assert get(port, "/api/state", right["Authorization"])[0] == 429, "shared with GET"
        assert [p[2] for p in writer.posts] == [b"dog"]
        assert sink.counters()["http_auth_failures_total"] == 3
    finally:
        sink.stop()


def test_same_origin(auth_env: None) -> None:
    writer = ToyWriter()
    sink = start(auth=True, writer=writer)
    port = sink.bound_port
    auth = {"Authorization": basic("teacher", PASSWORD)}
    path = "/api/regions/gate/label"
    try:
        assert post(port, path, b"1", {**auth, "Origin": "http://evil.example"})[2] == b"cross-origin request refused\n"
        assert post(port, path, b"2", {**auth, "Origin": "http://evil.example"})[0] == 403
        assert post(port, path, b"3", {**auth, "Origin": "null"})[0] == 403
        assert post(port, path, b"4", {**auth, "Sec-Fetch-Site": "cross-site"})[0] == 403
        assert post(port, path, b"5", {**auth, "Sec-Fetch-Site": "same-site"})[0] == 403
        good = {**auth, "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
        assert post(port, path, b"6", good)[0] == 201
        assert post(port, path, b"7", {**auth, "Origin": f"https://127.0.0.1:{port}"})[0] == 201  # behind TLS
        assert post(port, path, b"8", {**auth, "Sec-Fetch-Site": "none"})[0] == 201
        assert post(port, path, b"9", auth)[0] == 201  # curl and scripts send neither
        assert [p[2] for p in writer.posts] == [b"6", b"7", b"8", b"9"]
        code, _, _ = get(port, "/api/regions/x", auth["Authorization"])  # GET: no origin check
        assert code == 200
    finally:
        sink.stop()


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (bind() succeeding proves it is ours).
    A UDP connect() only picks the source address for a route: it sends nothing."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    for probe in ("192.0.2.1", "198.51.100.1", "10.255.255.254"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.connect((probe, 9))
                candidates.append(u.getsockname()[0])
            except OSError:
                pass
    for ip in candidates:
        if ipaddress.ip_address(ip).is_loopback or ip == "0.0.0.0":
            continue
        with socket.socket() as t:
            try:
                t.bind((ip, 0))
            except OSError:
                continue
        return ip
    return None


@pytest.fixture
def other_address() -> Iterator[str]:
    """Where a "remote" client comes from: one of this machine's own non-loopback addresses, or, as
    root without one, 10.200.0.1/32 added to `lo` for the test and removed after it."""
    ip = _non_loopback_address()
    if ip is not None:
        yield ip
        return
    extra = "10.200.0.1"
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("no non-loopback address on this machine, and not root to add one")
    added = subprocess.run(["ip", "addr", "add", f"{extra}/32", "dev", "lo"], capture_output=True, check=False)
    if added.returncode != 0:
        pytest.skip(f"cannot add a test address: {added.stderr.decode().strip()}")
    try:
        yield extra
    finally:
        subprocess.run(["ip", "addr", "del", f"{extra}/32", "dev", "lo"], capture_output=True, check=False)


def test_without_password_writing_is_loopback_only(other_address: str) -> None:
    writer = ToyWriter()
    sink = start(listen="0.0.0.0:0", writer=writer)
    port = sink.bound_port
    path = "/api/regions/gate/label"
    try:
        code, _, body = post(port, path, b"far", addr=other_address, host=f"{other_address}:{port}")
        assert code == 403, (code, body)
        assert body.count(b"\n") == 1 and b"[http] username" in body and b"EDGE_RESNET_HTTP_PASSWORD" in body
        code, _, _ = get(port, "/healthz")  # reading stays open, as before
        assert code == 200
        assert post(port, path, b"near")[0] == 201
        assert post(port, path, b"near", host=f"localhost:{port}")[0] == 201
        assert post(port, path, b"rebound", host=f"evil.example:{port}")[0] == 403, "DNS rebinding to loopback"
        assert [p[2] for p in writer.posts] == [b"near", b"near"]
    finally:
        sink.stop()


def test_password_lets_other_machines_teach(auth_env: None, other_address: str) -> None:
    writer = ToyWriter()
    sink = start(listen="0.0.0.0:0", auth=True, writer=writer)
    port = sink.bound_port
    try:
        auth = {"Authorization": basic("teacher", PASSWORD)}
        code, _, _ = post(port, "/api/regions/gate/label", b"far", auth, addr=other_address, host=f"cam.lan:{port}")
        assert code == 201 and writer.posts[0][2] == b"far"
    finally:
        sink.stop()


# -- dispatch ------------------------------------------------------------------------------------------


def test_dispatch_and_404s() -> None:
    writer = ToyWriter()
    sink = start(writer=writer)
    port = sink.bound_port
    try:
        code, headers, body = get(port, "/api/regions/x?k=v")
        assert (code, body) == (200, b"region x v") and headers["Cache-Control"] == "no-store"
        assert writer.gets == [("/api/regions/x", {"k": "v"})]
        assert get(port, "/api/regions/nobody")[0] == 404  # the writer said None
        assert post(port, "/not-api/thing")[0] == 404
        assert get(port, "/api/state")[0] == 200 and len(writer.gets) == 2, "the built-in routes stay the sink's"
        sink.set_writer(None)
        assert get(port, "/api/regions/x")[0] == 404
        assert post(port, "/api/regions/gate/label")[0] == 404
        assert len(writer.posts) == 0
    finally:
        sink.stop()


def test_writer_errors_are_500_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    writer = ToyWriter()
    sink = start(writer=writer)
    port = sink.bound_port
    caplog.set_level(logging.WARNING, logger="edge_resnet")
    try:
        for _ in range(3):
            code, _, body = post(port, "/api/regions/gate/boom")
            assert code == 500 and body.count(b"\n") == 1, body
        code, _, body = get(port, "/api/regions/boom")
        assert code == 500 and body.count(b"\n") == 1, body
        assert get(port, "/healthz")[0] == 200, "the workers survive"
        assert sink.counters()["http_writer_errors_total"] == 4
    finally:
        sink.stop()
    failed = [r for r in caplog.records if "failed in the writing route" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None, [r.getMessage() for r in caplog.records]


# -- the rules as functions ----------------------------------------------------------------------------


def _headers(**kw: str) -> Message:
    m = Message()
    for k, v in kw.items():
        m[k.replace("_", "-")] = v
    return m


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),
        ({"Host": "cam:8080"}, False),
        ({"Host": "cam:8080", "Origin": "http://cam:8080"}, False),
        ({"Host": "Cam:8080", "Origin": "http://cam:8080"}, False),
        ({"Host": "cam:8080", "Origin": "https://cam:8080"}, False),
        ({"Host": "cam:8080", "Origin": "http://cam:8081"}, True),
        ({"Origin": "http://cam:8080"}, True),  # an Origin and no Host: nothing to compare with
        ({"Host": "cam", "Sec_Fetch_Site": "same-origin"}, False),
        ({"Host": "cam", "Sec_Fetch_Site": "none"}, False),
        ({"Host": "cam", "Sec_Fetch_Site": "same-site"}, True),
        ({"Host": "cam", "Origin": "http://cam", "Sec_Fetch_Site": "cross-site"}, True),
    ],
)
def test_cross_origin_rule(headers: dict[str, str], refused: bool) -> None:
    assert _cross_origin(_headers(**headers)) is refused


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("127.3.4.5", True),
        ("localhost:8080", True),
        ("LOCALHOST.", True),
        ("app.localhost:8080", True),
        ("[::1]:8080", True),
        ("evil.example:8080", False),
        ("192.168.1.20:8080", False),
        ("localhost.evil.example", False),
        ("[::2]:8080", False),
    ],
)
def test_loopback_host_rule(host: str, loopback: bool) -> None:
    assert _loopback_host(host) is loopback
