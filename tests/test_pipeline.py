"""Pipeline: smoothing (pure), fan-out to sinks, counters and status, no queue growth on a real
video at full speed with the real MobileNet, and model hot-swap that refuses a bad model."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_resnet.capture import Capture
from edge_resnet.config import ModelConfig, PipelineConfig
from edge_resnet.model import load_classifier
from edge_resnet.observation import Observation
from edge_resnet.pipeline import Pipeline
from edge_resnet.smoothing import Smoother
from edge_resnet.sources.opencv import OpenCvFrames

from .helpers.video import pick_samples, write_video

LABELS = ["background", "cat", "dog", "bird"]


def probs(*p: float) -> npt.NDArray[np.float32]:
    return np.asarray(p, dtype=np.float32)


CAT = probs(0.0, 0.8, 0.1, 0.1)
DOG = probs(0.0, 0.1, 0.8, 0.1)
WEAK_DOG = probs(0.0, 0.3, 0.4, 0.3)


def run_smoother(s: Smoother, seq: list[npt.NDArray[np.float32]]) -> list[tuple[str, bool]]:
    out = []
    for p in seq:
        pred, changed = s.update(p, LABELS, 1)
        out.append((pred.label, changed))
    return out


def test_smoothing_none_follows_every_frame() -> None:
    got = run_smoother(Smoother("none"), [CAT, DOG, CAT])
    assert got == [("cat", True), ("dog", True), ("cat", True)]


def test_smoothing_hysteresis_needs_window_frames_in_a_row() -> None:
    s = Smoother("hysteresis", window=3)
    got = run_smoother(s, [CAT, DOG, CAT, DOG, DOG, DOG, DOG])
    assert [g[0] for g in got] == ["cat", "cat", "cat", "cat", "cat", "dog", "dog"]
    assert [g[1] for g in got] == [True, False, False, False, False, True, False]
    assert s.current is not None and s.current.class_index == 1  # dataset index (offset 1 removed)


def test_smoothing_average_and_min_score() -> None:
    s = Smoother("average", window=4)
    got = run_smoother(s, [CAT, CAT, DOG, DOG, DOG])
    assert [g[0] for g in got] == ["cat", "cat", "cat", "cat", "dog"]  # a tie keeps the first, then dog leads
    s2 = Smoother("none", min_score=0.5)
    got2 = run_smoother(s2, [CAT, WEAK_DOG, DOG])
    assert got2 == [("cat", True), ("cat", False), ("dog", True)]


def test_smoothing_never_publishes_background() -> None:
    """Issue 14 case 6: an empty scene where `background` wins still publishes a real class."""
    empty = probs(0.7, 0.1, 0.15, 0.05)
    for mode in ("none", "average", "hysteresis"):
        got = run_smoother(Smoother(mode, window=1), [empty, empty])  # type: ignore[arg-type]
        assert got == [("dog", True), ("dog", False)], mode


# -- components on a real video with the real model --------------------------------------------


class RecordingSink:
    """Records what it is given; `publish` only appends (never blocks)."""

    def __init__(self, name: str = "rec", fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.obs: list[Observation] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def publish(self, obs: Observation) -> None:
        if self.fail:
            raise RuntimeError("sink bug")
        self.obs.append(obs)

    def stop(self, timeout: float = 2.0) -> None:
        self.stopped = True

    def healthy(self) -> tuple[bool, str]:
        return True, f"{self.name} fine"

    def counters(self) -> dict[str, float]:
        return {f"{self.name}_seen_total": float(len(self.obs))}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path) -> tuple[Path, list[Any]]:
    p = tmp_path_factory.mktemp("pipe") / "five.avi"
    schedule = write_video(p, pick_samples(samples_dir, 5), seconds_each=1.0, fps=20)
    return p, schedule


@pytest.fixture(scope="module")
def model_cfg(mobilenet_quant: Path, labels_1001: Path) -> ModelConfig:
    return ModelConfig(path=str(mobilenet_quant), labels=str(labels_1001), threads=1)


def run_pipeline(pipe: Pipeline, seconds: float) -> None:
    pipe.start()
    pipe.capture.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end and not pipe.ended:
        time.sleep(0.05)
    pipe.stop(2.0)
    pipe.capture.stop(2.0)


class LiveFile(OpenCvFrames):
    """A video file read at full speed but declared live: a camera faster than the model."""

    live = True  # type: ignore[assignment]


def test_live_source_at_full_speed_drops_and_never_queues(
    video: tuple[Path, list[Any]], model_cfg: ModelConfig
) -> None:
    """Must-show: on a live source that outpaces the model, frame age at publish stays below 2x the
    invoke time plus one capture interval; the surplus frames are dropped, not queued."""
    path, _ = video
    cap = Capture(LiveFile(str(path), "file", realtime=False, loop=True))
    assert cap.live
    sink = RecordingSink()
    pipe = Pipeline(cap, load_classifier(model_cfg), [sink], PipelineConfig(smoothing="none"))
    run_pipeline(pipe, 4.0)
    st = pipe.status()
    c = st.counters
    age50, age99 = pipe.frame_age_ms()
    inv50, inv99 = pipe.invoke_ms()
    interval_ms = 1000.0 / c["capture_fps"] if c["capture_fps"] else 0.0
    print(
        f"\nlive, full speed: capture {c['capture_fps']:.0f} fps (interval {interval_ms:.2f} ms), inference "
        f"{c['inference_fps']:.1f} fps, {int(c['frames_classified_total'])} classified, "
        f"{int(c['frames_dropped_total'])} dropped\n"
        f"frame age at publish p50 {age50:.1f} ms / p99 {age99:.1f} ms; "
        f"invoke p50 {inv50:.1f} ms / p99 {inv99:.1f} ms; "
        f"bound p50 {2 * inv50 + interval_ms:.1f} ms, p99 {2 * inv99 + interval_ms:.1f} ms"
    )
    assert c["frames_classified_total"] >= 20
    assert c["frames_dropped_total"] > c["frames_classified_total"]  # the camera outpaces the model
    assert age50 < 2 * inv50 + interval_ms
    assert age99 < 2 * inv99 + interval_ms
    # ages do not grow over the run: the last frames are as fresh as the first
    ages = [(o.classified_at - o.frame.captured_at) * 1000 for o in sink.obs]
    assert np.median(ages[-10:]) < 2 * inv99 + interval_ms


def test_file_at_full_speed_classifies_every_frame(video: tuple[Path, list[Any]], model_cfg: ModelConfig) -> None:
    """A file read as fast as it decodes is not live: capture waits for the pipeline, so every frame
    of the file reaches it in order, none is decoded in vain, and frames still do not queue (at most
    the one being read ahead)."""
    path, _ = video
    cap = Capture(OpenCvFrames(str(path), "file", realtime=False))
    assert not cap.live
    sink = RecordingSink()
    pipe = Pipeline(cap, load_classifier(model_cfg), [sink], PipelineConfig(smoothing="none"))
    run_pipeline(pipe, 30.0)  # returns when the file ended
    c = pipe.status().counters
    age50, age99 = pipe.frame_age_ms()
    inv50, inv99 = pipe.invoke_ms()
    print(
        f"\nnot live: {int(c['frames_captured_total'])} decoded, "
        f"{int(c['frames_classified_total'])} classified, {int(c['frames_dropped_total'])} dropped; "
        f"frame age p50 {age50:.1f} ms / p99 {age99:.1f} ms, invoke p50 {inv50:.1f} ms"
    )
    assert pipe.ended
    assert [o.frame.seq for o in sink.obs] == list(range(100))  # 5 photos x 1 s x 20 fps: all of them
    assert c["frames_captured_total"] == 100 and c["frames_dropped_total"] == 0
    assert age99 < 3 * inv99 + 50.0  # no queue: a frame waits for at most the one before it


def test_realtime_video_fan_out_status_and_labels(
    video: tuple[Path, list[Any]], model_cfg: ModelConfig, labels_1001: Path
) -> None:
    path, schedule = video
    cap = Capture(OpenCvFrames(str(path), "file", realtime=True))
    a, b, bad = RecordingSink("a"), RecordingSink("b"), RecordingSink("bad", fail=True)
    pipe = Pipeline(cap, load_classifier(model_cfg), [a, bad, b], PipelineConfig(smoothing="hysteresis", window=2))
    pipe.start()
    cap.start()
    assert pipe.wait_first(5.0)
    st = pipe.status()
    assert st.healthy and st.reason == "ok", st.reason
    assert pipe.sink_health() == {"a": "a fine", "bad": "bad fine", "b": "b fine"}
    assert set(st.labels) == {"model", "device", "delegate", "source"}  # static: one Prometheus info metric
    assert st.counters["source_up"] == 1.0
    assert "a_seen_total" in st.counters
    end = time.monotonic() + 10
    while not pipe.ended and time.monotonic() < end:
        time.sleep(0.05)
    pipe.stop()
    cap.stop()
    assert pipe.ended
    assert len(a.obs) == len(b.obs) > 20  # a failing sink does not starve the others
    changes = [o.label.class_index for o in a.obs if o.changed]
    expected = [seg.sample.class_index for seg in schedule]
    print("label changes:", changes, "expected:", expected)
    assert sum(1 for e in expected if e in changes) >= 4
    final = pipe.status()
    assert not final.healthy and "no more frames" in final.reason
    assert final.counters["inference_fps"] >= 0 and final.counters["frames_captured_total"] == 100


def test_max_fps_and_roi(video: tuple[Path, list[Any]], model_cfg: ModelConfig) -> None:
    path, _ = video
    cap = Capture(OpenCvFrames(str(path), "file", realtime=False, loop=True))
    sink = RecordingSink()
    pipe = Pipeline(cap, load_classifier(model_cfg), [sink], PipelineConfig(max_fps=5.0, roi=(1000, 1000, 1200, 1200)))
    run_pipeline(pipe, 2.2)
    n = len(sink.obs)
    print(f"max_fps 5: {n} frames in 2.2 s")
    assert 8 <= n <= 13  # the ROI lies outside the frame: warned once, whole frame classified
    cap2 = Capture(OpenCvFrames(str(path), "file", realtime=False))
    sink2 = RecordingSink()
    pipe2 = Pipeline(cap2, load_classifier(model_cfg), [sink2], PipelineConfig(roi=(0, 0, 160, 120)))
    run_pipeline(pipe2, 1.0)
    assert sink2.obs


def test_hot_swap_refuses_bad_model_and_keeps_running(
    video: tuple[Path, list[Any]], model_cfg: ModelConfig, models_dir: Path, tmp_path: Path, caplog: Any
) -> None:
    path, _ = video
    cap = Capture(OpenCvFrames(str(path), "file", realtime=True, loop=True))
    sink = RecordingSink()
    pipe = Pipeline(cap, load_classifier(model_cfg), [sink])
    pipe.start()
    cap.start()
    try:
        assert pipe.wait_first(5.0)
        corrupt = tmp_path / "corrupt.tflite"
        corrupt.write_bytes((models_dir / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()[:50_000])
        for bad in (corrupt, models_dir / "invalid_invoke.tflite", tmp_path / "missing.tflite"):
            n_before = len(sink.obs)
            assert not pipe.reload(ModelConfig(path=str(bad), labels=model_cfg.labels))
            time.sleep(0.3)
            assert len(sink.obs) > n_before  # still classifying
            assert sink.obs[-1].model == "mobilenet_v2_1.0_224_quant.tflite"
        refused = [r for r in caplog.records if "new model refused" in r.getMessage()]
        assert len(refused) == 3  # one line per refusal, no traceback
        print(refused[1].getMessage())
        assert pipe.status().counters["model_reload_failures_total"] == 3
        good = ModelConfig(path=str(models_dir / "mobilenet_v1_0.75_192_quant.tflite"), labels=model_cfg.labels)
        assert pipe.reload(good)
        deadline = time.monotonic() + 3
        while sink.obs[-1].model != "mobilenet_v1_0.75_192_quant.tflite" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.obs[-1].model == "mobilenet_v1_0.75_192_quant.tflite"
        assert pipe.status().labels["model"] == "mobilenet_v1_0.75_192_quant.tflite"
    finally:
        pipe.stop()
        cap.stop()


def test_stop_is_prompt_with_a_stuck_source() -> None:
    """A source whose read never returns cannot hold stop() hostage."""

    class Stuck:
        description = "stuck camera"

        def open(self) -> None:
            pass

        def read(self) -> None:
            threading.Event().wait(30)

        def close(self) -> None:
            pass

    cap = Capture(Stuck())  # type: ignore[arg-type]
    cap.start()
    t0 = time.monotonic()
    cap.stop(0.3)
    assert time.monotonic() - t0 < 1.0


def test_edgetpu_failure_falls_back_to_cpu_twin_and_reports_degraded(
    video: tuple[Path, list[Any]], models_dir: Path, labels_1001: Path, tmp_path: Path
) -> None:
    """Issue 7: the Edge TPU fails mid-run (here: an interpreter that starts raising, as the delegate
    does after a USB re-enumeration). The pipeline switches to the CPU twin beside the model, says
    "degraded", keeps classifying, and a retry while the Edge TPU is still away changes nothing."""
    import shutil

    from edge_resnet.classify import Classifier, Result

    tpu_path = tmp_path / "mobilenet_v1_0.75_192_quant_edgetpu.tflite"
    shutil.copy(models_dir / "mobilenet_v1_0.75_192_quant_edgetpu.tflite", tpu_path)
    shutil.copy(models_dir / "mobilenet_v1_0.75_192_quant.tflite", tmp_path / "mobilenet_v1_0.75_192_quant.tflite")
    tpu_cfg = ModelConfig(path=str(tpu_path), labels=str(labels_1001), device="edgetpu")

    class FlakyTpu(Classifier):
        """Stands in for an Edge TPU classifier (none can exist here) that fails after 5 frames."""

        calls = 0

        def classify(self, frame: Any, k: int = 5, frame_order: Any = "BGR", roi: Any = None) -> Result:
            FlakyTpu.calls += 1
            if FlakyTpu.calls > 5:
                raise RuntimeError("Failed to invoke edgetpu delegate: USB transfer error")
            return super().classify(frame, k, frame_order, roi)

    cpu = load_classifier(
        ModelConfig(path=str(models_dir / "mobilenet_v1_0.75_192_quant.tflite"), labels=str(labels_1001))
    )
    flaky = FlakyTpu(cpu.engine, cpu.labels, cpu.preprocess, cpu.label_offset, cpu.output_kind)
    flaky.engine.device = "edgetpu"  # type: ignore[misc]
    flaky.engine.model.path = tpu_path

    path, _ = video
    cap = Capture(OpenCvFrames(str(path), "file", realtime=True, loop=True))
    sink = RecordingSink()
    pipe = Pipeline(cap, flaky, [sink], model=tpu_cfg)
    pipe.start()
    cap.start()
    try:
        deadline = time.monotonic() + 10
        while pipe.degraded is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.degraded is not None
        n = len(sink.obs)
        time.sleep(1.0)
        assert len(sink.obs) > n + 5  # classifying on the CPU twin
        assert sink.obs[-1].model == "mobilenet_v1_0.75_192_quant.tflite"
        st = pipe.status()
        print(st.reason)
        assert st.healthy and st.reason.startswith("degraded: Edge TPU failed") and "CPU model" in st.reason
        assert st.counters["degraded"] == 1.0
        assert not pipe.retry_accelerator()  # no Edge TPU here: stays on the CPU, still degraded
        assert pipe.degraded is not None
    finally:
        pipe.stop()
        cap.stop()


def _obs(seq: int, changed: bool) -> Observation:
    from edge_resnet.observation import Frame, Prediction

    p = Prediction("cat", 1, 0.9)
    frame = Frame(np.zeros((2, 2, 3), np.uint8), seq, time.time(), time.monotonic())
    return Observation(frame, [p], p, changed, 1.0, "m.tflite", time.time())


def test_stdout_sink_changes_heartbeat_and_never_blocks() -> None:
    import io
    import json

    from edge_resnet.sinks.stdout import StdoutSink

    class Blocked(io.StringIO):
        """A pipe nobody reads: every write blocks until released."""

        def __init__(self) -> None:
            super().__init__()
            self.gate = threading.Event()

        def write(self, s: str) -> int:
            self.gate.wait(5)
            return super().write(s)

    out = Blocked()
    sink = StdoutSink(heartbeat_s=0.2, stream=out, queue_max=4)
    sink.start()
    t0 = time.monotonic()
    sink.publish(_obs(0, True))  # first: written (after the gate opens)
    for i in range(1, 50):
        sink.publish(_obs(i, i % 10 == 0))  # label changes every 10th frame
    assert time.monotonic() - t0 < 0.5  # publish never waited for the blocked pipe
    assert sink.dropped >= 1  # more changes than the queue holds: the oldest went
    time.sleep(0.25)
    sink.publish(_obs(99, False))  # heartbeat due: published although unchanged
    out.gate.set()
    sink.stop(2.0)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[-1]["frame_seq"] == 99 and not lines[-1]["changed"]
    assert {"label", "score", "class_index", "top_k", "frame_seq", "captured_at", "published_at", "model"} <= set(
        lines[0]
    )
