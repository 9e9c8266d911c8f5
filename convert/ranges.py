"""Activation ranges for INT8: exact pixel input range, MSE-optimal clipping for compute outputs.

Min/max calibration lets one outlier activation stretch a tensor's range, wasting most of its 256
levels on values that almost never occur. For each conv / fully-connected / add output we pick
the range that minimises the quantization mean squared error over a sample of the calibration
activations. Tensors whose range the quantizer ties to a neighbour (pooling, reshape, concat) and
the model's input and output keep their min/max: the output's tails decide the top-1 class.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from . import tflite_io

log = logging.getLogger(__name__)

REFINED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "SUB"})
PIXEL_RANGE = (0.0, 255.0)
_FACTORS = np.linspace(0.3, 1.0, 15)
_SAMPLE_BUDGET = 200_000  # values kept per tensor across all images
MAX_IMAGES = 64  # images whose activations are sampled for the MSE search


def quant_mse(x: npt.NDArray[np.float32], lo: float, hi: float, levels: int = 256) -> float:
    """Mean squared error of quantizing `x` uniformly onto `levels` steps over [lo, hi] (clipping outside)."""
    if hi <= lo:
        return float(np.mean(x.astype(np.float64) ** 2))
    s = (hi - lo) / (levels - 1)
    q = np.clip(np.round((x - lo) / s), 0, levels - 1) * s + lo
    return float(np.mean((q - x) ** 2))


def mse_range(x: npt.NDArray[np.float32], lo: float, hi: float) -> tuple[float, float]:
    """Shrink [lo, hi] by a common factor (lo stays 0 for non-negative data) to minimise quant MSE."""
    best = (quant_mse(x, lo, hi), lo, hi)
    for f in _FACTORS[:-1]:
        nlo = lo * f if lo < 0 else lo
        nhi = hi * f if hi > 0 else hi
        e = quant_mse(x, nlo, nhi)
        if e < best[0]:
            best = (e, nlo, nhi)
    return best[1], best[2]


def _set_range(t: Any, lo: float, hi: float) -> None:
    t.quantization.min = [float(lo)]
    t.quantization.max = [float(hi)]


def refine(calibrated: bytes, images: npt.NDArray[np.uint8], method: str = "mse") -> tuple[bytes, dict[str, Any]]:
    """Return the calibrated model with the input pinned to 0..255 and (for "mse") refined ranges."""
    model = tflite_io.read(calibrated)
    g = model.subgraphs[0]
    for i in g.inputs:
        if g.tensors[i].quantization is not None:
            _set_range(g.tensors[i], *PIXEL_RANGE)
    stats: dict[str, Any] = {"method": method, "tensors": 0, "clipped": 0}
    if method == "minmax":
        return tflite_io.write(model), stats
    if method != "mse":
        raise ValueError(f"unknown range method {method!r}")

    names = tflite_io.opcode_names(model)
    io = set(g.inputs) | set(g.outputs)
    targets: list[int] = []
    for op in g.operators:
        if names[op.opcodeIndex] not in REFINED_OPS:
            continue
        idx = int(op.outputs[0])
        q = g.tensors[idx].quantization
        if idx in io or q is None or q.min is None or len(q.min) != 1:
            continue
        targets.append(idx)
    if not targets:
        return tflite_io.write(model), stats

    # The calibrator's min/max over every image bound the search; the distribution shape inside
    # those bounds is sampled from a subset, which is where the time goes on deep models.
    lo = {i: float(g.tensors[i].quantization.min[0]) for i in targets}
    hi = {i: float(g.tensors[i].quantization.max[0]) for i in targets}
    used = images[:MAX_IMAGES]
    it = tflite_io.debug_interpreter(calibrated)
    per_image = max(64, _SAMPLE_BUDGET // max(1, len(used)))
    rng = np.random.default_rng(0)
    samples: dict[int, list[npt.NDArray[np.float32]]] = {i: [] for i in targets}
    for x in used:
        tflite_io.run(it, x)
        for i in targets:
            a = it.get_tensor(i).reshape(-1)
            samples[i].append(a[rng.integers(0, a.size, per_image)] if a.size > per_image else a.copy())
    clipped = 0
    for i in targets:
        if not hi[i] > lo[i]:
            continue
        nlo, nhi = mse_range(np.concatenate(samples[i]), lo[i], hi[i])
        clipped += (nlo, nhi) != (lo[i], hi[i])
        _set_range(g.tensors[i], nlo, nhi)
    stats.update(tensors=len(targets), clipped=int(clipped), images=len(used))
    log.info("MSE ranges: %d of %d activation tensors clipped", clipped, len(targets))
    return tflite_io.write(model), stats
