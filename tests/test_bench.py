"""`edge-resnet bench` end to end on the real MobileNet v2 model: JSON schema and sane numbers.

No timing thresholds here: this machine is shared, so speed is judged by bench/readme_table.py
from ratios measured in one run, not by unit tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge_resnet.bench import BenchOptions, ratios
from edge_resnet.bench.core import _calibration
from edge_resnet.bench.measure import LatencyStats
from tests.conftest import run_cli

STATS = ("runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "fps")


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_latency_stats_are_ordered() -> None:
    s = LatencyStats.of([5.0, 1.0, 2.0, 3.0, 4.0])
    assert s.runs == 5
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.p50_ms == 3.0
    assert s.fps == pytest.approx(1000.0 / 3.0)


def test_ratios_pick_each_backends_best_thread_count() -> None:
    rows = [
        {"backend": "tflite", "threads": 1, "p50_ms": 12.0},
        {"backend": "tflite", "threads": 2, "p50_ms": 10.0},
        {"backend": "ort-int8", "threads": 1, "p50_ms": 12.0},
        {"backend": "ort-int8", "threads": 2, "p50_ms": 8.0},
    ]
    r = ratios(rows)
    assert r["same_threads"]["1"]["tflite/ort-int8"] == pytest.approx(1.0)
    assert r["best"]["tflite/ort-int8"] == pytest.approx(10.0 / 8.0)
    assert r["best"]["ort-int8"]["threads"] == 2
    assert r["scaling"]["tflite"]["1->2"] == pytest.approx(1.2)


def test_bench_cli_writes_valid_json(mobilenet_quant: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench", str(mobilenet_quant), "--threads", "1,2", "--runs", "4", "--warmup", "1",
        "--block", "2", "--preprocess-runs", "3", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[bench" in proc.stderr  # progress on stderr
    assert "p50 ms" in proc.stdout  # summary on stdout
    r = json.loads(out.read_text())

    assert r["schema"] == "edge-resnet-bench/1"
    m = r["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["python"] and "ai-edge-litert" in m["packages"]

    model = r["model"]
    assert model["input"]["shape"] == [1, 224, 224, 3] and model["input"]["dtype"] == "uint8"
    assert model["delegate"] == "xnnpack"
    graph = model["graph"]
    assert graph["ops"] > 0 and 0 < graph["delegated_ops"] <= graph["ops"]
    assert {o["op"] for o in graph["outside"]} <= set(graph["op_counts"])

    rows = r["invoke"]
    assert [(row["backend"], row["threads"]) for row in rows] == [("tflite", 1), ("tflite", 2)]
    for row in rows:
        assert row["runs"] == 4
        assert all(_positive(row[k]) for k in (*STATS, "load_ms", "first_invoke_ms"))
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert _positive(r["ratios"]["scaling"]["tflite"]["1->2"])

    assert [p["frame"] for p in r["preprocess"]] == ["640x480", "1280x720", "1920x1080"]
    for p in r["preprocess"]:
        assert p["runs"] == 3 and all(_positive(p[k]) for k in STATS)
    assert r["daemon"] == []
    mem = r["memory"]
    assert _positive(mem["peak_rss_mb"]) and mem["peak_rss_tflite_only_mb"] <= mem["peak_rss_mb"]


def test_bench_cli_rejects_a_missing_onnx(mobilenet_quant: Path, tmp_path: Path) -> None:
    proc = run_cli("bench", str(mobilenet_quant), "--onnx", str(tmp_path / "nope.onnx"))
    assert proc.returncode == 5
    assert "nope.onnx" in proc.stderr and "not found" in proc.stderr


def test_bench_cli_with_onnx_and_video(
    mobilenet_quant: Path, models_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """onnxruntime FP32 and INT8 (quantized on 4 calibration images) beside TFLite, and the daemon's
    pipeline on a short real video; numbers only checked for shape and sanity."""
    from tests.helpers.video import pick_samples, write_video

    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 2), seconds_each=1.0, fps=10, size=(320, 240))
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench", str(mobilenet_quant), "--onnx", str(models_dir / "mobilenet_v2_1.0_224.onnx"),
        "--preset", "inception", "--calib", str(samples_dir), "--calib-count", "4", "--threads", "1",
        "--runs", "3", "--warmup", "1", "--preprocess-runs", "2", "--video", str(video), "--video-seconds", "2",
        "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--plot", str(tmp_path / "bench.png"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [(row["backend"], row["threads"]) for row in r["invoke"]] == [
        ("tflite", 1), ("ort-fp32", 1), ("ort-int8", 1),
    ]  # fmt: skip
    for row in r["invoke"]:
        assert all(_positive(row[k]) for k in STATS)
    assert r["onnx"]["preprocess"]["preset"] == "inception"
    assert Path(r["onnx"]["int8"]).exists()
    same = r["ratios"]["same_threads"]["1"]
    assert _positive(same["tflite/ort-fp32"]) and _positive(same["tflite/ort-int8"])
    assert _positive(r["ratios"]["best"]["tflite/ort-int8"])
    [daemon] = r["daemon"]
    assert daemon["threads"] == 1 and daemon["frames_classified"] > 0
    assert all(_positive(daemon[k]) for k in ("fps", "raw_invoke_fps", "fps_over_raw_invoke", "frame_age_p50_ms"))
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_onnxruntime_int8_calibrates_on_the_bundles_own_images(tmp_path: Path) -> None:
    """A bundle names its calibration images (source.calibration.files); the onnxruntime INT8
    contender is calibrated on exactly those, not on a fresh pick from the folder."""
    for name in ("a/x.jpg", "y.png", "z.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    cal = {"folder": str(tmp_path), "files": ["a/x.jpg", "y.png"], "images": 2}
    engine = SimpleNamespace(model=SimpleNamespace(meta=SimpleNamespace(source={"calibration": cal})))
    assert _calibration(BenchOptions(model=Path("m.tflite")), engine) == [tmp_path / "a/x.jpg", tmp_path / "y.png"]  # type: ignore[arg-type]


def test_calib_count_takes_the_first_n_of_the_bundles_list(tmp_path: Path) -> None:
    """Issue 14 case 8: `--calib-count 20` with a bundle calibrates onnxruntime on 20 images (the first 20
    the bundle names), not on all 200; without it, all of them; --help says so."""
    names = [f"n{i:08d}_x.jpg" for i in range(200)]
    cal = {"folder": str(tmp_path), "files": names, "images": 200}
    engine = SimpleNamespace(model=SimpleNamespace(meta=SimpleNamespace(source={"calibration": cal})))
    got = _calibration(BenchOptions(model=Path("m.tflite"), calib_count=20), engine)  # type: ignore[arg-type]
    assert got == [tmp_path / n for n in names[:20]]
    assert len(_calibration(BenchOptions(model=Path("m.tflite")), engine)) == 200  # type: ignore[arg-type]
    helptext = " ".join(run_cli("bench", "--help").stdout.split())
    assert "A bundle names the images it was calibrated on and those are used" in helptext
    assert "the first N with this option" in helptext
