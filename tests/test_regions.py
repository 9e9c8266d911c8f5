"""Issue 21 part 1, regions: several named parts of each frame, each classified on its own crop with
its own smoothing, MQTT state and events, Home Assistant sensor and /metrics; models sharing a
backbone load it once, and each frame costs one invoke a region."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_resnet import config as configmod
from edge_resnet.config import ModelConfig, PipelineConfig, RegionConfig
from edge_resnet.errors import ConfigError
from edge_resnet.regions import engines_of, load_regions
from tests.helpers.broker import Broker, Subscriber, broker, free_port, retained
from tests.helpers.run_child import RunChild, http_get
from tests.helpers.video import fit, read
from tests.test_e2e_mqtt import recognisable

__all__ = ["broker"]  # the fixture

FPS = 10.0
HALF = (320, 240)


def cfg_from(text: str) -> configmod.Config:
    import tomllib

    return configmod.validate(configmod.config_from_dict(tomllib.loads(text)))


def test_regions_are_read_from_the_config() -> None:
    cfg = cfg_from('[[region]]\nname = "door"\nroi = [0, 0, 320, 240]\n'
                   '[[region]]\nname = "drive-way"\nroi = [320, 0, 640, 240]\nmodel = "other.tflite"\n')
    assert [(r.name, r.roi, r.model) for r in cfg.regions] == [
        ("door", (0, 0, 320, 240), None), ("drive-way", (320, 0, 640, 240), "other.tflite")
    ]
    assert "region:    door [0, 0, 320, 240]" in configmod.summary(cfg)
    assert cfg_from("").regions == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[region]]\nname = "a"\nroi = [0, 0, 5, 5]\n[[region]]\nname = "a"\nroi = [5, 5, 9, 9]\n', "used twice"),
        ('[[region]]\nname = "front door"\nroi = [0, 0, 5, 5]\n', "not usable in MQTT topics"),
        ('[[region]]\nname = "a/b"\nroi = [0, 0, 5, 5]\n', "not usable in MQTT topics"),
        ('[[region]]\nname = "a"\nroi = [5, 5, 5, 9]\n', "x1 > x0"),
        ('[[region]]\nname = "a"\n', "missing key 'roi'"),
        ('[[region]]\nname = "a"\nroi = [0, 0, 5, 5]\ncolour = 3\n', "unknown key 'colour'"),
        ('region = "door"\n', "array of tables"),
        ("".join(f'[[region]]\nname = "r{i}"\nroi = [0, 0, 5, 5]\n' for i in range(17)), "at most 16"),
    ],
)
def test_bad_regions_are_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg_from(text)


def test_regions_on_one_backbone_load_it_once(mobilenet_quant: Path, tmp_path: Path) -> None:
    """Two regions on the same model: one interpreter; a region on a copy of the file too (same
    flatbuffer digest); a region on another network gets its own."""
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(mobilenet_quant.read_bytes())
    model = ModelConfig(path=str(mobilenet_quant), threads=1)
    two = load_regions(
        [RegionConfig("a", (0, 0, 10, 10)), RegionConfig("b", (10, 0, 20, 10), str(copy))], model, PipelineConfig()
    )
    assert engines_of(two) == 1 and two[1].model_name == "copy.tflite"
    v1 = mobilenet_quant.with_name("mobilenet_v1_0.75_192_quant.tflite")
    mixed = load_regions([RegionConfig("a", (0, 0, 10, 10)), RegionConfig("b", (0, 0, 9, 9), str(v1))],
                         model, PipelineConfig())  # fmt: skip
    assert engines_of(mixed) == 2


def two_photo_video(path: Path, left: list[Path], right: list[Path], seconds_each: float) -> int:
    """Frames of two photos side by side (each fitted to 320x240): left[i] | right[i] for segment i."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (2 * HALF[0], HALF[1]))
    n = 0
    for a, b in zip(left, right, strict=True):
        frame = np.hstack([fit(read(a), HALF), fit(read(b), HALF)])
        for _ in range(round(seconds_each * FPS)):
            w.write(frame)
            n += 1
    w.release()
    return n


def rss_mb(pid: int) -> float:
    import psutil  # the workstation's dev extra (the device environments collect this module too)

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def daemon_config(tmp: Path, model: Path, labels: Path, video: Path, port: int, http: int, regions: int) -> Path:
    parts = [
        'device_id = "cam"',
        f'state_dir = "{tmp / "state"}"',
        f'[model]\npath = "{model}"\nlabels = "{labels}"\nthreads = 1',
        f'[source]\ntype = "file"\npath = "{video}"\nloop = true',
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"',
        f'[http]\nlisten = "127.0.0.1:{http}"',
        '[[region]]\nname = "left"\nroi = [0, 0, 320, 240]',
    ]
    if regions == 2:
        parts.append('[[region]]\nname = "right"\nroi = [320, 0, 640, 240]')
    p = tmp / f"regions{regions}.toml"
    p.write_text("\n".join(parts) + "\n")
    return p


def test_two_regions_publish_their_own_labels(
    broker: Broker, samples_dir: Path, mobilenet_quant: Path, labels_1001: Path, tmp_path: Path
) -> None:
    """Must-show 1 and 4: each region's state, events and Home Assistant sensor reach mosquitto with the
    photo in its half of the frame; the backbone is loaded once (RSS with one and with two regions),
    and each frame costs one invoke a region."""
    photos, _ = recognisable(samples_dir, mobilenet_quant, labels_1001, tmp_path)
    left, right = photos[:2], photos[2:4]
    video = tmp_path / "two.avi"
    two_photo_video(video, [s.path for s in left], [s.path for s in right], seconds_each=3.0)
    sub = Subscriber(broker.port, ["edge-resnet/cam/#", "homeassistant/#"]).start()
    rss: dict[int, float] = {}
    try:
        for n in (1, 2):
            http = free_port()
            conf = daemon_config(tmp_path, mobilenet_quant, labels_1001, video, broker.port, http, n)
            d = RunChild(["--config", str(conf)], dict(os.environ, PYTHONUNBUFFERED="1"))
            try:
                deadline = time.monotonic() + 60
                metrics = ""
                while time.monotonic() < deadline:
                    code, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
                    if code == 200 and "edge_resnet_frames_classified_total" in metrics and _value(
                        metrics, "frames_classified_total") >= 70:  # fmt: skip
                        break
                    time.sleep(0.5)
                rss[n] = rss_mb(d.p.pid)
                frames, invokes = _value(metrics, "frames_classified_total"), _value(metrics, "invokes_total")
                print(f"\n{n} region(s): RSS {rss[n]:.1f} MB, {invokes:.0f} invokes for {frames:.0f} frames")
                assert frames >= 70, d.tail()
                assert invokes == n * frames or abs(invokes - n * frames) <= n, (invokes, frames)
                if n == 2:
                    _, api = http_get(f"http://127.0.0.1:{http}/api/state")
                    regions = json.loads(api).get("regions", {})
                    assert set(regions) == {"left", "right"}, api[:500]
            finally:
                d.kill()
    finally:
        sub.stop()
    assert rss[2] - rss[1] < 8.0, rss  # a second interpreter of this model would add ~15 MB
    for name, shown in (("left", left), ("right", right)):
        events = [m.json() for m in sub.on(f"edge-resnet/cam/{name}/events")]
        got = {e["class_index"] for e in events}
        assert all(e["region"] == name for e in events)
        assert {s.class_index for s in shown} <= got, (name, [e["label"] for e in events])
        st = retained(broker.port, f"edge-resnet/cam/{name}/state")
        assert st is not None and st.json()["region"] == name
        disc = retained(broker.port, "homeassistant/device/cam/config")  # device-based discovery
        assert disc is not None and disc.json()["cmps"][f"{name}_label"]["stat_t"] == f"edge-resnet/cam/{name}/state"
        assert disc.json()["cmps"][f"{name}_label"]["uniq_id"] == f"edge_resnet_cam_{name}_label"
    whole = retained(broker.port, "edge-resnet/cam/state")
    assert whole is not None and set(whole.json()["regions"]) == {"left", "right"}


def _value(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f"edge_resnet_{name} ") or line.startswith(f"edge_resnet_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_overlay_shows_each_region_with_its_box_and_label(
    mobilenet_quant: Path, labels_1001: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """Must-show 1's picture: in headless Chromium the page lists both regions with their labels, and
    the stream shows both boxes (a screenshot: docs/regions.png, refreshed with EDGE_RESNET_UPDATE_DOCS=1)."""
    import shutil

    from edge_resnet.annotate import REGION_COLOUR
    from edge_resnet.observation import Frame, Observation
    from tests.helpers.cdp import Chromium
    from tests.helpers.observations import classify_samples
    from tests.test_overlay_browser import chromium, overlay

    a, b = classify_samples(mobilenet_quant, labels_1001, samples_dir, 2)
    image = np.hstack([fit(a.image, HALF), fit(b.image, HALF)])
    boxes = {"door": ((0, 0, 320, 240), a), "driveway": ((320, 0, 640, 240), b)}

    def feed(sink: object, stop: object) -> None:
        import threading

        assert isinstance(stop, threading.Event)
        seq = 0
        while not stop.is_set():
            seq += 1
            now = time.time()
            frame = Frame(image=image, seq=seq, captured_at=now, captured_mono=time.monotonic())
            for name, (roi, c) in boxes.items():
                sink.publish(Observation(frame, list(c.top_k), c.top_k[0], seq == 1, c.invoke_ms,  # type: ignore[attr-defined]
                                         "mobilenet_v2_1.0_224_quant.tflite", now, name, roi))  # fmt: skip
            stop.wait(0.1)

    with overlay(feed) as sink:
        page = Chromium(chromium(), tmp_path / "profile", width=1160, height=560)
        try:
            page.open(sink.url)
            page.wait_for("document.querySelectorAll('#topk tr.region').length === 2", timeout=30)
            rows = page.eval("[...document.querySelectorAll('#topk tr.region')].map(tr => tr.textContent)")
            label = page.eval("document.getElementById('label').textContent")
            page.wait_for("document.getElementById('stream').naturalWidth === 640", timeout=30)
            time.sleep(0.5)
            shot = tmp_path / "regions.png"
            page.screenshot(shot)
        finally:
            page.close()
    print(f"\nregion rows: {rows}")
    assert label == "2 regions"
    assert rows[0].startswith("door" + a.top_k[0].label.split(",")[0]) and rows[1].startswith("driveway")
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None
    box = np.all(np.abs(img.astype(int) - np.array(REGION_COLOUR)) < 40, axis=2)
    assert box.sum() > 1000, "no region boxes in the stream"
    if os.environ.get("EDGE_RESNET_UPDATE_DOCS"):
        shutil.copy(shot, Path(__file__).resolve().parents[1] / "docs" / "regions.png")
