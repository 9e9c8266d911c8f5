"""Issue 25, the converter's fast half (the slow one, MCT and Sony's converter for real, is
tests/imx500/run.sh): a network that cannot fit the IMX500 is refused in one line with its figures
before anything slow, the memory plan picks 8 bits or mixed precision, the converter's own memory
report is read, and the ONNX graph is made ready for onnx2torch. None of this needs the [imx500]
extra: only onnx, as in the workstation venv."""

from __future__ import annotations

import json
import os
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.convert import imx500_input
from edge_resnet.convert.imx500 import activation_ranges, check_java, inline_identities, network_sizes
from edge_resnet.convert.imx500_input import (
    InputTensor,
    check_input_tensor,
    read_input_tensor,
    sensor_affine,
    sensor_pixels,
)
from edge_resnet.convert.imx500_memory import (
    IMX500_MEMORY_BYTES,
    DoesNotFit,
    NetworkSizes,
    budget_after_report,
    parse_converter_memory,
    plan,
)
from edge_resnet.errors import DependencyError, ExitCode, ModelError
from edge_resnet.preprocess import PreprocessSpec, TensorInfo, to_input
from tests.conftest import run_cli
from tests.helpers.resnet_onnx import make_resnet

# imxconv-pt 3.18.2's <name>_MemoryReport.json for MobileNet v2 (tests/imx500/run.sh's conversion)
MOBILENET_V2_REPORT = {"Memory Report": {
    "Name": "mobilenet_v2_1.0_224_mct", "Runtime Memory Physical Size": "1672288B",
    "Model Memory Physical Size": "3679744B", "Reserved Memory": "1024B", "Memory Usage": "5353056B",
    "Total Memory Available On Chip": "8388480B", "Memory Utilization": "64%", "Fit In Chip": True,
}}


def test_resnet50_is_refused_in_one_line_with_its_figures_within_a_minute(tmp_path: Path) -> None:
    onnx_path = tmp_path / "resnet50-v1-7.onnx"
    onnx.save(make_resnet(50), onnx_path)
    t0 = time.monotonic()
    r = run_cli("convert", str(onnx_path), "--target", "imx500", "--calib", str(tmp_path / "photos"),
                "--out", str(tmp_path / "out"), timeout=120)
    took = time.monotonic() - t0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    print(f"\nexit {r.returncode} in {took:.1f} s: {lines[-1] if lines else ''}")
    assert r.returncode == ExitCode.MODEL, r.stderr
    assert len(lines) == 1, r.stderr
    assert "26.41 MB at 8 bits" in lines[0] and "13.61 MB even with 4-bit weights" in lines[0]
    assert "8.39 MB" in lines[0] and "ResNet-18" in lines[0] and "MobileNet v2" in lines[0]
    assert took < 60
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_plan_8_bits_when_they_fit_mixed_precision_when_not() -> None:
    mobilenet = NetworkSizes("mobilenet_v2", 3_489_097, 1_204_224)
    resnet18 = NetworkSizes("resnet18", 11_699_112, 802_816)
    p = plan(mobilenet)
    assert not p.mixed_precision and p.weights_budget is None and p.needed_8bit == 4_693_321
    p = plan(resnet18)
    assert p.mixed_precision and p.needed_8bit > IMX500_MEMORY_BYTES
    assert p.weights_budget is not None and 6_000_000 < p.weights_budget < IMX500_MEMORY_BYTES - 802_816
    with pytest.raises(DoesNotFit, match="resnet50 does not fit"):
        plan(NetworkSizes("resnet50", 25_610_152, 802_816))


def test_the_converters_memory_report_is_read_and_a_miss_shrinks_the_budget() -> None:
    mem = parse_converter_memory(MOBILENET_V2_REPORT)
    assert mem.fits and mem.used_bytes == 5_353_056 and mem.capacity == IMX500_MEMORY_BYTES
    assert mem.model_bytes == 3_679_744 and mem.runtime_bytes == 1_672_288
    assert not parse_converter_memory(None, "ERROR: Not enough memory: the network needs ...").fits
    over = parse_converter_memory({"Memory Report": {**MOBILENET_V2_REPORT["Memory Report"],
                                                     "Memory Usage": "9000000B", "Fit In Chip": False}})
    sizes = NetworkSizes("resnet18", 11_699_112, 802_816)
    assert not over.fits
    assert budget_after_report(6_500_000, sizes, over) == int((6_500_000 - (9_000_000 - 8_388_480)) * 0.85)


def test_graph_made_ready_for_onnx2torch() -> None:
    """Shared Identity nodes inlined (a folded export's BatchNorm biases share one and break onnx2torch),
    a Reshape to [1, N] freed in its batch, and names of 300 characters made short (the converter
    refuses node ids over 250)."""
    long = "mobilenet_v2_expanded_conv_16_expand_relu6_" * 8
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), long + "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")
    nodes = [
        helper.make_node("Identity", ["bias"], ["shared_bias"], name="id"),
        helper.make_node("Conv", ["x", long + "w", "shared_bias"], [long + "conv"], name=long + "conv_node"),
        helper.make_node("GlobalAveragePool", [long + "conv"], ["pool"], name="pool"),
        helper.make_node("Reshape", ["pool", "shape"], ["logits"], name="flat"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], [w, b, shape])
    m = inline_identities(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Conv", "GlobalAveragePool", "Reshape"]
    assert max(len(n) for n in [*(x.name for x in m.graph.node), *(t.name for t in m.graph.initializer)]) <= 20
    reshape = m.graph.node[-1]
    target = next(t for t in m.graph.initializer if t.name == reshape.input[1])
    assert list(numpy_helper.to_array(target)) == [-1, 4]
    assert m.graph.input[0].name == "x" and m.graph.output[0].name == "logits"  # the interface keeps its names
    assert network_sizes(m, "tiny") == NetworkSizes("tiny", 12 + 4, 4 * 8 * 8)


def test_java_older_than_17_is_one_line_naming_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = tmp_path / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(DependencyError, match=r"Java 17\+, found 'openjdk version \"11.0.22\".*openjdk-17-jre"):
        check_java()
    java.write_text('#!/bin/sh\necho \'openjdk version "17.0.15" 2025-04-15\' >&2\n')
    assert check_java().startswith('openjdk version "17')
    json.dumps(MOBILENET_V2_REPORT)  # the fixture stays plain JSON


def test_activation_ranges_without_clipping_where_the_network_bounds_them() -> None:
    assert activation_ranges("auto", frozenset({"Conv", "Clip", "Add"})) == "minmax"  # ReLU6: MobileNet v2
    assert activation_ranges("auto", frozenset({"Conv", "Relu", "Add"})) == "mse"  # ResNets
    assert activation_ranges("mse", frozenset({"Clip"})) == "mse"  # --ranges says so


# The converter's dnnParams.xml (imxconv-pt 3.18.2) for MobileNet v2 quantized on normalised input, as
# this project converted it before the network took the sensor's pixels: signed, scale 1/128.
DNN_PARAMS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<dnnParams><networks><network name="mobilenet_v2_1.0_224_mct" ordinal="0" type=""><inputTensors>
<inputTensor persistency="1" ordinal="0" name="Placeholder.input.uid1:0" l2Offset="4541056" numOfDimensions="3"
 bitsPerElement="8" shift="0" scale="{scale}" format="{fmt}"><dimensions>
<dimension size="3" serializationOrder="2" ordinal="0" padding="0"/>
<dimension size="224" serializationOrder="1" ordinal="1" padding="0"/>
<dimension size="224" serializationOrder="0" ordinal="2" padding="0"/>
</dimensions></inputTensor></inputTensors><outputTensors/></network></networks></dnnParams>"""


@pytest.mark.parametrize("spec", [
    PreprocessSpec((127.5,) * 3, (127.5,) * 3, "RGB"),  # inception
    PreprocessSpec((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB"),  # torchvision
    PreprocessSpec((103.94, 116.78, 123.68), (1.0, 1.0, 1.0), "BGR"),  # caffe
])
def test_the_network_computes_our_normalisation_from_the_pixels_the_sensor_writes(spec: PreprocessSpec) -> None:
    """What the sensor writes (RGB pixel / 256), through the network's first multiply-add (in numpy here,
    the torch module applies the same idx, a, b), equals the device's own preprocessing of the photo."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    model_order = bgr if spec.channel_order == "BGR" else bgr[..., ::-1]
    x = sensor_pixels(np.ascontiguousarray(model_order), spec)
    assert x.shape == (1, 3, 20, 30)
    assert np.array_equal(x[0, 0] * 256, bgr[0, :, :, 2].astype(np.float32))  # channel 0 is red: the sensor's RGB
    idx, a, b = sensor_affine(spec)
    net_in = np.stack([x[:, i] * a[c] + b[c] for c, i in enumerate(idx)], axis=1)
    ref = to_input(bgr[0], "BGR", spec, TensorInfo("x", (1, 3, 20, 30), np.dtype(np.float32)))
    assert np.allclose(net_in, ref, atol=1e-4), float(np.max(np.abs(net_in - ref)))


def test_a_network_that_would_be_fed_wrongly_on_the_sensor_is_refused(tmp_path: Path) -> None:
    def packer(scale: str, fmt: str) -> Path:
        p = tmp_path / f"{fmt}{scale}.zip"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("dnnParams.xml", DNN_PARAMS.format(scale=scale, fmt=fmt))
        return p

    old = read_input_tensor(packer("0.0078125", "signed"))
    assert old == InputTensor("signed", 0.0078125, 0, (3, 224, 224))
    with pytest.raises(ModelError, match=r"signed 8-bit, scale 0.0078125, shape 3x224x224, but the IMX500 writes "
                                         r"8-bit pixels \(unsigned, scale 0.00390625\)"):
        check_input_tensor(old, "mobilenet_v2.onnx")
    new = read_input_tensor(packer("0.00390625", "unsigned"))
    check_input_tensor(new, "mobilenet_v2.onnx")
    assert imx500_input.metadata(new, PreprocessSpec())["input_tensor"] == {
        "format": "unsigned", "scale": 0.00390625, "shift": 0, "dims": [3, 224, 224]}
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("manifest.json", "{}")
    with pytest.raises(ModelError, match=r"no readable dnnParams\.xml"):
        read_input_tensor(tmp_path / "empty.zip")


def test_an_mct_failure_is_one_line_naming_the_step_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """MCT's own exceptions (here the TypeError PuLP 4 gave MCT 2.5.1's mixed precision search in a fresh
    3.12 venv) ended the CLI in a traceback with exit 1. MCT itself is in the slow path only, so a stand-in
    module raises what it raised."""
    from types import SimpleNamespace

    from edge_resnet.convert import imx500

    def ptq(*a: object, **k: object) -> None:
        raise TypeError("LpVariable.__init__() got an unexpected keyword argument 'lowBound'")

    core = SimpleNamespace(QuantizationErrorMethod=SimpleNamespace(NOCLIPPING=0, MSE=1),
                           QuantizationConfig=lambda **k: k, CoreConfig=lambda *a, **k: (a, k),
                           ResourceUtilization=lambda **k: k, MixedPrecisionQuantizationConfig=lambda **k: k)
    mct = SimpleNamespace(get_target_platform_capabilities=lambda *a: None, core=core,
                          ptq=SimpleNamespace(pytorch_post_training_quantization=ptq))
    torch = SimpleNamespace(from_numpy=lambda x: x)
    monkeypatch.setattr(imx500, "_import_extra", lambda: (torch, mct, None))
    with pytest.raises(ModelError, match=r"failed in its mixed precision search \(TypeError: LpVariable.*"
                                         r"pip install \"edge-resnet\[imx500\]\" in a fresh venv") as e:
        imx500.quantize(object(), np.zeros((2, 3, 4, 4), np.float32), budget=6_000_000)
    assert e.value.exit_code == ExitCode.MODEL
