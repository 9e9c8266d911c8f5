"""/healthz while the Edge TPU has failed and its CPU twin classifies: still 200 (a restart brings no
accelerator back; the daemon retries it itself), and the first line says `degraded: <why>` rather
than `ok`, so a probe or a person reading it sees the device runs on its slower path. A real pipeline
on a real video, the real HTTP sink over a socket; the Edge TPU classifier is a stand-in that starts
raising as the delegate does after a USB re-enumeration (none can exist here)."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_resnet.capture import Capture
from edge_resnet.classify import Classifier, Result
from edge_resnet.config import ModelConfig
from edge_resnet.model import load_classifier
from edge_resnet.pipeline import Pipeline
from edge_resnet.sinkconfig import HttpConfig
from edge_resnet.sinks.http import HttpSink
from edge_resnet.sources.opencv import OpenCvFrames
from tests.helpers.video import pick_samples, write_video

TPU = "mobilenet_v1_0.75_192_quant_edgetpu.tflite"
CPU = "mobilenet_v1_0.75_192_quant.tflite"


def healthz(url: str) -> tuple[int, list[str]]:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=5) as r:
            return r.status, r.read().decode().splitlines()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().splitlines()


def until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_healthz_first_line_says_degraded_while_the_cpu_twin_runs(
    models_dir: Path, labels_1001: Path, samples_dir: Path, tmp_path: Path
) -> None:
    tpu_path = tmp_path / TPU
    shutil.copy(models_dir / TPU, tpu_path)
    shutil.copy(models_dir / CPU, tmp_path / CPU)  # the CPU twin beside it, as `convert` leaves them
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 3), seconds_each=1.0, fps=10)
    fail = threading.Event()

    class FailingTpu(Classifier):
        """An Edge TPU classifier whose delegate starts failing when `fail` is set."""

        def classify(self, frame: Any, k: int = 5, frame_order: Any = "BGR", roi: Any = None) -> Result:
            if fail.is_set():
                raise RuntimeError("Failed to invoke edgetpu delegate: USB transfer error")
            return super().classify(frame, k, frame_order, roi)

    cpu = load_classifier(ModelConfig(path=str(tmp_path / CPU), labels=str(labels_1001), threads=1))
    tpu = FailingTpu(cpu.engine, cpu.labels, cpu.preprocess, cpu.label_offset, cpu.output_kind)
    tpu.engine.device = "edgetpu"  # type: ignore[misc]
    tpu.engine.model.path = tpu_path
    cap = Capture(OpenCvFrames(str(video), "file", realtime=True, loop=True))
    pipe = Pipeline(cap, tpu, [], model=ModelConfig(path=str(tpu_path), labels=str(labels_1001), device="edgetpu"))
    http = HttpSink(HttpConfig(listen="127.0.0.1:0"), pipe.status, pipe.sink_health)
    pipe.set_sinks([http])
    http.start()
    cap.start()
    pipe.start()
    try:
        assert until(lambda: http.bound_port and pipe.status().healthy, 20), pipe.status()
        url = http.url
        code, lines = healthz(url)
        assert (code, lines[0]) == (200, "ok"), lines
        fail.set()
        assert until(lambda: pipe.degraded is not None, 10)
        n = pipe.classified
        assert until(lambda: pipe.classified > n + 3, 10)  # the CPU twin classifies on
        code, lines = healthz(url)
        print(f"\n/healthz {code}: {lines[0]}")
        assert code == 200  # degraded, not failed: a restart would not bring the Edge TPU back
        assert lines[0] == pipe.status().reason
        assert lines[0].startswith("degraded: Edge TPU failed (Failed to invoke edgetpu delegate: USB transfer error)")
        assert f"running the CPU model {CPU}" in lines[0]
    finally:
        pipe.stop()
        cap.stop()
        http.stop()
