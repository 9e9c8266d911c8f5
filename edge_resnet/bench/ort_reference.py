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
from .measure import Contender, Progress, quiet, rss_mb, timed

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


def quantize_onnx(
    fp32: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: npt.NDArray[np.float32],
    progress: Progress = quiet,
    activations: str = "uint8",
) -> Path:
    """Static QDQ INT8, per-channel int8 weights, MinMax-calibrated on `calibration` (N x input
    shape, already preprocessed exactly as the device does).

    Activations default to uint8 (U8S8): onnxruntime's fast path on x86 (VPMADDUBSW); on this
    AVX2 machine S8S8 measured ~1.7x slower for ResNet-18. Pass "int8" for S8S8 (ARM's choice).
    """
    ort = _ort()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tensor = onnx_input(fp32)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src = _opset13(Path(fp32), out_path.with_suffix(".opset13.onnx"), progress)
    try:  # shape inference + graph optimisation first, as onnxruntime's quantization guide asks
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out_path.with_suffix(".pre.onnx")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if src != Path(fp32):
            src.unlink(missing_ok=True)
        src = pre
    except Exception as e:  # the pre-pass is an optimisation; quantize the original when it fails
        progress(f"onnxruntime quantization pre-processing skipped ({str(e).splitlines()[0][:120]})")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            x = next(self._it, None)
            return None if x is None else {tensor.name: x[np.newaxis].astype(np.float32)}

    progress(f"quantizing {Path(fp32).name} with onnxruntime {ort.__version__} on {len(calibration)} images")
    quantize_static(
        str(src),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    if src != Path(fp32):
        src.unlink(missing_ok=True)
    return out_path


def _opset13(src: Path, tmp: Path, progress: Progress) -> Path:
    """Per-channel QDQ needs DequantizeLinear's `axis` (opset 13); model-zoo ResNets are opset 7-9."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return src
    progress(f"upgrading {src.name} from opset {opset} to 13 for per-channel quantization")
    onnx.save(version_converter.convert_version(model, 13), str(tmp))
    return tmp


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
