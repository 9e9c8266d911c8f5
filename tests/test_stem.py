"""The space-to-depth stem rewrite (convert/stem.py): exact in float, selective, and fast-path in INT8.

The ONNX-level tests take seconds; the end-to-end pair (one small ResNet-18 converted with and
without the rewrite) is about a minute on two cores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.bench import delegation
from edge_resnet.convert import onnx_model, stem
from edge_resnet.convert.pipeline import ConvertJob, ConvertResult, run
from edge_resnet.engine import Engine
from edge_resnet.preprocess import PRESETS
from tests.helpers.resnet_onnx import make_resnet

SIZE = 64


def _outputs(model: onnx.ModelProto, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: npt.NDArray[np.float32] = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


def _rewritten(model: onnx.ModelProto) -> stem.StemRewrite:
    info = onnx_model.inspect(model, "model.onnx")
    return stem.rewrite(model, info.input_name, info.hw, info.layout)


def _assert_same(model: onnx.ModelProto, r: stem.StemRewrite, size: int) -> None:
    onnx.checker.check_model(r.model)
    x = np.random.default_rng(1).normal(0, 1, (1, 3, size, size)).astype(np.float32)
    ref, got = _outputs(model, x), _outputs(r.model, x)
    # float32 sums in another order: differences at rounding level, relative to the logit scale
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max())), np.abs(got - ref).max()


@pytest.mark.parametrize(
    "kw,size",
    [
        ({"depth": 18, "version": 1}, SIZE),
        ({"depth": 18, "version": 1}, 57),  # odd size: the padded input gets one more zero row/column
        ({"depth": 18, "version": 2}, SIZE),  # BatchNormalization on the raw input, conv without bias
        ({"depth": 50, "version": 1, "style": "torchvision"}, SIZE),  # opset 13 Pad, folded bias, dynamic batch
    ],
)
def test_generated_resnet_stem_rewrite_is_exact_in_onnxruntime(kw: dict[str, Any], size: int) -> None:
    model = make_resnet(input_size=size, **kw)
    r = _rewritten(model)
    assert r.applied, r.reason
    assert r.details["kernel"] == [7, 7] and "SpaceToDepth(2) -> Conv 4x4/1 on 12 channels" in r.details["as"]
    assert r.details["path"] == ("BatchNormalization -> Conv" if kw["version"] == 2 else "Conv")
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("SpaceToDepth") == 1 and ops.count("Conv") == sum(n.op_type == "Conv" for n in model.graph.node)
    _assert_same(model, r, size)


def _stem_only(k: int, stride: int, pads: list[int], opset: int, size: int = 23, bias: bool = True) -> onnx.ModelProto:
    """Input -> Conv(k, stride) -> Relu: the conv output itself is compared."""
    rng = np.random.default_rng(k + stride)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, k, k)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, 8).astype(np.float32), "b"))
        ins.append("b")
    conv = helper.make_node("Conv", ins, ["c"], name="stem", kernel_shape=[k, k], strides=[stride] * 2, pads=pads)
    g = helper.make_graph(
        [conv, helper.make_node("Relu", ["c"], ["y"])], "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, "h", "w"])], inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


@pytest.mark.parametrize("opset", [8, 13])
def test_asymmetric_padding_5x5_and_9x9_stems_are_exact(opset: int) -> None:
    for k, pads in ((5, [2, 1, 1, 2]), (9, [4, 4, 4, 4]), (7, [0, 0, 0, 0])):
        m = _stem_only(k, 2, pads, opset)
        r = stem.rewrite(m, "x", (23, 23))
        assert r.applied, r.reason
        _assert_same(m, r, 23)
        assert not any(t.name == "w" for t in r.model.graph.initializer)  # the 7x7 weights are gone


def test_non_stems_are_left_unchanged_with_a_reason(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_resnet.convert.stem")
    mobilenet = onnx_model.load(models_dir / "mobilenet_v2_1.0_224.onnx")
    cases = [
        (mobilenet, "kernel 3x3"),  # 3x3/2 stem: not worth 2x2 on 12 channels
        (_stem_only(5, 1, [2, 2, 2, 2], 13), "strides [1, 1]"),
    ]
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 1, (4, 3, 7, 7)).astype(np.float32), "w")
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h", "w"])]
    relu_first = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"], strides=[2, 2])],
        "g", vi, out, [w],
    )
    dilated = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], dilations=[2, 2])], "g", vi, out, [w]
    )
    for g, why in ((relu_first, "Relu, not a Conv"), (dilated, "dilations [2, 2]")):
        cases.append((helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), why))
    for model, why in cases:
        before = model.SerializeToString()
        name = model.graph.input[0].name
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        r = stem.rewrite(model, name, (dims[2], dims[3]))
        assert not r.applied and why in r.reason, r.reason
        assert r.model is model and model.SerializeToString() == before
        assert any("not applied" in m and why in m for m in caplog.messages)


# --- end to end: the INT8 model, all in XNNPACK, as faithful as without the rewrite -------------


@pytest.fixture(scope="module")
def r18_pair(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path) -> dict[bool, ConvertResult]:
    work = tmp_path_factory.mktemp("stem")
    onnx_path = work / "resnet18-v1.onnx"
    onnx.save(make_resnet(18, 1, input_size=SIZE), str(onnx_path))
    return {
        rewrite: run(
            ConvertJob(
                onnx=onnx_path, calib=samples_dir, out=work / str(rewrite), preprocess=PRESETS["imagenet"],
                calib_count=48, eval_dir=samples_dir, eval_limit=60, max_top1_drop=None,
                stem_rewrite=rewrite,
            )
        )
        for rewrite in (True, False)
    }


def test_rewritten_int8_resnet_is_all_xnnpack_and_as_faithful(r18_pair: dict[bool, ConvertResult]) -> None:
    s2d, plain = r18_pair[True], r18_pair[False]
    graphs = {k: delegation(Engine.load(r.bundle, threads=1)) for k, r in r18_pair.items()}
    print(f"\n[stem rewrite] ops {graphs[True]['op_counts']} outside XNNPACK {graphs[True]['outside']}")
    assert graphs[True]["op_counts"]["SPACE_TO_DEPTH"] == 1 and "SPACE_TO_DEPTH" not in graphs[False]["op_counts"]
    assert graphs[True]["op_counts"]["CONV_2D"] == graphs[False]["op_counts"]["CONV_2D"]
    # every op XNNPACK takes without the rewrite it takes with it, SPACE_TO_DEPTH included (the only
    # op outside in both is the uint8 -> int8 input QUANTIZE)
    assert [o["op"] for o in graphs[True]["outside"]] == [o["op"] for o in graphs[False]["outside"]]
    assert all(o["op"] == "QUANTIZE" for o in graphs[True]["outside"])
    # float TFLite vs ONNX: catches a SpaceToDepth channel order that differs between ONNX and TF
    assert s2d.report["float_tflite_vs_onnx_max_abs_diff"] < 1e-3
    ev, ev0 = s2d.report["evaluation"], plain.report["evaluation"]
    print(f"[stem rewrite] SQNR {ev['logit_sqnr_db']} vs {ev0['logit_sqnr_db']} dB, agreement "
          f"{ev['top1_agreement_pct']} vs {ev0['top1_agreement_pct']}%")
    assert ev["logit_sqnr_db"] >= ev0["logit_sqnr_db"] - 1.0
    assert ev["logit_sqnr_db"] >= 25.0 and ev["top1_agreement_pct"] >= 85.0
    for rewrite, r in r18_pair.items():
        meta = Engine.load(r.bundle).model.meta
        assert meta is not None and meta.source["stem_rewrite"]["applied"] is rewrite
        assert r.report["source"]["stem_rewrite"]["applied"] is rewrite
    assert "no-stem-rewrite" in plain.report["source"]["stem_rewrite"]["reason"]


def test_cli_flag_turns_the_rewrite_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edge_resnet.cli import build_parser

    jobs: list[ConvertJob] = []

    def fake_run(job: ConvertJob) -> Any:
        jobs.append(job)
        raise SystemExit(0)

    monkeypatch.setattr("edge_resnet.convert.pipeline.run", fake_run)
    for extra, expected in (([], True), (["--no-stem-rewrite"], False)):
        argv = ["convert", "m.onnx", "--calib", str(tmp_path), "--out", str(tmp_path), *extra]
        args = build_parser(argv).parse_args(argv)
        with pytest.raises(SystemExit):
            args.func(args)
        assert jobs[-1].stem_rewrite is expected
