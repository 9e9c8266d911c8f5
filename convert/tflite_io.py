"""Small helpers over TFLite flatbuffers for the quantization passes (workstation only).

These passes need every intermediate tensor, so they drive the LiteRT interpreter directly,
without delegates (XNNPACK would hide intermediates). The device path never goes through here: it uses
`edge_resnet.engine`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt


def _fu() -> Any:
    """The flatbuffer schema helpers: LiteRT's own copy (no TensorFlow), else TensorFlow's."""
    try:
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:  # an ai-edge-litert without tools/ (tflite-runtime machines convert with TensorFlow)
        from tensorflow.lite.tools import flatbuffer_utils
    return flatbuffer_utils


def read(model: bytes) -> Any:
    """Mutable object tree (schema ModelT) of a flatbuffer."""
    return _fu().read_model_from_bytearray(bytearray(model))


def write(model: Any) -> bytes:
    return bytes(_fu().convert_object_to_bytearray(model))


def opcode_names(model: Any) -> list[str]:
    fu = _fu()
    return [str(fu.opcode_to_name(model, i)) for i in range(len(model.operatorCodes))]


def tensor_name(model: Any, index: int) -> str:
    name = model.subgraphs[0].tensors[index].name
    return name.decode() if isinstance(name, bytes) else str(name)


def buffer_array(model: Any, tensor_index: int, dtype: type[Any]) -> npt.NDArray[Any]:
    """Copy of a constant tensor's data, shaped."""
    t = model.subgraphs[0].tensors[tensor_index]
    data = bytes(model.buffers[t.buffer].data)
    return np.frombuffer(data, dtype).reshape(t.shape).copy()


def set_buffer(model: Any, tensor_index: int, values: npt.NDArray[Any]) -> None:
    t = model.subgraphs[0].tensors[tensor_index]
    model.buffers[t.buffer].data = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)


def debug_interpreter(model: bytes) -> Any:
    """Interpreter that keeps every intermediate tensor readable after invoke()."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=model,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        num_threads=os.cpu_count() or 1,
    )
    it.allocate_tensors()
    return it


def as_input(d: dict[str, Any], x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Pixels (or floats) as the input tensor `d` takes them: quantized with its scale and zero point
    when it is an integer tensor (int8 pixel input: scale 1, zero point -128), otherwise cast."""
    dtype = np.dtype(d["dtype"])
    scale, zero = d["quantization"]
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float64) / scale + zero)
        out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(dtype)
        return out
    return np.asarray(x, dtype)


def run(it: Any, x: npt.NDArray[Any]) -> None:
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], as_input(d, x)[np.newaxis])
    it.invoke()


def outputs(model: bytes, images: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Dequantized output rows for a batch of inputs (default delegates: only the output is read)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=os.cpu_count() or 1)
    it.allocate_tensors()
    d_in = it.get_input_details()[0]
    d_out = it.get_output_details()[0]
    scale, zero = d_out["quantization"]
    rows = []
    for x in images:
        it.set_tensor(d_in["index"], as_input(d_in, x)[np.newaxis])
        it.invoke()
        o = it.get_tensor(d_out["index"]).astype(np.float64).reshape(-1)
        rows.append((o - zero) * scale if scale else o)
    return np.stack(rows)
