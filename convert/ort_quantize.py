"""onnxruntime's static INT8 quantization of an ONNX model: a workstation job, kept with the converter.
`edge-resnet bench` uses it for its onnxruntime INT8 contender (when the converter and onnxruntime
are installed); calibration tensors come from the device's own `prepare`, so the two INT8 models
differ only in their quantizer and kernels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_resnet.bench.measure import Progress, quiet
from edge_resnet.bench.ort_reference import _ort, onnx_input


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
