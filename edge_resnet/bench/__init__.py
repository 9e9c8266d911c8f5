"""`edge-resnet bench` and the benchmark scripts in bench/: device-side measuring, apart from the
pipeline stages. `core` runs the comparison (TFLite INT8 vs onnxruntime FP32/INT8), `measure` times
contenders interleaved, `ort_reference` is the onnxruntime side, `daemon` times the daemon's own
Capture + Pipeline on a video."""

from __future__ import annotations

from .core import BenchOptions, delegation, machine, ratios, run_benchmark, write_json

__all__ = ["BenchOptions", "delegation", "machine", "ratios", "run_benchmark", "write_json"]
