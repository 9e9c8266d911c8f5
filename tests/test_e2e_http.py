"""Issue 4, must-show 2, end to end through the CLI: `edge-resnet run` with the overlay; the page in
headless Chromium shows the stream, /stream.mjpg delivers JPEG parts, /metrics parses as Prometheus
text, /healthz turns 503 with the reason when the source goes away and 200 when it is back."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from tests.helpers.broker import free_port
from tests.helpers.run_child import RunChild
from tests.helpers.video import pick_samples, write_video
from tests.test_http import get, parse_prometheus
from tests.test_overlay_browser import browser


def read_parts(url: str, n: int, timeout: float = 10.0) -> list[bytes]:
    """The first `n` JPEG parts of an MJPEG stream."""
    parts: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=frame")
        while len(parts) < n:
            assert r.readline() == b"--frame\r\n"
            length = 0
            while (line := r.readline()) != b"\r\n":
                k, v = line.decode().split(":", 1)
                if k.lower() == "content-length":
                    length = int(v)
            parts.append(r.read(length))
            r.read(2)
    return parts


def test_run_with_overlay(samples_dir: Path, mobilenet_quant: Path, labels_1001: Path, tmp_path: Path) -> None:
    cam = tmp_path / "cam.avi"
    write_video(cam, pick_samples(samples_dir, 3, start=5), seconds_each=1.0, fps=10, size=(320, 240))
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'device_id = "e2e"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\n'
        f'[source]\ntype = "file"\npath = "{cam}"\nloop = true\nwatchdog_s = 1.0\nbackoff_max_s = 0.5\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    child = RunChild(["--config", str(cfg)], dict(os.environ, PYTHONUNBUFFERED="1"))
    p, err = child.p, child.err
    url = f"http://127.0.0.1:{port}/"
    try:
        end = time.monotonic() + 30
        while True:
            try:
                if get(url + "healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert p.poll() is None, "daemon exited:\n" + "\n".join(err[-20:])
            assert time.monotonic() < end, "no healthy /healthz within 30 s:\n" + "\n".join(err[-20:])
            time.sleep(0.2)

        parts = read_parts(url + "stream.mjpg", 5)
        imgs = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in parts]
        assert all(i is not None and i.shape == (240, 320, 3) for i in imgs)
        print(f"\n/stream.mjpg: {len(parts)} JPEG parts of {[len(b) for b in parts]} bytes")

        code, _, body = get(url + "metrics")
        assert code == 200
        metrics = parse_prometheus(body.decode())
        print(f"/metrics: {len(metrics)} metrics parsed, e.g. inference fps {metrics['edge_resnet_inference_fps']}")
        assert metrics["edge_resnet_frames_classified_total"][1][0][1] > 0
        state = json.loads(get(url + "api/state")[2])
        assert state["label"] and state["healthy"] is True

        shot = tmp_path / "page.png"
        browser(url, tmp_path, f"--screenshot={shot}")
        page = cv2.imread(str(shot), cv2.IMREAD_COLOR)
        assert page is not None
        stream_area = page[60:600, 16:816]  # where the page puts the 800 px wide stream
        print(f"screenshot: stream area std {stream_area.std():.1f}")
        assert stream_area.std() > 20, "the stream area of the page is blank"

        cam.rename(tmp_path / "away.avi")  # the camera goes away
        t0 = time.monotonic()
        while (r := get(url + "healthz"))[0] == 200 and time.monotonic() - t0 < 10:
            time.sleep(0.2)
        print(f"/healthz after the source went away: {r[0]} {r[2].decode().strip()!r} ({time.monotonic() - t0:.1f} s)")
        assert r[0] == 503 and r[2].strip()
        (tmp_path / "away.avi").rename(cam)
        t0 = time.monotonic()
        while get(url + "healthz")[0] != 200 and time.monotonic() - t0 < 10:
            time.sleep(0.2)
        print(f"/healthz 200 again {time.monotonic() - t0:.1f} s after the source returned")
        assert get(url + "healthz")[0] == 200

        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        child.kill()
