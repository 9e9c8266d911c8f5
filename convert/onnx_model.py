"""Inspect an ONNX file and make it conversion-ready: one static image input, raw pixels in.

Checking here, before TensorFlow is even imported, turns "onnx2tf crashed 40 s in" into a
one-line error naming the file and the fix. `with_pixel_input` folds the preprocessing
normalisation into the graph so the converted model takes camera pixels (0..255) directly.
`find_embedding` / `with_embedding_output` make the pooled features in front of the classifier a second
output, which every bundle carries for heads trained on the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.errors import ModelError
from edge_resnet.preprocess import PreprocessSpec

PIXEL_INPUT = "pixels"
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
NAME_CHARS = 60  # a tensor or node name in a log line or error: exporters write names of 200+ characters


def shorten(name: str, limit: int = NAME_CHARS) -> str:
    """`name` quoted, with its middle elided past `limit` characters: the start (the layer) and the end
    (what it computes) say which tensor it is; a fused TensorFlow name repeats everything in between."""
    if len(name) <= limit:
        return repr(name)
    head = (limit - 3) // 2
    return repr(name[:head] + "..." + name[len(name) - (limit - 3 - head) :])


@dataclass(frozen=True)
class OnnxInfo:
    """What conversion needs to know about an ONNX image classifier."""

    path: Path
    sha256: str
    opset: int
    input_name: str
    input_shape: tuple[int, int, int, int]  # batch fixed to 1
    layout: Literal["NCHW", "NHWC"]
    output_name: str
    num_classes: int
    dynamic_batch: bool
    op_types: frozenset[str]

    @property
    def hw(self) -> tuple[int, int]:
        s = self.input_shape
        return (s[2], s[3]) if self.layout == "NCHW" else (s[1], s[2])


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    out: list[int | str] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def load(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file; anything else is a ModelError saying what was expected."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ONNX model {p} not found; pass the path of a .onnx file")
    data = p.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception:
        raise ModelError(f"{p} is not an ONNX model (protobuf parse failed); pass a .onnx file") from None
    if not model.graph.node or not model.opset_import:
        raise ModelError(f"{p} is not an ONNX model (no graph or opset); pass a .onnx file")
    return model


def inspect(model: onnx.ModelProto, path: str | Path) -> OnnxInfo:
    """Check `model` is a single-input 4-D float image classifier and describe it."""
    p = Path(path)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(
            f"{p.name} has {len(inputs)} inputs {[i.name for i in inputs]}; "
            "an image classifier has exactly one image input"
        )
    inp = inputs[0]
    if inp.type.tensor_type.elem_type not in _FLOATS:
        raise ModelError(f"{p.name}: input {inp.name!r} is not a float tensor; expected a float image input")
    dims = _dims(inp)
    if len(dims) != 4:
        raise ModelError(
            f"{p.name}: input {inp.name!r} has shape {dims}; an image classifier takes a 4-D "
            "NCHW or NHWC image tensor"
        )
    batch, *rest = dims
    if any(not isinstance(d, int) for d in rest):
        raise ModelError(
            f"{p.name}: input {inp.name!r} has dynamic spatial size {dims}; re-export it with a fixed "
            "height and width"
        )
    r = [int(d) for d in rest]
    if r[0] == 3 and r[2] != 3:
        layout: Literal["NCHW", "NHWC"] = "NCHW"
    elif r[2] == 3:
        layout = "NHWC"
    else:
        raise ModelError(
            f"{p.name}: input {inp.name!r} shape {dims} has no 3-channel axis; expected an RGB/BGR image"
        )
    if len(model.graph.output) != 1:
        raise ModelError(
            f"{p.name} has {len(model.graph.output)} outputs; a classifier has one [N, classes] output"
        )
    out = model.graph.output[0]
    odims = _dims(out)
    classes = [d for d in odims[1:] if d != 1]
    if not odims or len(classes) != 1 or not isinstance(classes[0], int) or classes[0] < 2:
        raise ModelError(
            f"{p.name}: output {out.name!r} has shape {odims}; an image classifier outputs "
            "[N, classes] scores"
        )
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        path=p,
        sha256=hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        opset=int(opset),
        input_name=inp.name,
        input_shape=(1, r[0], r[1], r[2]),
        layout=layout,
        output_name=out.name,
        num_classes=int(classes[0]),
        dynamic_batch=not isinstance(batch, int),
        op_types=frozenset(n.op_type for n in model.graph.node),
    )


def load_classifier(path: str | Path) -> tuple[onnx.ModelProto, OnnxInfo]:
    model = load(path)
    return model, inspect(model, path)


def _fix_batch(vi: onnx.ValueInfoProto) -> None:
    dims = vi.type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
        dims[0].Clear()
        dims[0].dim_value = 1


def with_pixel_input(model: onnx.ModelProto, info: OnnxInfo, spec: PreprocessSpec) -> onnx.ModelProto:
    """Copy of `model` with batch 1 and input `pixels` = 0..255 values in the model's channel order.

    The normalisation `(pixel - mean) / std` becomes a Sub and a Mul in front of the network, so the
    quantized model's uint8 input holds pixels exactly (scale 1, zero point 0): the device copies
    camera bytes, and calibration ranges start from the true pixel range.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    # Stale intermediate shapes with a symbolic batch confuse onnxsim once the input is static.
    del g.value_info[:]
    inp = next(i for i in g.input if i.name == info.input_name)
    _fix_batch(inp)
    for o in g.output:
        _fix_batch(o)
    shape = (1, 3, 1, 1) if info.layout == "NCHW" else (1, 1, 1, 3)
    mean = np.asarray(spec.mean, np.float32).reshape(shape)
    scale = (1.0 / np.asarray(spec.std, np.float64)).astype(np.float32).reshape(shape)
    if np.allclose(mean, 0) and np.allclose(scale, 1):
        inp.name = PIXEL_INPUT
        _rename_input_uses(g, info.input_name, PIXEL_INPUT)
        return m
    g.initializer.extend(
        [numpy_helper.from_array(mean, "edge_resnet_mean"), numpy_helper.from_array(scale, "edge_resnet_scale")]
    )
    nodes = [
        helper.make_node("Sub", [PIXEL_INPUT, "edge_resnet_mean"], ["edge_resnet_centred"], name="pp_sub"),
        helper.make_node("Mul", ["edge_resnet_centred", "edge_resnet_scale"], [info.input_name], name="pp_mul"),
    ]
    for n in reversed(nodes):
        g.node.insert(0, n)
    inp.name = PIXEL_INPUT
    return m


def _rename_input_uses(g: onnx.GraphProto, old: str, new: str) -> None:
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


# ---- the embedding: the pooled feature vector the classifier reads ----------------------------------

# ops between the classifier and the graph output that keep the class scores' values or order
_SCORE_TAIL = {"Softmax", "LogSoftmax", "Flatten", "Reshape", "Squeeze", "Identity", "Dropout"}
# ops between the pooling and the classifier that only change the shape ([1, C, 1, 1] -> [1, C])
_SHAPE_ONLY = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout"}
_POOLS = {"GlobalAveragePool", "ReduceMean", "AveragePool"}


@dataclass(frozen=True)
class Embedding:
    """The tensor holding the feature vector in front of the final classifier op."""

    name: str
    size: int  # D: elements per image
    shape: tuple[int, ...]  # batch 1
    classifier: str  # the op that reads it: "Gemm", "MatMul", "Conv"

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_tensor": self.name, "size": self.size, "classifier": self.classifier}


def _constant(g: onnx.GraphProto, producers: dict[str, onnx.NodeProto], name: str) -> npt.NDArray[Any] | None:
    """The value of an initializer or Constant-node output, else None."""
    for init in g.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Inferred shapes of every tensor (batch as it is); empty where ONNX shape inference cannot say."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model onnxruntime runs can still trip the checker's inference (custom domains)
        inferred = model
    g = inferred.graph
    return {vi.name: _dims(vi) for vi in [*g.value_info, *g.input, *g.output] if vi.type.tensor_type.HasField("shape")}


def trace_embedding(model: onnx.ModelProto) -> Embedding | str:
    """The classifier's input tensor (see `find_embedding`), or why there is none (one clause)."""
    g = model.graph
    if len(g.output) != 1:
        return f"the graph has {len(g.output)} outputs, not one score output"
    producers = {o: n for n in g.node for o in n.output}
    t = g.output[0].name
    node = producers.get(t)
    while node is not None and node.op_type in _SCORE_TAIL:
        t = node.input[0]
        node = producers.get(t)
    if node is None:
        return f"nothing computes {t!r}"
    if node.op_type == "Add":  # MatMul + bias
        inner = [producers.get(i) for i in node.input]
        matmul = [n for n in inner if n is not None and n.op_type == "MatMul"]
        others = [i for i in node.input if producers.get(i) not in matmul]
        if len(matmul) != 1 or len(others) != 1 or _constant(g, producers, others[0]) is None:
            return "the scores come from an Add that is not a MatMul's bias"
        node = matmul[0]
    kind = node.op_type
    if kind not in ("Gemm", "MatMul", "Conv"):
        return f"the scores come from a {kind}, not a Gemm, MatMul or 1x1 Conv classifier"
    if len(node.input) < 2:
        return f"the {kind} classifier has no weight input"
    w = _constant(g, producers, node.input[1])
    if w is None:
        return f"the {kind} classifier's weights are not a constant"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shapes = _shapes(model)
    x = node.input[0]
    if kind == "Gemm":
        if attrs.get("transA", 0):
            return "the Gemm classifier transposes its input"
        if w.ndim != 2:
            return "the Gemm classifier's weights are not a matrix"
        size = int(w.shape[1] if attrs.get("transB", 0) else w.shape[0])
    elif kind == "MatMul":
        if w.ndim != 2:
            return "the MatMul classifier's weights are not a matrix"
        size = int(w.shape[0])
    else:
        if w.ndim != 4 or tuple(w.shape[2:]) != (1, 1) or int(attrs.get("group", 1)) != 1:
            return "the Conv classifier is not a 1x1 convolution"
        hw = shapes.get(x, [])[2:]
        if hw != [1, 1]:
            return f"the 1x1 Conv classifier reads a {hw or 'unknown'} map, not a pooled 1x1 one"
        size = int(w.shape[1])
    if _constant(g, producers, x) is not None or x in {i.name for i in g.input}:
        return f"the {kind} classifier reads no computed features"
    # [1, C, 1, 1] -> [1, C] on the way in: the pooled tensor is the same D values, one op earlier
    src = producers.get(x)
    while src is not None and src.op_type in _SHAPE_ONLY:
        up = producers.get(src.input[0])
        if up is None:
            break
        if up.op_type in _POOLS:
            x = src.input[0]
            break
        src = up
    dims = shapes.get(x)
    shape = tuple(int(d) if isinstance(d, int) else 1 for d in dims) if dims else (1, size)
    shape = (1, *shape[1:])
    if int(np.prod(shape)) != size:
        return f"{x!r} has shape {list(shape)}, not the {size} values the {kind} classifier reads"
    return Embedding(x, size, shape, kind)


def find_embedding(model: onnx.ModelProto) -> Embedding | None:
    """The embedding of a classifier graph: walking back from the output through Softmax / Flatten /
    Reshape / Squeeze / Identity / Dropout to the final Gemm, MatMul(+Add) or 1x1 Conv on a 1x1 map, the
    tensor that op reads (through a Flatten/Reshape/Squeeze back to the pooling output when there is one:
    the same D values). None when the graph has no such structure (`trace_embedding` says why)."""
    found = trace_embedding(model)
    return found if isinstance(found, Embedding) else None


def with_embedding_output(model: onnx.ModelProto, emb: Embedding) -> onnx.ModelProto:
    """Copy of `model` whose graph also outputs `emb` (second output, float; its batch dimension as the
    scores', fixed or symbolic)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if any(o.name == emb.name for o in m.graph.output):
        return m
    batch: int | str = 1
    dims = m.graph.output[0].type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
        batch = dims[0].dim_param or "batch"
    m.graph.output.append(helper.make_tensor_value_info(emb.name, TensorProto.FLOAT, [batch, *emb.shape[1:]]))
    return m


def with_flat_extra_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` whose outputs after the first, when pooled maps ([1, D, 1, 1]), are [1, D] instead:
    the Flatten/Reshape the graph already applies to them where it has one, else a new Flatten.

    For onnx2tf 2.x (flatbuffer_direct): it gives a 4-D output back its ONNX (NCHW) layout, and on MobileNet
    v2 that costs a RESHAPE plus two full-size TRANSPOSEs around the pixel input (its layout pass no longer
    removes them); a [1, D] output costs one RESHAPE of D values, or nothing when the classifier already reads
    a flattened copy (ResNets)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    shapes = _shapes(m)
    for out in g.output[1:]:
        dims = _dims(out)
        if len(dims) < 3 or not all(isinstance(d, int) for d in dims[1:]):
            continue
        size = int(np.prod([int(d) for d in dims[1:]]))
        if sum(int(d) != 1 for d in dims[1:]) != 1:
            continue  # a real map, not pooled features
        flat = next(
            (n.output[0] for n in g.node if n.op_type in _SHAPE_ONLY and n.input and n.input[0] == out.name
             and shapes.get(n.output[0], [])[1:] == [size]),
            None,
        )  # fmt: skip
        if flat is None:
            flat = f"{out.name}_flat"
            g.node.append(helper.make_node("Flatten", [out.name], [flat], axis=1, name=f"{out.name}_flatten"))
        batch = dims[0]
        out.CopyFrom(helper.make_tensor_value_info(flat, out.type.tensor_type.elem_type, [batch, size]))
    return m
