"""HTTP overlay sink: the endpoints over real sockets, Prometheus text, health, basic auth, a port in use."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import pytest

from edge_resnet.errors import ConfigError
from edge_resnet.observation import Status
from edge_resnet.sinkconfig import HttpConfig, parse_listen
from edge_resnet.sinks.http import HttpSink
from tests.helpers.observations import Classified, observation, synthetic_samples


@pytest.fixture(scope="module")
def photos() -> list[Classified]:
    """Synthetic: the real-model overlay test is tests/test_overlay_browser.py."""
    return synthetic_samples(4)


@dataclass
class StatusBox:
    """What the daemon's StatusFn would return; tests flip it."""

    healthy: bool = True
    reason: str = "ok"
    counters: dict[str, float] = field(
        default_factory=lambda: {
            "frames_total": 120.0,
            "frames_dropped_total": 3.0,
            "inference_fps": 14.5,
            "frame_age_p99_ms": 41.25,
        }
    )

    def __call__(self) -> Status:
        labels = {"model": 'mobile"net', "device": "cpu", "device_id": "cam1", "sinks": {"http": "serving"}}
        return Status(self.healthy, self.reason, dict(self.counters), labels)


def wait_bound(sink: HttpSink, timeout: float = 5.0) -> str:
    end = time.monotonic() + timeout
    while sink.bound_port == 0 or "serving" not in sink.healthy()[1]:
        assert time.monotonic() < end, sink.healthy()
        time.sleep(0.02)
    return sink.url


@pytest.fixture
def box() -> StatusBox:
    return StatusBox()


@pytest.fixture
def served(box: StatusBox, photos: list[Classified]) -> Iterator[tuple[HttpSink, str]]:
    sink = HttpSink(HttpConfig(listen="127.0.0.1:0", stream_fps=20.0), box)
    sink.start()
    url = wait_bound(sink)
    sink.publish(observation(photos[0], 1, changed=True))
    try:
        yield sink, url
    finally:
        sink.stop(2.0)


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# A small strict parser for the Prometheus text format 0.0.4.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL})(?:,{_LABEL})*\}})? (\S+)( -?\d+)?$")


def parse_prometheus(text: str) -> dict[str, tuple[str, list[tuple[str, float]]]]:
    """name -> (type, [(labels, value)]); raises AssertionError on anything the format does not allow."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[str, list[tuple[str, float]]] = {}
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name), f"line {n}: bad name {name!r}"
            assert name not in helps, f"line {n}: second HELP for {name}"
            assert len(line.split(" ", 3)) == 4, f"line {n}: HELP without text"
            helps.add(name)
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4, f"line {n}: {line!r}"
            name, kind = parts[2], parts[3]
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), f"line {n}: type {kind}"
            assert name not in types, f"line {n}: second TYPE for {name}"
            assert name not in samples, f"line {n}: TYPE after samples of {name}"
            types[name] = kind
        elif line.startswith("#"):
            continue
        else:
            assert line.strip(), f"line {n}: empty line"
            m = _SAMPLE.match(line)
            assert m, f"line {n}: not a sample: {line!r}"
            name, labels, value = m.group(1), m.group(2) or "", m.group(3)
            v = float(value.replace("+Inf", "inf").replace("-Inf", "-inf"))
            assert value in ("NaN", "+Inf", "-Inf") or not math.isinf(v), f"line {n}: bad value {value}"
            samples.setdefault(name, []).append((labels, v))
    for name in samples:
        assert name in types, f"{name} has no TYPE"
        assert name in helps, f"{name} has no HELP"
        if types[name] == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
    return {name: (types[name], s) for name, s in samples.items()}


def test_config_errors() -> None:
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    for kw, key in [({"listen": "8080"}, "listen"), ({"jpeg_quality": 5}, "jpeg_quality"), ({"stream_fps": 0}, "fps")]:
        with pytest.raises(ConfigError, match=key):
            HttpConfig(**kw)  # type: ignore[arg-type]


def test_page_state_snapshot(served: tuple[HttpSink, str], photos: list[Classified]) -> None:
    _, url = served
    code, headers, body = get(url)
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="stream.mjpg"' in body and b"api/state" in body

    code, headers, body = get(url + "api/state")
    assert code == 200 and headers["Content-Type"] == "application/json"
    st = json.loads(body)
    assert st["label"] == photos[0].top_k[0].label and st["frame_seq"] == 1 and st["healthy"] is True
    assert [p["label"] for p in st["top_k"]] == [p.label for p in photos[0].top_k]

    code, headers, body = get(url + "snapshot.jpg")
    assert code == 200 and headers["Content-Type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == photos[0].image.shape
    assert get(url + "nope")[0] == 404


def test_stream_delivers_jpeg_parts_newest_frame(served: tuple[HttpSink, str], photos: list[Classified]) -> None:
    sink, url = served
    stop = threading.Event()

    def pipeline() -> None:
        seq = 1
        while not stop.is_set():
            seq += 1
            sink.publish(observation(photos[seq % len(photos)], seq, changed=True))
            time.sleep(0.01)  # 100 fps, faster than the 20 fps stream

    t = threading.Thread(target=pipeline)
    t.start()
    try:
        with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as r:
            ctype = r.headers["Content-Type"]
            assert ctype == "multipart/x-mixed-replace; boundary=frame"
            parts: list[cv2.typing.MatLike | None] = []  # imdecode gives None for a bad JPEG
            t0 = time.monotonic()
            while len(parts) < 10:
                assert r.readline() == b"--frame\r\n"
                hdrs = {}
                while (line := r.readline()) != b"\r\n":
                    k, v = line.decode().split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
                assert hdrs["content-type"] == "image/jpeg"
                data = r.read(int(hdrs["content-length"]))
                assert r.read(2) == b"\r\n"
                assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
                parts.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
            elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    assert all(p is not None for p in parts)
    rate = 9 / elapsed
    print(f"\nstream: 10 parts in {elapsed:.2f} s ({rate:.1f} parts/s, limit 20)")
    assert rate < 20 * 1.3, "stream_fps is not respected"


def test_publish_never_blocks_on_slow_clients(served: tuple[HttpSink, str], photos: list[Classified]) -> None:
    sink, url = served
    host, port = "127.0.0.1", sink.bound_port
    stuck = []
    for _ in range(3):  # viewers that never read: their socket buffers fill up
        s = socket.create_connection((host, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        stuck.append(s)
    time.sleep(0.5)
    took = []
    for seq in range(2, 302):
        # a label change every 10th frame, as on a camera: a change also encodes its timeline thumbnail
        # (~1 ms), which is not what this test is about
        obs = observation(photos[(seq // 10) % len(photos)], seq, changed=seq % 10 == 0)
        t0 = time.perf_counter()
        sink.publish(obs)
        took.append(time.perf_counter() - t0)
        time.sleep(0.002)
    med, worst = sorted(took)[len(took) // 2], max(took)
    print(f"\npublish with 3 stuck viewers: median {med * 1e3:.3f} ms, worst {worst * 1e3:.3f} ms")
    assert med < 0.001 and worst < 0.2  # a blocking write would take SEND_TIMEOUT_S (10 s); GIL jitter is not that
    code, _, body = get(url + "api/state")  # the server still answers others
    assert code == 200 and json.loads(body)["frame_seq"] == 301
    t0 = time.monotonic()
    sink.stop(2.0)
    assert time.monotonic() - t0 < 2.5
    for s in stuck:
        s.close()


def test_healthz_and_metrics(served: tuple[HttpSink, str], box: StatusBox) -> None:
    _, url = served
    code, _, body = get(url + "healthz")
    assert (code, body) == (200, b"ok\n")
    head = urllib.request.Request(url + "healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as r:
        assert r.status == 200 and r.read() == b"" and r.headers["Content-Length"] == "3"
    code, headers, body = get(url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    metrics = parse_prometheus(body.decode())
    assert metrics["edge_resnet_frames_total"] == ("counter", [("", 120.0)])
    assert metrics["edge_resnet_inference_fps"] == ("gauge", [("", 14.5)])
    assert metrics["edge_resnet_healthy"][1] == [("", 1.0)]
    assert metrics["edge_resnet_info"][1][0][0] == '{device="cpu",device_id="cam1",model="mobile\\"net"}'
    assert "edge_resnet_http_frames_encoded_total" in metrics

    box.healthy, box.reason = False, "camera lost: no frame for 5.0 s; check the cable"
    code, _, body = get(url + "healthz")
    assert code == 503 and body.decode().strip() == box.reason
    assert parse_prometheus(get(url + "metrics")[2].decode())["edge_resnet_healthy"][1] == [("", 0.0)]
    assert json.loads(get(url + "api/state")[2])["reason"] == box.reason


def test_basic_auth(monkeypatch: pytest.MonkeyPatch, box: StatusBox, photos: list[Classified]) -> None:
    monkeypatch.delenv("EDGE_RESNET_HTTP_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="EDGE_RESNET_HTTP_PASSWORD"):
        HttpSink(HttpConfig(listen="127.0.0.1:0", username="viewer"), box)
    monkeypatch.setenv("EDGE_RESNET_HTTP_PASSWORD", "s3cret pass")
    sink = HttpSink(HttpConfig(listen="127.0.0.1:0", username="viewer"), box)
    sink.start()
    try:
        url = wait_bound(sink)
        sink.publish(observation(photos[0], 1, changed=True))

        def auth(user: str, pw: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

        code, headers, _ = get(url + "api/state")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get(url + "api/state", auth("viewer", "wrong"))[0] == 401
        assert get(url + "snapshot.jpg", auth("viewer", "s3cret pass"))[0] == 200
        assert get(url + "healthz")[0] == 200  # probes (systemd, load balancers) need no password
    finally:
        sink.stop()


def test_port_in_use_is_reported_and_retried(box: StatusBox, caplog: pytest.LogCaptureFixture) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    sink = HttpSink(HttpConfig(listen=f"127.0.0.1:{port}"), box)
    with caplog.at_level(logging.ERROR, logger="edge_resnet.sinks.http"):
        sink.start()
        try:
            time.sleep(1.5)
            ok, reason = sink.healthy()
            print(f"\nport in use: {reason}")
            assert ok and f"port {port}" in reason and "in use" in reason and "--http" in reason
            assert len([r for r in caplog.records if "in use" in r.getMessage()]) == 1, "say it once"
            blocker.close()
            url = wait_bound(sink, timeout=12)
            assert get(url + "healthz")[0] == 200
        finally:
            blocker.close()
            sink.stop()


def test_healthz_lists_sink_health(box: StatusBox, photos: list[Classified]) -> None:
    """A broker that is away is not fatal: /healthz stays 200 and says so under the first line."""
    words = {"mqtt": "mqtt broker 127.0.0.1:1883 disconnected for 12 s (cannot connect); retrying, 3 events queued"}
    sink = HttpSink(HttpConfig(listen="127.0.0.1:0"), box, sink_health=lambda: dict(words, http="serving"))
    sink.start()
    try:
        url = wait_bound(sink)
        code, _, body = get(url + "healthz")
        assert code == 200
        assert body.decode().splitlines() == ["ok", f"mqtt: {words['mqtt']}", "http: serving"]
        assert json.loads(get(url + "api/state")[2])["sinks"]["mqtt"] == words["mqtt"]
        box.healthy, box.reason = False, "camera lost"
        code, _, body = get(url + "healthz")
        assert code == 503 and body.decode().splitlines()[0] == "camera lost"
    finally:
        sink.stop()


def test_a_region_removed_by_a_reload_leaves_the_page_at_once(box: StatusBox, photos: list[Classified]) -> None:
    """The daemon tells sinks which [[region]]s run after a SIGHUP (daemon._tell_regions); the overlay kept
    showing a removed region's last label in /api/state (and its box) until a restart."""
    sink = HttpSink(HttpConfig(listen="127.0.0.1:0", stream_fps=20.0), box)
    sink.start()
    url = wait_bound(sink)
    try:
        sink.set_regions(["door", "drive"])
        for name in ("door", "drive"):
            sink.publish(replace(observation(photos[0], 1, changed=True), region=name, roi=(0, 0, 50, 50)))
        assert sorted(json.loads(get(url + "api/state")[2])["regions"]) == ["door", "drive"]
        sink.set_regions(["door"])  # "drive" removed from the config
        sink.publish(replace(observation(photos[1], 2, changed=True), region="drive"))  # one still in flight
        assert sorted(json.loads(get(url + "api/state")[2])["regions"]) == ["door"]
    finally:
        sink.stop(2.0)
