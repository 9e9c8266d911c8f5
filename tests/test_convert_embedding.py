"""Issue 20 part 1: every converted bundle also outputs the pooled features in front of the classifier.

`onnx_model.find_embedding` finds that tensor in the ONNX graph (the classifier's input, or the pooling
output it is a reshape of), conversion adds it as a second output, keeps the scores as output 0 in every
model it makes, and names the embedding in the bundle's metadata. Three conversions run here: a 64x64
ResNet-18 with and without the embedding (the second proves nothing else changed) and MobileNet v2 on a
small calibration set (the Edge TPU pre-flight on a real network with an AVERAGE_POOL_2D embedding).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.bundle import read_model
from edge_resnet.classify import Classifier, dequantize
from edge_resnet.convert import edgetpu, onnx_model, tflite_io
from edge_resnet.convert.onnx_model import Embedding
from edge_resnet.convert.pipeline import ConvertJob, ConvertResult, run
from edge_resnet.convert.quantize import sqnr_db
from edge_resnet.engine import Engine
from edge_resnet.errors import ModelError
from edge_resnet.images import load_image
from edge_resnet.preprocess import PRESETS
from tests.conftest import run_cli
from tests.helpers.resnet_onnx import make_resnet

SIZE = 64  # as tests/test_convert_models.py: every ResNet stage runs, the conversion takes ~20 s

RESNETS = [
    (18, 1, "zoo"), (18, 2, "zoo"), (18, 1, "torchvision"), (50, 1, "zoo"), (50, 2, "zoo"), (50, 1, "torchvision"),
]  # fmt: skip


# --- finding the embedding in the ONNX graph -------------------------------------------------------


@pytest.mark.parametrize("depth,version,style", RESNETS)
def test_generated_resnet_embedding_is_the_global_average_pool(depth: int, version: int, style: Any) -> None:
    m = make_resnet(depth, version, input_size=SIZE, style=style)
    gap = next(n for n in m.graph.node if n.op_type == "GlobalAveragePool")
    d = 512 if depth == 18 else 2048
    assert onnx_model.find_embedding(m) == Embedding(gap.output[0], d, (1, d, 1, 1), "Gemm")


@pytest.mark.component
@pytest.mark.parametrize("depth,version,style", [(18, 1, "torchvision"), (50, 2, "zoo")])
def test_added_output_is_what_the_classifier_reads(depth: int, version: int, style: Any) -> None:
    """onnxruntime on the model with the second output: the scores are unchanged, and the classifier's
    Gemm applied to the embedding gives them (so it is the classifier's input, not a neighbour)."""
    m = make_resnet(depth, version, input_size=SIZE, style=style, num_classes=10)
    emb = onnx_model.find_embedding(m)
    assert emb is not None
    two = onnx_model.with_embedding_output(m, emb)
    assert [o.name for o in two.graph.output] == [m.graph.output[0].name, emb.name]
    assert onnx_model._dims(two.graph.output[1])[0] == onnx_model._dims(m.graph.output[0])[0]
    onnx.checker.check_model(two)
    n = 2 if style == "torchvision" else 1  # torch exports have a dynamic batch, kept on the new output
    x = np.random.default_rng(0).normal(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    name = m.graph.input[0].name
    scores = ort.InferenceSession(m.SerializeToString()).run(None, {name: x})[0]
    s2, e2 = ort.InferenceSession(two.SerializeToString()).run(None, {name: x})
    np.testing.assert_array_equal(scores, s2)
    assert e2.shape == (n, emb.size, 1, 1)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    fc = next(n for n in m.graph.node if n.op_type == "Gemm")
    np.testing.assert_allclose(e2.reshape(n, -1) @ inits[fc.input[1]].T + inits[fc.input[2]], scores, rtol=1e-4,
                               atol=1e-4)  # fmt: skip


def test_data_models_embeddings(models_dir: Path) -> None:
    """MobileNet v2: AveragePool -> 1x1 Conv -> Reshape; ResNet-8 (Keras via tf2onnx): AveragePool -> Reshape
    -> MatMul + Add -> Softmax."""
    mnv2 = onnx_model.find_embedding(onnx.load(str(models_dir / "mobilenet_v2_1.0_224.onnx")))
    assert mnv2 == Embedding("MobilenetV2/Logits/AvgPool_prequant", 1280, (1, 1280, 1, 1), "Conv")
    r8 = onnx_model.find_embedding(onnx.load(str(models_dir / "resnet8_cifar10.onnx")))
    assert r8 == Embedding("model/average_pooling2d/AvgPool", 64, (1, 64, 1, 1), "MatMul")


@pytest.mark.component
def test_flat_extra_outputs_for_onnx2tf_2(models_dir: Path) -> None:
    """The TensorFlow-free path outputs the embedding as [1, D]: a ResNet's own Flatten of the pooled map, or a
    new Flatten after MobileNet v2's AveragePool (the 4-D output made onnx2tf 2.x transpose the pixel input)."""
    r18 = make_resnet(18, 1, input_size=SIZE, num_classes=10)
    mnv2 = onnx.load(str(models_dir / "mobilenet_v2_1.0_224.onnx"))
    for model, flat_name, hw in ((r18, None, SIZE), (mnv2, "MobilenetV2/Logits/AvgPool_prequant_flat", 224)):
        emb = onnx_model.find_embedding(model)
        assert emb is not None
        two = onnx_model.with_embedding_output(model, emb)
        flat = onnx_model.with_flat_extra_outputs(two)
        existing = next((n.output[0] for n in model.graph.node if n.op_type == "Flatten"), None)
        assert flat.graph.output[1].name == (flat_name or existing)
        assert onnx_model._dims(flat.graph.output[1])[1:] == [emb.size]
        assert len(flat.graph.node) == len(model.graph.node) + (flat_name is not None)
        name = model.graph.input[0].name
        x = np.random.default_rng(0).normal(0, 1, (1, 3, hw, hw)).astype(np.float32)
        s4, e4 = ort.InferenceSession(two.SerializeToString()).run(None, {name: x})
        s2, e2 = ort.InferenceSession(flat.SerializeToString()).run(None, {name: x})
        np.testing.assert_array_equal(s4, s2)
        np.testing.assert_array_equal(e4.reshape(1, -1), e2)


def _tail(*nodes: onnx.NodeProto, inits: list[onnx.TensorProto], out_shape: list[int]) -> onnx.ModelProto:
    """x [1,3,8,8] -> Conv 3x3 8 channels "c" -> `nodes` ending in "y"."""
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *nodes], "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w, *inits],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_graphs_without_the_structure_say_why() -> None:
    fc = numpy_helper.from_array(np.ones((5, 8), np.float32), "fc")
    k = numpy_helper.from_array(np.ones((5, 8, 1, 1), np.float32), "k")
    cases = {
        "not a Gemm, MatMul or 1x1 Conv": _tail(
            helper.make_node("GlobalMaxPool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"]),
            inits=[], out_shape=[1, 8]),
        "reads a [8, 8] map": _tail(helper.make_node("Conv", ["c", "k"], ["y"]), inits=[k], out_shape=[1, 5, 8, 8]),
        "weights are not a constant": _tail(
            helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "f"], ["y"], transB=1), inits=[], out_shape=[1, 1]),
    }  # fmt: skip
    for why, model in cases.items():
        found = onnx_model.trace_embedding(model)
        assert isinstance(found, str) and why in found, (why, found)
        assert onnx_model.find_embedding(model) is None
    ok = _tail(helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
               helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1), inits=[fc], out_shape=[1, 5])  # fmt: skip
    assert onnx_model.find_embedding(ok) == Embedding("p", 8, (1, 8, 1, 1), "Gemm")


# --- conversions ------------------------------------------------------------------------------------


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedding")


def _convert(work: Path, samples_dir: Path, name: str, onnx_path: Path, **kw: Any) -> ConvertResult:
    job: dict[str, Any] = {"preprocess": PRESETS["imagenet"], "calib_count": 64, "eval_limit": 40, **kw}
    return run(ConvertJob(onnx=onnx_path, calib=samples_dir, out=work / name, eval_dir=samples_dir,
                          max_top1_drop=None, **job))  # fmt: skip


@pytest.fixture(scope="module")
def r18_onnx(work: Path) -> Path:
    p = work / "resnet18.onnx"
    onnx.save(make_resnet(18, 1, input_size=SIZE), str(p))
    return p


@pytest.fixture(scope="module")
def r18(work: Path, samples_dir: Path, r18_onnx: Path) -> ConvertResult:
    result = _convert(work, samples_dir, "r18", r18_onnx, keep_float=True)  # the tests compare with the FP32 model
    assert result.float_model is not None and result.float_model.name == "resnet18_float32.tflite"
    return result


def _float(r: ConvertResult) -> Path:
    assert r.float_model is not None
    return r.float_model


@pytest.fixture(scope="module")
def r18_without(work: Path, samples_dir: Path, r18_onnx: Path) -> Iterator[tuple[ConvertResult, list[str]]]:
    """The same conversion as before issue 20: the embedding search answers "none"."""
    seen = _Warnings()
    logging.getLogger("edge_resnet.convert").addHandler(seen)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_model, "trace_embedding", lambda m: "switched off by the test")
        result = _convert(work, samples_dir, "r18_without", r18_onnx)
    logging.getLogger("edge_resnet.convert").removeHandler(seen)
    yield result, seen.lines


@pytest.fixture(scope="module")
def mobilenet(work: Path, samples_dir: Path, models_dir: Path, labels_1001: Path) -> ConvertResult:
    return _convert(work, samples_dir, "mnv2", models_dir / "mobilenet_v2_1.0_224.onnx",
                    preprocess=PRESETS["inception"], labels=labels_1001, calib_count=48, eval_limit=24)  # fmt: skip


def _frames(samples_dir: Path, n: int) -> list[npt.NDArray[np.uint8]]:
    entries = json.loads((samples_dir / "labels.json").read_text())
    return [load_image(samples_dir / e["file"]) for i, e in enumerate(entries) if i % 5][:n]


def test_bundle_metadata_names_the_embedding(r18: ConvertResult, r18_onnx: Path) -> None:
    gap = next(n for n in onnx.load(str(r18_onnx)).graph.node if n.op_type == "GlobalAveragePool").output[0]
    for path in (r18.bundle, _float(r18)):  # the float model names its tensors its own way
        mf = read_model(path)
        assert mf.meta is not None
        names = tflite_io.output_names(mf.flatbuffer)
        assert tflite_io.output_sizes(mf.flatbuffer) == [1000, 512]
        assert mf.meta.embedding == {"output": names[1], "size": 512, "onnx_tensor": gap}
    rep = r18.report["embedding"]
    assert rep["size"] == 512 and rep["onnx_tensor"] == gap and rep["images"] == 40
    assert rep["sqnr_db"] > 20 and rep["cosine_mean"] > 0.98 and rep["calib_sqnr_db"] > 20
    assert "embedding output: 512 values" in r18.report_md.read_text()
    assert json.loads(r18.report_json.read_text())["embedding"]["sqnr_db"] == rep["sqnr_db"]


def test_engine_gives_scores_and_an_int8_embedding_that_agrees_with_float(
    r18: ConvertResult, samples_dir: Path
) -> None:
    engine = Engine.load(r18.bundle, "cpu")
    assert engine.delegate == "xnnpack"
    assert engine.output.dtype == np.int8 and int(np.prod(engine.output.shape)) == 1000
    assert engine.embedding is not None and engine.embedding.dtype == np.int8
    assert int(np.prod(engine.embedding.shape)) == 512
    fengine = Engine.load(_float(r18), "cpu")
    assert fengine.embedding is not None and fengine.embedding.dtype == np.float32
    clf, fclf = Classifier(engine), Classifier(fengine)
    got, ref = [], []
    for frame in _frames(samples_dir, 6):
        engine.invoke(clf.prepare(frame))
        fengine.invoke(fclf.prepare(frame))
        got.append(dequantize(engine.embedding_row(), engine.embedding).astype(np.float64))
        ref.append(dequantize(fengine.embedding_row(), fengine.embedding).astype(np.float64))
    g, r = np.stack(got), np.stack(ref)
    cos = np.sum(g * r, axis=1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1))
    print(f"\n[resnet18 embedding] SQNR {sqnr_db(r, g):.1f} dB, cosine min {cos.min():.4f}")
    assert sqnr_db(r, g) > 20 or cos.min() > 0.98


def test_scores_are_output_0_for_readers_that_take_the_first(r18: ConvertResult) -> None:
    """An older reader (or tflite_io.outputs) takes output 0: it must be the 1000 scores, in the subgraph
    and in the signature (TensorFlow sorted them by name, which put the embedding first)."""
    from ai_edge_litert.interpreter import Interpreter

    for path in (r18.bundle, _float(r18)):
        it = Interpreter(model_content=read_model(path).flatbuffer)
        it.allocate_tensors()
        assert int(np.prod(it.get_output_details()[0]["shape"])) == 1000
        m = tflite_io.read(read_model(path).flatbuffer)
        sd = m.signatureDefs[0]
        assert int(sd.outputs[0].tensorIndex) == int(m.subgraphs[0].outputs[0])


def test_logits_first_reorders_outputs_and_signatures(r18: ConvertResult) -> None:
    flat = read_model(r18.bundle).flatbuffer
    m = tflite_io.read(flat)
    g = m.subgraphs[0]
    g.outputs = list(reversed(list(g.outputs)))
    m.signatureDefs[0].outputs = list(reversed(list(m.signatureDefs[0].outputs)))
    swapped = tflite_io.write(m)
    assert tflite_io.output_sizes(swapped) == [512, 1000]
    fixed = tflite_io.logits_first(swapped, 1000)
    assert tflite_io.output_sizes(fixed) == [1000, 512]
    assert tflite_io.output_names(fixed) == tflite_io.output_names(flat)
    assert tflite_io.logits_first(flat, 1000) is flat  # already in order: unchanged
    # two outputs of the class count: the signature name decides (onnx2tf 1.x: output_0 is the ONNX output;
    # 2.x: the ONNX output's own name), as quantize.scores_first asks
    m = tflite_io.read(swapped)
    emb_tensor = int(m.subgraphs[0].outputs[0])
    m.subgraphs[0].tensors[emb_tensor].shape = [1, 1000]
    tie = tflite_io.write(m)
    hints = ("output_0", "resnetv1_dense0_fwd")
    sig = {(t.name.decode() if isinstance(t.name, bytes) else t.name): int(t.tensorIndex)
           for t in m.signatureDefs[0].outputs}  # fmt: skip
    first = int(tflite_io.read(tflite_io.logits_first(tie, 1000, hints)).subgraphs[0].outputs[0])
    assert first == next(sig[h] for h in hints if h in sig) != emb_tensor
    with pytest.raises(ValueError, match="1000 class scores"):
        tflite_io.logits_first(tie, 1000)
    one = tflite_io.without_extra_outputs(flat)
    assert tflite_io.output_sizes(one) == [1000]
    assert np.array_equal(tflite_io.outputs(one, np.zeros((1, SIZE, SIZE, 3), np.uint8)),
                          tflite_io.outputs(flat, np.zeros((1, SIZE, SIZE, 3), np.uint8)))  # fmt: skip


def test_the_embedding_output_changes_nothing_else(
    r18: ConvertResult, r18_without: tuple[ConvertResult, list[str]], samples_dir: Path
) -> None:
    """The same conversion without the embedding (as before): one warning line says so, and with it the
    INT8 scores are bit for bit the same, so top-1 and every fidelity figure are unchanged."""
    before, warnings = r18_without
    said = [w for w in warnings if "no embedding output" in w]
    assert said == ["edge_resnet.convert.pipeline: the bundle will have no embedding output: switched off by the test"]
    mf = read_model(before.bundle)
    assert mf.meta is not None and mf.meta.embedding is None
    assert tflite_io.output_sizes(mf.flatbuffer) == [1000]
    assert Engine.load(before.bundle, "cpu").embedding is None
    assert before.report["embedding"] == {"reason": "switched off by the test"}
    assert before.report["evaluation"] == r18.report["evaluation"]
    frames = _frames(samples_dir, 8)
    x = np.stack([Classifier(Engine.load(r18.bundle)).prepare(f)[0] for f in frames])
    np.testing.assert_array_equal(tflite_io.outputs(read_model(r18.bundle).flatbuffer, x),
                                  tflite_io.outputs(mf.flatbuffer, x))  # fmt: skip


def test_edgetpu_preflight_ok_with_the_embedding_output(r18: ConvertResult, mobilenet: ConvertResult) -> None:
    for result in (r18, mobilenet):
        flight = edgetpu.preflight(read_model(result.bundle).flatbuffer)
        assert flight["ok"], flight
        assert flight["float_tensors"] == 0 and flight["unsupported_ops"] == []


def test_mobilenet_v2_bundle_has_a_1280_embedding(mobilenet: ConvertResult) -> None:
    engine = Engine.load(mobilenet.bundle, "cpu")
    assert int(np.prod(engine.output.shape)) == 1001
    assert engine.embedding is not None and int(np.prod(engine.embedding.shape)) == 1280
    meta = engine.model.meta
    assert meta is not None and meta.embedding is not None
    assert meta.embedding["size"] == 1280 and meta.embedding["onnx_tensor"] == "MobilenetV2/Logits/AvgPool_prequant"
    rep = mobilenet.report["embedding"]
    print(f"\n[mobilenet_v2 embedding] SQNR {rep['sqnr_db']} dB on {rep['images']} images, cosine {rep['cosine_mean']}")
    assert rep["sqnr_db"] > 20 or rep["cosine_mean"] > 0.98


def test_foreign_model_has_no_embedding(mobilenet_quant: Path) -> None:
    engine = Engine.load(mobilenet_quant, "cpu")
    assert engine.embedding is None
    with pytest.raises(ModelError, match="no embedding output"):
        engine.embedding_row()


def test_info_prints_the_embedding(r18: ConvertResult, mobilenet_quant: Path) -> None:
    proc = run_cli("info", str(r18.bundle))
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("embedding:")]
    meta = read_model(r18.bundle).meta
    assert meta is not None and meta.embedding is not None
    name = meta.embedding["output"]
    # [1, 1, 1, 512] from the TensorFlow path (the pooled map), [1, 512] from the TensorFlow-free one
    assert len(line) == 1 and re.match(rf"embedding: 512 values, output {re.escape(name)} \[1, (1, 1, )?512\] int8 ",
                                       line[0]), line  # fmt: skip
    info = json.loads(run_cli("info", "--json", str(r18.bundle)).stdout)
    assert info["embedding"]["size"] == 512 and info["embedding"]["name"] == name
    assert info["metadata"]["embedding"]["size"] == 512
    proc = run_cli("info", str(mobilenet_quant))
    assert "embedding: none (a foreign model); `edge-resnet learn` needs one" in proc.stdout
    assert json.loads(run_cli("info", "--json", str(mobilenet_quant)).stdout)["embedding"] is None
