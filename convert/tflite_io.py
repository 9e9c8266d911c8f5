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


def output_rows(model: bytes, images: npt.NDArray[Any]) -> list[npt.NDArray[np.float64]]:
    """Dequantized rows of every output (scores first, then an embedding when there is one) for a batch of
    inputs (default delegates: only the outputs are read)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=os.cpu_count() or 1)
    it.allocate_tensors()
    d_in = it.get_input_details()[0]
    d_outs = it.get_output_details()
    rows: list[list[npt.NDArray[np.float64]]] = [[] for _ in d_outs]
    for x in images:
        it.set_tensor(d_in["index"], as_input(d_in, x)[np.newaxis])
        it.invoke()
        for d, out in zip(d_outs, rows, strict=True):
            scale, zero = d["quantization"]
            o = it.get_tensor(d["index"]).astype(np.float64).reshape(-1)
            out.append((o - zero) * scale if scale else o)
    return [np.stack(r) for r in rows]


def outputs(model: bytes, images: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Dequantized rows of output 0 (the scores) for a batch of inputs."""
    return output_rows(model, images)[0]


def output_names(model: bytes) -> list[str]:
    """Tensor names of the primary subgraph's outputs, in order (what the interpreter reports as "name")."""
    m = read(model)
    return [tensor_name(m, int(i)) for i in m.subgraphs[0].outputs]


def output_sizes(model: bytes) -> list[int]:
    """Elements per output of the primary subgraph, in order."""
    g = read(model).subgraphs[0]
    return [int(np.prod(g.tensors[int(i)].shape)) for i in g.outputs]


def _signature_name(sd: Any, tensor: int) -> str:
    for tm in sd.outputs or []:
        if int(tm.tensorIndex) == tensor:
            return tm.name.decode() if isinstance(tm.name, bytes) else str(tm.name)
    return ""


def logits_first(model: bytes, num_classes: int, hints: tuple[str, ...] = ()) -> bytes:
    """`model` with the output of `num_classes` elements (the scores) as output 0, in the subgraph and in
    every SignatureDef; the others keep their order behind it. TensorFlow orders a SavedModel signature's
    outputs by name, so a converted model with a second output may list it first; output 0 is what the
    candidate scoring, bias correction, verification and older readers read.

    When several outputs have `num_classes` elements, the one whose signature or tensor name is in
    `hints` is the scores (onnx2tf 1.x names signature outputs `output_0`, ... in ONNX order). Raises
    ValueError when no single output can be told to be the scores."""
    m = read(model)
    g = m.subgraphs[0]
    outs = [int(i) for i in g.outputs]
    found = [t for t in outs if int(np.prod(g.tensors[t].shape)) == num_classes]
    if len(found) > 1:
        sds = m.signatureDefs or []
        named = [t for t in found if tensor_name(m, t) in hints or any(_signature_name(sd, t) in hints for sd in sds)]
        found = named[:1] if len(named) == 1 else found
    if len(found) != 1:
        raise ValueError(
            f"cannot tell which of the outputs {[tensor_name(m, t) for t in outs]} holds the {num_classes} class scores"
        )
    first = found[0]
    if outs[0] == first and all(not sd.outputs or int(sd.outputs[0].tensorIndex) == first
                                for sd in m.signatureDefs or []):
        return model
    g.outputs = [first, *(t for t in outs if t != first)]
    for sd in m.signatureDefs or []:
        sd.outputs = sorted(sd.outputs or [], key=lambda tm: int(tm.tensorIndex) != first)
    return write(m)


def without_extra_outputs(model: bytes, keep: int = 1) -> bytes:
    """`model` with only its first `keep` outputs (subgraph and SignatureDefs): the tensors beyond stay
    computed where other ops read them, they are just no longer outputs (bench/embedding_cost.py)."""
    m = read(model)
    g = m.subgraphs[0]
    kept = [int(i) for i in g.outputs][:keep]
    g.outputs = kept
    for sd in m.signatureDefs or []:
        sd.outputs = [tm for tm in sd.outputs or [] if int(tm.tensorIndex) in kept]
    return write(m)
