"""onnxruntime as the reference the benchmark compares against: FP32 and static-QDQ INT8 sessions.

onnxruntime is imported lazily (the `bench` extra); a device without it still runs `bench` on the
TFLite model alone. INT8 is calibrated with the same images, through the same `prepare`, as the
TFLite model, so the two INT8 models differ only in their quantizer and kernels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DependencyError, InputError, ModelError
from ..preprocess import PreprocessSpec, TensorInfo, prepare
from .measure import Contender, rss_mb, timed

ORT_INSTALL = 'pip install "edge-resnet[bench]"'


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(f"onnxruntime is not installed; {ORT_INSTALL}") from None
    return onnxruntime


def onnx_input(path: str | os.PathLike[str]) -> TensorInfo:
    """The ONNX model's single image input (dynamic dimensions taken as 1)."""
    ort = _ort()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; an image classifier has one")
    i = inputs[0]
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape)
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ModelError(f"{path} input {i.name!r} has shape {i.shape}; edge-resnet needs a 3-channel image model")
    if i.type != "tensor(float)":
        raise ModelError(f"{path} input {i.name!r} is {i.type}; --onnx wants the float32 model")
    return TensorInfo(i.name, shape, np.dtype(np.float32))


def ort_contender(path: str | os.PathLike[str], backend: str, threads: int, x: npt.NDArray[Any]) -> Contender:
    """An onnxruntime CPU session pinned to `threads` intra-op threads, all graph optimisations on."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    before = rss_mb()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1000.0
    name = sess.get_inputs()[0].name
    feed = {name: x}
    first = timed(lambda: sess.run(None, feed))
    return Contender(
        backend,
        threads,
        lambda: sess.run(None, feed),
        load_ms,
        first,
        rss_mb() - before,
        {"onnxruntime": str(ort.__version__), "model": str(path)},
    )


def calibration_tensors(
    images: Iterable[npt.NDArray[np.uint8]], spec: PreprocessSpec, tensor: TensorInfo
) -> npt.NDArray[np.float32]:
    """BGR images -> the model's float inputs (batch dimension removed), via the one prepare()."""
    arrays = [prepare(img, spec, tensor, "BGR")[0] for img in images]
    if not arrays:
        raise InputError("no calibration images; pass --calib DIR with JPEG/PNG images")
    out: npt.NDArray[np.float32] = np.stack(arrays).astype(np.float32)
    return out


def calibration_files(folder: str | os.PathLike[str], count: int) -> list[Path]:
    """The calibration images of `folder`: with a labels.json (the shared-data layout), the entries
    in the calibration split (`images.in_calibration_split`); otherwise every image, sorted."""
    from ..images import in_calibration_split, list_images

    d = Path(folder)
    index = d / "labels.json"
    if index.exists():
        entries = json.loads(index.read_text(encoding="utf-8"))
        files = [d / e["file"] for i, e in enumerate(entries) if in_calibration_split(i)]
    else:
        files = list_images([d])
    if not files:
        raise InputError(f"no images in {d}; pass --calib DIR with the calibration images")
    return files[:count]
