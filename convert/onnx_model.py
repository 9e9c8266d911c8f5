"""Inspect an ONNX file and make it conversion-ready: one static image input, raw pixels in.

Checking here, before TensorFlow is even imported, turns "onnx2tf crashed 40 s in" into a
one-line error naming the file and the fix. `with_pixel_input` folds the preprocessing
normalisation into the graph so the converted model takes camera pixels (0..255) directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.errors import ModelError
from edge_resnet.preprocess import PreprocessSpec

PIXEL_INPUT = "pixels"
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}


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
