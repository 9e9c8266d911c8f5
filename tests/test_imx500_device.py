"""Issue 25, must-show 3: the Raspberry Pi AI Camera (IMX500) on the device, behind a fake picamera2
(tests/helpers/fake_picamera2: the real one exists only on a Pi). The sensor's network outputs come
with each frame's metadata; the daemon publishes their labels on MQTT and the overlay like any source,
and a frame without a tensor is skipped and counted, not fatal."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_resnet.config import ModelConfig
from edge_resnet.errors import ConfigError, ModelError
from edge_resnet.imx500 import SensorClassifier, load_sensor_classifier
from edge_resnet.model import load_classifier
from edge_resnet.sourceconfig import Picamera2Source
from tests.helpers.broker import Broker, Subscriber, broker, free_port
from tests.helpers.run_child import RunChild
from tests.test_http import get, parse_prometheus

__all__ = ["broker"]  # the fixture

from .helpers.rpk import write_rpk

FAKE = Path(__file__).parent / "helpers" / "fake_picamera2"
LABELS = ["background", "tabby cat", "macaw", "hot dog", "owl"]  # output 0 is background, as in MobileNet v2


def write_network(tmp: Path, sequence: list[int | None], image: Path) -> tuple[Path, Path, Path]:
    """The files the device has: network.rpk (shaped as imx500-package writes it: a 224x224 RGB input), the
    metadata that `convert --target imx500` writes, and the fake camera's script."""
    rpk = tmp / "network.rpk"
    write_rpk(rpk, outputs=(len(LABELS),))
    meta = tmp / "mobilenet_v2_imx500.json"
    meta.write_text(json.dumps({
        "format": "edge-resnet-imx500", "version": 2, "labels": LABELS, "label_offset": 1,
        "output_kind": "logits", "num_outputs": len(LABELS),
        "preprocess": {"mean": [127.5] * 3, "std": [127.5] * 3, "channel_order": "RGB", "crop_fraction": 0.875,
                       "interpolation": "area_fast", "preset": "inception"},
    }))
    script = tmp / "camera.json"
    script.write_text(json.dumps({"image": str(image), "num_outputs": len(LABELS), "sequence": sequence,
                                  "dnn_ms": 6.5, "dsp_ms": 1.25, "fps": 20}))
    return rpk, meta, script


@pytest.fixture()
def photo(data_dir: Path, tmp_path: Path) -> Path:
    img = cv2.imread(str(data_dir / "images" / "cat_720p.jpg"), cv2.IMREAD_COLOR)
    out = tmp_path / "scene.png"
    cv2.imwrite(str(out), cv2.resize(img, (640, 360)))
    return out


@pytest.fixture()
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FAKE))
    for name in [n for n in sys.modules if n == "picamera2" or n.startswith("picamera2.")]:
        monkeypatch.delitem(sys.modules, name)


def test_frames_carry_the_sensor_outputs_and_frames_without_a_tensor_are_counted(
    fake_picamera2: None, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_resnet.sources.picamera2 import Picamera2Frames

    rpk, meta, script = write_network(tmp_path, [2, None, 3, None, None, 4], photo)
    monkeypatch.setenv("EDGE_RESNET_FAKE_IMX500", str(script))
    src = Picamera2Frames(Picamera2Source(mode="imx500", network=str(rpk), lores_size=(320, 240)))
    clf = load_classifier(ModelConfig(path=str(meta)))
    assert isinstance(clf, SensorClassifier) and str(clf.engine.device) == "imx500"
    src.open()
    imx = src._imx  # the fake IMX500 the source made
    got: list[str] = []
    try:
        for _ in range(6):
            frame = src.read()
            if frame is None:
                continue
            assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8  # the lores stream, BGR
            res = clf.classify(frame, k=2)
            got.append(res.top.label)
            assert res.latency_ms == 6.5 and res.top.score > 0.9  # DNN time from the KPI; softmax of the logits
    finally:
        src.close()
    assert got == ["macaw", "hot dog", "owl"]  # class k+1 is label k: the metadata's offset applied
    assert imx.inference_aspect_ratio == (224, 224)  # the sensor's centre square, not its 4:3 squeezed
    assert src.counters() == {"imx500_frames_without_tensor_total": 3.0, "imx500_dnn_ms": 6.5, "imx500_dsp_ms": 1.25}
    assert Picamera2Frames(Picamera2Source()).counters() == {}  # the plain camera mode adds none


def test_sensor_model_refuses_a_frame_without_outputs_and_a_mismatched_network(tmp_path: Path, photo: Path) -> None:
    _, meta, _ = write_network(tmp_path, [1], photo)
    clf = load_sensor_classifier(meta)
    frame = np.zeros((240, 320, 3), np.uint8)
    with pytest.raises(ModelError, match='mode = "imx500"'):
        clf.classify(frame)  # e.g. an opencv source with an IMX500 model
    from edge_resnet.imx500 import sensor_frame

    with pytest.raises(ModelError, match="different conversions"):
        clf.classify(sensor_frame(frame, np.zeros(1001, np.float32)))
    with pytest.raises(ConfigError, match="mode = \"imx500\" needs the network"):
        Picamera2Source(mode="imx500")
    with pytest.raises(ConfigError, match="only for mode"):
        Picamera2Source(network="network.rpk")
    old = json.loads(meta.read_text()) | {"version": 1}  # converted before the network took the sensor's pixels
    meta.write_text(json.dumps(old))
    with pytest.raises(ModelError, match=r"expects normalised input, which the sensor does not.*convert it again"):
        load_sensor_classifier(meta)


def _wait_healthy(url: str, child: RunChild, seconds: float = 40) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if get(url + "healthz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        assert child.p.poll() is None, "daemon exited:\n" + child.tail()
        time.sleep(0.2)
    raise AssertionError("no healthy /healthz:\n" + child.tail())


def test_daemon_publishes_sensor_labels_on_mqtt_and_the_overlay(broker: Broker, photo: Path, tmp_path: Path) -> None:
    sequence: list[int | None] = [2] * 6 + [None] + [2] * 5 + [None, None] + [2] * 6
    rpk, meta, script = write_network(tmp_path, sequence, photo)
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'device_id = "aicam"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[model]\npath = "{meta}"\n'
        f'[source]\ntype = "picamera2"\nmode = "imx500"\nnetwork = "{rpk}"\n'
        f'[mqtt]\nurl = "{broker.url}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    sub = Subscriber(broker.port, ["edge-resnet/aicam/#"]).start()
    env = dict(os.environ, PYTHONUNBUFFERED="1", EDGE_RESNET_FAKE_IMX500=str(script),
               PYTHONPATH=os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    child = RunChild(["--config", str(cfg)], env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_healthy(url, child)

        def macaw_state(ms: list[Any]) -> bool:
            return any(m.topic == "edge-resnet/aicam/state" and m.json().get("label") == "macaw" for m in ms)

        assert sub.wait_for(macaw_state, 20), "no MQTT state with the sensor's label:\n" + child.tail()
        state = next(m.json() for m in sub.on("edge-resnet/aicam/state") if m.json().get("label") == "macaw")
        assert state["class_index"] == 1 and state["model"] == meta.name and state["score"] > 0.9

        code, headers, jpeg = get(url + "snapshot.jpg")
        assert code == 200 and headers["Content-Type"] == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[:2] == (240, 320)  # the frame the sensor classified

        deadline = time.monotonic() + 20
        while True:  # the sequence has 3 frames without a tensor in every 20
            code, _, body = get(url + "metrics")
            metrics = parse_prometheus(body.decode())
            skipped = metrics["edge_resnet_imx500_frames_without_tensor_total"][1][0][1]
            if skipped >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert skipped >= 3
        assert metrics["edge_resnet_imx500_dnn_ms"][1][0][1] == 6.5
        assert metrics["edge_resnet_invoke_p50_ms"][1][0][1] == 6.5  # the classification's latency is the DNN's
        info = metrics["edge_resnet_info"][1][0][0]
        assert 'device="imx500"' in info and 'delegate="on-sensor"' in info
        print(f"\nMQTT label {state['label']!r} ({state['score']:.3f}); /metrics: {int(skipped)} frames without a "
              f"tensor skipped, dnn {metrics['edge_resnet_imx500_dnn_ms'][1][0][1]} ms; overlay JPEG {img.shape}")
        assert child.p.poll() is None, "a frame without a tensor must not stop the daemon:\n" + child.tail()
        ready = [ln for ln in child.err if "ready: " in ln]  # the line systemd gets as STATUS= too
        assert ready and "dnn 6.5 ms" in ready[0], child.tail()
    finally:
        try:
            child.stop()
        finally:
            sub.stop()


def _daemon_env(script: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", EDGE_RESNET_FAKE_IMX500=str(script),
                PYTHONPATH=os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


@pytest.mark.parametrize("progress", ["direct", "none"])
def test_a_network_upload_longer_than_the_watchdog_does_not_reopen_the_camera(
    broker: Broker, photo: Path, tmp_path: Path, progress: str
) -> None:
    """The first upload of a network takes minutes on the sensor, frames coming without tensors meanwhile.
    With watchdog_s = 1 and an upload of 4 s the camera is opened once, /healthz says why it waits (the
    upload's percentage where picamera2 reads it, else that frames come without outputs), and the labels
    come when the upload is done. (Before: the watchdog reopened the camera after 1 s, which started the
    upload again, forever.)"""
    rpk, meta, script = write_network(tmp_path, [2], photo)
    opens = tmp_path / "opens.txt"
    d = json.loads(script.read_text())
    d.update(upload={"seconds": 4.0, "bytes": 2_800_000, "progress": progress}, opens_file=str(opens))
    script.write_text(json.dumps(d))
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'device_id = "aicam"\nstate_dir = "{tmp_path / "state"}"\n[model]\npath = "{meta}"\n'
        f'[source]\ntype = "picamera2"\nmode = "imx500"\nnetwork = "{rpk}"\nwatchdog_s = 1\n'
        f'[mqtt]\nurl = "{broker.url}"\n[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    sub = Subscriber(broker.port, ["edge-resnet/aicam/state"]).start()
    child = RunChild(["--config", str(cfg)], _daemon_env(script))
    url = f"http://127.0.0.1:{port}/"
    said: list[str] = []  # what /healthz said while the sensor had no network yet
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert child.p.poll() is None, "daemon exited:\n" + child.tail()
            try:
                code, _, body = get(url + "healthz", timeout=1)
            except OSError:
                time.sleep(0.1)
                continue
            if code == 200:
                break
            said.append(body.decode().splitlines()[0])
            time.sleep(0.2)
        assert sub.wait_for(lambda ms: any(m.json().get("label") == "macaw" for m in ms), 10), child.tail()
        code, _, body = get(url + "metrics")
        metrics = parse_prometheus(body.decode())
        reconnects = metrics["edge_resnet_camera_reconnects_total"][1][0][1]
        opened = opens.read_text().splitlines()
        waiting = [s for s in said if s.startswith(("uploading the network", "waiting for the IMX500"))]
        print(f"\nprogress {progress}: opened {len(opened)} time(s), {int(reconnects)} reconnects; /healthz said "
              f"{waiting[0]!r} ... {waiting[-1]!r}" if waiting else f"\n/healthz said {said}")
        assert len(opened) == 1 and reconnects == 0, "the camera was reopened during the upload:\n" + child.tail()
        assert not [ln for ln in child.err if "camera lost" in ln], child.tail()
        assert not [s for s in said if "camera lost" in s or "no frame classified" in s], said
        if progress == "direct":
            assert waiting and all(s.startswith("uploading the network to the IMX500: ") for s in waiting), said
            assert len({s for s in waiting}) >= 3 and all(s.endswith(" of 2.8 MB)") for s in waiting), said
        else:
            assert waiting and all(s.startswith("waiting for the IMX500 to load its network: frames without its "
                                                "outputs for ") for s in waiting), said
            assert "upload progress not readable here; allowed up to 300 s after opening" in waiting[-1]
    finally:
        try:
            child.stop()
        finally:
            sub.stop()


def test_without_readable_progress_the_wait_is_bounded(
    fake_picamera2: None, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames that never bring a tensor count as life only for upload_grace_s after opening (300 s by
    default; 1 s here): then the watchdog calls the camera lost and reopens it, as for any camera."""
    from edge_resnet.capture import Capture, CaptureState
    from edge_resnet.sources.picamera2 import Picamera2Frames

    rpk, _, script = write_network(tmp_path, [2], photo)
    opens = tmp_path / "opens.txt"
    d = json.loads(script.read_text())
    d.update(upload={"seconds": 600.0, "bytes": 2_800_000, "progress": "none"}, opens_file=str(opens))
    script.write_text(json.dumps(d))
    monkeypatch.setenv("EDGE_RESNET_FAKE_IMX500", str(script))
    src = Picamera2Frames(Picamera2Source(mode="imx500", network=str(rpk)), upload_grace_s=1.0)
    cap = Capture(src, watchdog_s=0.5, backoff_initial_s=0.1)
    seen: set[CaptureState] = set()
    cap.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(opens.read_text().splitlines() if opens.exists() else []) < 2:
            seen.add(cap.state())
            time.sleep(0.05)
    finally:
        cap.stop()
    assert CaptureState.WAITING in seen and len(opens.read_text().splitlines()) >= 2
    assert cap.stats().reconnects >= 1


def test_under_systemd_the_upload_is_ready_and_keeps_the_watchdog_fed(photo: Path, tmp_path: Path) -> None:
    """As a service (Type=notify, WatchdogSec, TimeoutStartSec=120 s) an upload of minutes must not read as a
    start that never ends or a hung daemon: READY=1 and WATCHDOG=1 come while the sensor has no network yet
    (here: WatchdogSec 2 s, an upload of 6 s), as they do while a lost camera is retried."""
    from .helpers.notify_socket import NotifySocket

    rpk, meta, script = write_network(tmp_path, [2], photo)
    d = json.loads(script.read_text())
    d.update(upload={"seconds": 6.0, "bytes": 2_800_000, "progress": "none"})
    script.write_text(json.dumps(d))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'device_id = "aicam"\nstate_dir = "{tmp_path / "state"}"\n[model]\npath = "{meta}"\n'
                   f'[source]\ntype = "picamera2"\nmode = "imx500"\nnetwork = "{rpk}"\n')
    with NotifySocket() as ns:
        env = _daemon_env(script)
        env.update(NOTIFY_SOCKET=ns.path, WATCHDOG_USEC="2000000")
        env.pop("WATCHDOG_PID", None)
        t0 = time.monotonic()
        child = RunChild(["--config", str(cfg)], env)
        try:
            def labelled() -> float | None:  # when STATUS= first named the sensor's label: after the upload
                return next((t for t, lines in list(ns.messages) if any("macaw" in ln for ln in lines)), None)

            deadline = t0 + 30
            while time.monotonic() < deadline and labelled() is None:
                assert child.p.poll() is None, child.tail()
                time.sleep(0.2)
            first = labelled()
            assert first is not None, "no label within 30 s:\n" + child.tail()
            assert first - t0 > 6.0  # the upload came first
            ready, pings = ns.times("READY=1"), ns.times("WATCHDOG=1")
            assert ready and ready[0] - t0 < 4.0, f"READY=1 only after {(ready or [first])[0] - t0:.1f} s"
            during = [t - t0 for t in pings if t < first - 0.5]
            gaps = [b - a for a, b in zip([0.0, *during], during, strict=False)]
            print(f"\nREADY=1 at {ready[0] - t0:.1f} s, first label at {first - t0:.1f} s, {len(during)} WATCHDOG=1 "
                  f"during the upload, largest gap {max(gaps or [0.0]):.1f} s")
            assert during and max(gaps) < 2.0, during
        finally:
            child.stop()
