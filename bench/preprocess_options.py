"""Where a 1280x720 frame's preprocessing time goes, and what faster equivalents would give.

    .venv/bin/python bench/preprocess_options.py

Times (interleaved, one process) each step of `edge_resnet.preprocess.prepare` against candidate
replacements, and says how far each candidate's output is from today's (max abs difference in
input-tensor units): a per-channel lookup table for integer inputs (cv2.LUT), cv2.cvtColor for the
channel swap, and a two-step resize (bilinear to 2x the target, then INTER_AREA by exactly 2, the
integer-factor fast path) instead of INTER_AREA at a fractional factor.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.preprocess import PRESETS, TensorInfo, affine, crop_box, crop_resize, prepare, to_input


def main() -> int:
    rng = np.random.default_rng(0)
    photo = cv2.imread(str(Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "cat_720p.jpg"))
    frame = photo if photo is not None else rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    spec = PRESETS["imagenet"]
    int8_in = TensorInfo("x", (1, 224, 224, 3), np.dtype(np.int8), 0.018658, -14)  # onnx2tf-style int8 input
    raw_u8 = TensorInfo("x", (1, 224, 224, 3), np.dtype(np.uint8), 1.0, 0)  # convert's folded uint8 pixels
    folded = PRESETS["raw"]
    x0, y0, x1, y1 = crop_box(720, 1280, 224, 224, spec.crop_fraction)
    region = frame[y0:y1, x0:x1]
    img = crop_resize(frame, (224, 224), spec.crop_fraction, spec.interpolation)
    a, b = affine(spec, int8_in)
    lut = np.stack([np.clip(np.rint(np.arange(256) * a[c] + b[c]), -128, 127) for c in range(3)], axis=1)
    lut_u8 = lut.astype(np.int8).view(np.uint8).reshape(1, 256, 3)

    def lut_input() -> np.ndarray:
        return cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), lut_u8).view(np.int8)[np.newaxis]

    def two_step() -> np.ndarray:
        up = cv2.resize(region, (448, 448), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(up, (224, 224), interpolation=cv2.INTER_AREA)

    cases: dict[str, Callable[[], object]] = {
        "prepare, int8 input + imagenet normalisation (today)": lambda: prepare(frame, spec, int8_in, "BGR"),
        "prepare, folded uint8 pixel input (today)": lambda: prepare(frame, folded, raw_u8, "BGR"),
        "  crop_resize INTER_AREA 630->224 (today)": lambda: crop_resize(frame, (224, 224)),
        "  resize bilinear ->448, INTER_AREA /2 (candidate)": two_step,
        "  resize INTER_LINEAR (candidate, aliases)": lambda: cv2.resize(
            region, (224, 224), interpolation=cv2.INTER_LINEAR
        ),
        "  to_input int8 float maths (today)": lambda: to_input(img, "BGR", spec, int8_in),
        "  to_input int8 via cvtColor + cv2.LUT (candidate)": lut_input,
        "  to_input folded uint8: [:, :, ::-1] copy (today)": lambda: to_input(img, "BGR", folded, raw_u8),
        "  channel swap via cv2.cvtColor (candidate)": lambda: cv2.cvtColor(img, cv2.COLOR_BGR2RGB),
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
    ref = to_input(img, "BGR", spec, int8_in)
    print(f"LUT vs today: max abs diff {int(np.abs(lut_input().astype(int) - ref.astype(int)).max())} (int8 units)")
    print(
        f"two-step vs INTER_AREA: max abs diff {int(np.abs(two_step().astype(int) - img.astype(int)).max())} "
        f"mean {np.abs(two_step().astype(float) - img.astype(float)).mean():.2f} (pixel units)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
