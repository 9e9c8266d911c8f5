"""The TensorFlow-free path's own passes (convert/backend_litert.py) on tiny generated models.

They need onnx2tf 2.x and ai-edge-quantizer, i.e. Python >= 3.12: the device lab runs this file inside
its Python 3.13 (trixie) venv (tests/lab/test_convert_py313.py); on the 3.11 workstation venv it skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ai_edge_quantizer")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_resnet.convert import backend_litert, edgetpu, onnx_model, tflite_io  # noqa: E402
from edge_resnet.convert.quantize import sqnr_db  # noqa: E402
from edge_resnet.errors import ModelError  # noqa: E402
from edge_resnet.preprocess import PRESETS  # noqa: E402

SIZE = 16
DEAD, DEAD_BIAS = 2, 0.7


def _classifier(tmp: Path, relu_before_pool: bool, dead_channel: bool) -> Path:
    """Conv 3->8 (3x3) [-> Relu] -> MaxPool 3x3/2 pad 1 -> GlobalAveragePool -> Flatten -> Gemm 8->5."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    if dead_channel:
        w[DEAD] = 0.0
        b[DEAD] = DEAD_BIAS
    fc = rng.normal(0, 0.5, (5, 8)).astype(np.float32)
    fc[:, DEAD] = 3.0  # the dead channel's constant output matters to every class score
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(5, np.float32), "fcb")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    pooled_in = "c"
    if relu_before_pool:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        pooled_in = "r"
    nodes += [
        helper.make_node("MaxPool", [pooled_in], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _images(n: int = 24) -> Any:
    return np.random.default_rng(1).integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)


def _float(tmp: Path, relu: bool, dead: bool) -> tuple[bytes, Any]:
    model, info = onnx_model.load_classifier(_classifier(tmp, relu, dead))
    prepared = onnx_model.with_pixel_input(model, info, PRESETS["imagenet"])
    images = _images()
    return backend_litert.build_float(prepared, info, tmp / "work", images), images


def test_dead_channel_keeps_its_bias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    float_model, images = _float(tmp_path, relu=True, dead=True)
    stats = backend_litert.Statistics(float_model, images)
    quantizable, ties, _ = backend_litert.for_int8(float_model, stats)
    act, _ = stats.ranges("minmax")
    act.update({d: act[s] for d, s in ties.items()})
    monkeypatch.setattr(backend_litert, "fix_dead_channels", lambda m, f: (m, 0))
    raw = backend_litert.to_int8(quantizable, act, images)
    monkeypatch.undo()
    fixed, count = backend_litert.fix_dead_channels(raw, float_model)
    assert count == 1
    m = tflite_io.read(fixed)
    g = m.subgraphs[0]
    conv = next(op for op, n in zip(g.operators, [tflite_io.opcode_names(m)[o.opcodeIndex] for o in g.operators],
                                    strict=True) if n == "CONV_2D")  # fmt: skip
    bias = tflite_io.buffer_array(m, int(conv.inputs[2]), np.int32).astype(np.float64)
    scale = np.asarray(g.tensors[conv.inputs[2]].quantization.scale, np.float64)
    assert abs(bias[DEAD] * scale[DEAD] - DEAD_BIAS) < 1e-4
    ref = tflite_io.outputs(float_model, images)
    assert sqnr_db(ref, tflite_io.outputs(fixed, images)) > sqnr_db(ref, tflite_io.outputs(raw, images)) + 3


def test_uint8_input_gives_the_same_outputs_and_int8_versions(tmp_path: Path) -> None:
    float_model, images = _float(tmp_path, relu=True, dead=False)
    stats = backend_litert.Statistics(float_model, images)
    quantizable, ties, rewritten = backend_litert.for_int8(float_model, stats)
    assert rewritten == 1  # MaxPool's -inf padding on a ReLU output
    act, _ = stats.ranges("mse")
    act.update({d: act[s] for d, s in ties.items()})
    int8 = backend_litert.to_int8(quantizable, act, images)
    u8 = backend_litert.with_uint8_input(int8)
    it = tflite_io.debug_interpreter(u8)
    d = it.get_input_details()[0]
    assert d["dtype"] == np.uint8 and d["quantization"] == (1.0, 0)
    np.testing.assert_array_equal(tflite_io.outputs(int8, images), tflite_io.outputs(u8, images))
    for model in (int8, u8):
        flight = edgetpu.preflight(model)
        assert flight["ok"], flight
    assert edgetpu.preflight(u8)["op_versions"]["QUANTIZE"] == 1
    assert sqnr_db(tflite_io.outputs(float_model, images), tflite_io.outputs(int8, images)) > 25


def test_maxpool_on_negative_values_is_refused_with_the_fix(tmp_path: Path) -> None:
    float_model, images = _float(tmp_path, relu=False, dead=False)
    stats = backend_litert.Statistics(float_model, images)
    with pytest.raises(ModelError, match="--backend tf"):
        backend_litert.for_int8(float_model, stats)
