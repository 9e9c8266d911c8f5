"""Where a 1280x720 frame's preprocessing time goes, and what faster equivalents would give.

    .venv/bin/python bench/preprocess_options.py

Times (interleaved, one process) each step of `edge_resnet.preprocess.prepare` and the options it
chose between: the default "area_fast" resize (bilinear to 2x the target, then INTER_AREA by exactly
2, OpenCV's integer-factor fast path) against INTER_AREA at the fractional factor (what bundles
converted with "area" still get) and plain bilinear; integer inputs go through a per-channel
lookup table (cv2.LUT) and the channel swap through cv2.cvtColor. bench/area_fast_accuracy.py
shows what the resize choice does to classification.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.preprocess import PRESETS, TensorInfo, crop_box, crop_resize, prepare, to_input


def main() -> int:
    rng = np.random.default_rng(0)
    photo = cast(  # 8-bit BGR, or None when the file is missing
        "npt.NDArray[np.uint8] | None",
        cv2.imread(str(Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "cat_720p.jpg")),
    )
    frame = photo if photo is not None else rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    spec = PRESETS["imagenet"]
    int8_in = TensorInfo("x", (1, 224, 224, 3), np.dtype(np.int8), 0.018658, -14)  # onnx2tf-style int8 input
    raw_u8 = TensorInfo("x", (1, 224, 224, 3), np.dtype(np.uint8), 1.0, 0)  # convert's folded uint8 pixels
    folded = PRESETS["raw"]
    x0, y0, x1, y1 = crop_box(720, 1280, 224, 224, spec.crop_fraction)
    region = frame[y0:y1, x0:x1]
    img = crop_resize(frame, (224, 224), spec.crop_fraction, spec.interpolation)
    exact = crop_resize(frame, (224, 224), spec.crop_fraction, "area")
    old_spec = dataclasses.replace(spec, interpolation="area")

    cases: dict[str, Callable[[], object]] = {
        "prepare, int8 input + imagenet normalisation": lambda: prepare(frame, spec, int8_in, "BGR"),
        "prepare, folded uint8 pixel input (convert's bundles)": lambda: prepare(frame, folded, raw_u8, "BGR"),
        "prepare, int8 input, 'area' (bundles before area_fast)": lambda: prepare(frame, old_spec, int8_in, "BGR"),
        "  crop_resize 'area_fast' 630->448->224 (default)": lambda: crop_resize(frame, (224, 224)),
        "  crop_resize 'area' INTER_AREA 630->224": lambda: crop_resize(frame, (224, 224), 0.875, "area"),
        "  resize INTER_LINEAR (aliases)": lambda: cv2.resize(region, (224, 224), interpolation=cv2.INTER_LINEAR),
        "  to_input int8 (cvtColor + per-channel LUT)": lambda: to_input(img, "BGR", spec, int8_in),
        "  to_input folded uint8 (cvtColor only)": lambda: to_input(img, "BGR", folded, raw_u8),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(300):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append((time.perf_counter() - t0) * 1000.0)
    print(f"1280x720 BGR frame -> 224x224; cv2 threads {cv2.getNumThreads()}; 300 interleaved runs")
    for k, v in samples.items():
        print(f"{k:58s} p50 {np.median(v):6.3f} ms   min {np.min(v):6.3f} ms")
    diff = np.abs(img.astype(float) - exact.astype(float))
    print(f"area_fast vs area on this frame: max abs diff {int(diff.max())}, mean {diff.mean():.2f} (pixel units)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
