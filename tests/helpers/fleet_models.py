"""Models for the fleet tests, made in a second from a published MobileNet (real weights), as bundles:

- `constant_label`: the classifier layer's weights zeroed and one bias raised, so every frame gets
  the same class whatever the camera shows (a model that "works" and is useless);
- `slower`: the whole network copied `times` over in one graph (the copies' results are computed
  and never read; TFLite runs every operator), so it gives the same labels `times` times slower;
- `fails_on_frames`: a GATHER indexed by the input pixels in front of the network, over a table of
  200 entries: the warm-up invoke on the input's zero point (128) passes, a real frame (pixels up
  to 255) fails with "gather index out of bounds". It loads, is swapped in, and fails to invoke.

The flatbuffer edits go through LiteRT's own schema helpers (convert/tflite_io.py).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.bundle import BundleMeta, write_bundle
from edge_resnet.classify import read_labels
from edge_resnet.prepspec import PRESETS


def bundle(flat: bytes, labels_file: Path, out: Path, source: dict[str, Any] | None = None,
           files: dict[str, bytes] | None = None) -> Path:  # fmt: skip
    """A bundle of a published ImageNet model (uint8 input: camera bytes go in as they are)."""
    meta = BundleMeta(preprocess=PRESETS["inception"], labels=read_labels(labels_file), label_offset=1,
                      output_kind="probabilities", source=source or {})  # fmt: skip
    return write_bundle(flat, meta, out, files)


def digest(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def constant_label(flat: bytes, class_slot: int) -> bytes:
    from edge_resnet.convert import tflite_io

    m = tflite_io.read(flat)
    g = m.subgraphs[0]
    names = tflite_io.opcode_names(m)
    logits = [op for op in g.operators if names[op.opcodeIndex] == "CONV_2D"][-1]
    w, b = int(logits.inputs[1]), int(logits.inputs[2])
    wt = g.tensors[w]
    tflite_io.set_buffer(m, w, np.full(wt.shape, int(wt.quantization.zeroPoint[0]), np.uint8))
    bias = np.zeros(g.tensors[b].shape, np.int32)
    bias[class_slot] = 2**20
    tflite_io.set_buffer(m, b, bias)
    return bytes(tflite_io.write(m))


def slower(flat: bytes, times: int) -> bytes:
    from edge_resnet.convert import tflite_io

    m = tflite_io.read(flat)
    g = m.subgraphs[0]
    ops = list(g.operators)
    produced = sorted({int(o) for op in ops for o in op.outputs})
    for _ in range(times - 1):
        remap: dict[int, int] = {}
        for t in produced:
            g.tensors.append(copy.deepcopy(g.tensors[t]))
            remap[t] = len(g.tensors) - 1
        for op in ops:
            c = copy.deepcopy(op)
            c.inputs = [remap.get(int(i), int(i)) for i in op.inputs]
            c.outputs = [remap.get(int(o), int(o)) for o in op.outputs]
            g.operators.insert(0, c)  # weights shared (same buffers), intermediates of its own
    return bytes(tflite_io.write(m))


def fails_on_frames(flat: bytes, table: int = 200) -> bytes:
    from edge_resnet.convert import tflite_io

    s = _schema()
    m = tflite_io.read(flat)
    g = m.subgraphs[0]
    inp = int(g.inputs[0])
    shape = list(g.tensors[inp].shape)

    def opcode(code: int) -> int:
        for i, oc in enumerate(m.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        m.operatorCodes.append(oc)
        return len(m.operatorCodes) - 1

    def tensor(shape: list[int], ttype: int, name: str, data: np.ndarray[Any, Any] | None = None) -> int:
        buf = s.BufferT()
        if data is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        m.buffers.append(buf)
        t = s.TensorT()
        t.shape, t.type, t.name, t.buffer = shape, ttype, name, len(m.buffers) - 1
        g.tensors.append(t)
        return len(g.tensors) - 1

    idx = tensor(shape, s.TensorType.INT32, "fleet_test/indices")
    params = tensor([table], s.TensorType.INT32, "fleet_test/table", np.arange(table, dtype=np.int32))
    out = tensor(shape, s.TensorType.INT32, "fleet_test/gathered")
    cast = s.OperatorT()
    cast.opcodeIndex, cast.inputs, cast.outputs = opcode(s.BuiltinOperator.CAST), [inp], [idx]
    cast.builtinOptionsType, cast.builtinOptions = s.BuiltinOptions.CastOptions, s.CastOptionsT()
    cast.builtinOptions.inDataType, cast.builtinOptions.outDataType = s.TensorType.UINT8, s.TensorType.INT32
    gather = s.OperatorT()
    gather.opcodeIndex, gather.inputs, gather.outputs = opcode(s.BuiltinOperator.GATHER), [params, idx], [out]
    gather.builtinOptionsType, gather.builtinOptions = s.BuiltinOptions.GatherOptions, s.GatherOptionsT()
    g.operators[0:0] = [cast, gather]
    return bytes(tflite_io.write(m))
