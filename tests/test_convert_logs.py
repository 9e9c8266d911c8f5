"""Issue 22: a conversion's log says each thing once, in lines a person can read.

- the stem rewrite names a node by at most ~60 characters (MobileNet v2's stem Conv is named by 171);
- "quantizer fix-up: N zero-weight channels" appears once per conversion, not once per range candidate
  (the TensorFlow-free path only: Python >= 3.12; the 3.11 venv skips that test).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_resnet.convert import onnx_model, stem
from tests.conftest import run_cli
from tests.helpers.resnet_onnx import make_resnet


def test_shorten_keeps_both_ends() -> None:
    assert onnx_model.shorten("conv1") == "'conv1'"
    name = "MobilenetV2/Conv/Relu6;" + "x" * 150 + ";MobilenetV2/Conv/BatchNorm_Fold/bias_prequant"
    short = onnx_model.shorten(name)
    assert len(short) == onnx_model.NAME_CHARS + 2  # the quotes
    assert short.startswith("'MobilenetV2/Conv/Relu6;") and short.endswith("bias_prequant'") and "..." in short


def test_the_stem_log_line_names_a_long_node_briefly(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """MobileNet v2's 3x3 stem is left alone; the line says why with its 171-character name cut in the middle."""
    caplog.set_level(logging.INFO, logger="edge_resnet.convert.stem")
    model, info = onnx_model.load_classifier(models_dir / "mobilenet_v2_1.0_224.onnx")
    assert len(model.graph.node[0].name) > 150
    r = stem.rewrite(model, info.input_name, info.hw, info.layout)
    assert not r.applied and "kernel 3x3" in r.reason
    (line,) = [m for m in caplog.messages if m.startswith("stem rewrite")]
    quoted = re.findall(r"'[^']*'", line)
    assert quoted and all(len(q) <= onnx_model.NAME_CHARS + 2 for q in quoted), line
    assert "'MobilenetV2/Conv/" in line and "..." in line and len(line) < 140, line


def _with_dead_channels(path: Path) -> Path:
    """A torchvision-style ResNet-18 (BatchNorm folded into Conv biases) with two output channels of
    two convolutions zeroed, biases kept: what a pruned or folded model has (MobileNet v2: 11)."""
    model = make_resnet(18, 1, input_size=32, num_classes=10, style="torchvision")
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 3][1:3]
    for conv in convs:
        w = numpy_helper.to_array(inits[conv.input[1]]).copy()
        w[:2] = 0.0
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
    onnx.save(model, str(path))
    return path


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_quantizer") is None,
                    reason="the TensorFlow-free path needs Python >= 3.12 (ai-edge-quantizer)")  # fmt: skip
def test_the_quantizer_fix_up_is_said_once(tmp_path: Path, samples_dir: Path) -> None:
    """Both range candidates (mse, minmax) repair the same 4 channels: one line says so, and the report."""
    onnx_path = _with_dead_channels(tmp_path / "dead.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for e in json.loads((samples_dir / "labels.json").read_text())[:14]:
        (calib / e["file"]).symlink_to(samples_dir / e["file"])
    out = tmp_path / "out"
    proc = run_cli("convert", str(onnx_path), "--calib", str(calib), "--out", str(out), "--no-eval",
                   "--backend", "litert")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [ln for ln in proc.stderr.splitlines() if "quantizer fix-up" in ln]
    assert said == ["INFO edge_resnet.convert.backend_litert: quantizer fix-up: 4 zero-weight channels given a "
                    "scale that holds their bias"], proc.stderr  # fmt: skip
    assert "mse ranges" in proc.stderr and "minmax ranges" in proc.stderr  # both candidates were made
