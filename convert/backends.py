"""Which conversion path runs: `litert` (onnx2tf 2.x + ai-edge-quantizer, no TensorFlow; the default
wherever it is installed, i.e. the `convert` extra on Python >= 3.12) or `tf` (onnx2tf 1.29 +
TensorFlow 2.19's calibrator, the `convert-tf` extra for Python 3.11). Both write the same bundle
from the same calibration images, range choice and bias correction."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx

from edge_resnet.errors import DependencyError

from .onnx_model import OnnxInfo
from .quantize import Quantized, RangeMethod

Backend = Literal["auto", "litert", "tf"]
InputType = Literal["auto", "int8", "uint8"]
BACKENDS = ("auto", "litert", "tf")


def _tf_available() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("onnx2tf").split(".")[0])
        version("tensorflow")
    except PackageNotFoundError:
        return 'the TensorFlow path needs the convert-tf extra (Python 3.11): pip install "edge-resnet[convert-tf]"'
    if major != 1:
        return (f"onnx2tf {version('onnx2tf')} is installed; the TensorFlow path needs onnx2tf 1.29 "
                '(pip install "edge-resnet[convert-tf]" on Python 3.11), or use --backend litert')
    return None


def choose(backend: Backend) -> Literal["litert", "tf"]:
    """The path to run; `auto` takes the TensorFlow-free one whenever it is installed."""
    from . import backend_litert

    if backend == "litert":
        why = backend_litert.available()
        if why:
            raise DependencyError(f"--backend litert: {why}")
        return "litert"
    if backend == "tf":
        why = _tf_available()
        if why:
            raise DependencyError(f"--backend tf: {why}")
        return "tf"
    if backend_litert.available() is None:
        return "litert"
    if _tf_available() is None:
        return "tf"
    raise DependencyError(
        'conversion needs the convert extra: pip install "edge-resnet[convert]" (Python >= 3.12; '
        'on Python 3.11: pip install "edge-resnet[convert-tf]")'
    )


def quantize(
    backend: Backend,
    prepared: onnx.ModelProto,
    info: OnnxInfo,
    images: npt.NDArray[np.uint8],
    workdir: Path,
    range_method: RangeMethod,
    correct_bias: bool,
    input_type: InputType = "auto",
) -> Quantized:
    """Run the chosen path. The TensorFlow path always makes a uint8 input; the LiteRT path int8 by
    default (what the device takes as it is), uint8 on request."""
    chosen = choose(backend)
    if chosen == "tf":
        if input_type == "int8":
            raise DependencyError("--input-type int8 needs the TensorFlow-free path (--backend litert)")
        from .quantize import quantize as tf_quantize

        q = tf_quantize(prepared, info, images, workdir, range_method, correct_bias)
        q.details.setdefault("backend", "onnx2tf 1.x + TensorFlow Lite converter")
        return q
    from . import backend_litert

    return backend_litert.quantize(
        prepared, info, images, workdir, range_method, correct_bias, "uint8" if input_type == "uint8" else "int8"
    )
