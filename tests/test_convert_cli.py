"""`edge-resnet convert` / `fetch` on bad input: one line naming the thing and the fix, documented exit code.

These fail before any TensorFlow work starts, so they are quick.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edge_resnet.errors import ExitCode
from tests.conftest import run_cli
from tests.helpers.resnet_onnx import make_resnet


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    onnx.save(make_resnet(18, 1, input_size=32, num_classes=10), str(p))
    return p


def _one_line_error(proc: object, code: ExitCode, *needles: str) -> None:
    assert proc.returncode == int(code), proc.stderr  # type: ignore[attr-defined]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-resnet: error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1, proc.stderr  # type: ignore[attr-defined]
    for n in needles:
        assert n in lines[0], lines[0]


def test_non_onnx_file(tmp_path: Path, samples_dir: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_text("<html>404 Not Found</html>\n" * 20)
    proc = run_cli("convert", str(bad), "--calib", str(samples_dir), "--out", str(tmp_path / "out"))
    _one_line_error(proc, ExitCode.MODEL, "model.onnx", "not an ONNX model", "pass a .onnx file")


def test_onnx_that_is_not_an_image_classifier(tmp_path: Path, samples_dir: Path) -> None:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 128])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 128])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["features"], ["out"])], "mlp", [x], [y]))
    p = tmp_path / "mlp.onnx"
    onnx.save(m, str(p))
    proc = run_cli("convert", str(p), "--calib", str(samples_dir), "--out", str(tmp_path / "out"))
    _one_line_error(proc, ExitCode.MODEL, "mlp.onnx", "4-D")


def test_missing_and_empty_calibration_folder(tmp_path: Path, tiny_onnx: Path) -> None:
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    _one_line_error(proc, ExitCode.INPUT, "nowhere", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(empty), "--out", str(tmp_path / "o"))
    _one_line_error(proc, ExitCode.INPUT, "no usable calibration images")


def test_only_corrupt_calibration_images(tmp_path: Path, tiny_onnx: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (bad / "b.png").write_bytes(b"")
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(bad), "--out", str(tmp_path / "o"))
    _one_line_error(proc, ExitCode.INPUT, "2 found, 2 unreadable")


def test_half_given_normalisation_is_a_config_error(tmp_path: Path, tiny_onnx: Path, samples_dir: Path) -> None:
    proc = run_cli(
        "convert", str(tiny_onnx), "--calib", str(samples_dir), "--out", str(tmp_path), "--mean", "1,2,3"
    )
    _one_line_error(proc, ExitCode.CONFIG, "--mean and --std")


def test_without_the_convert_extra(tmp_path: Path, tiny_onnx: Path) -> None:
    """A device install has edge_resnet.convert but none of the convert extra's packages: one line
    with the pip command."""
    extra = ["onnx", "onnxruntime", "onnx2tf", "tensorflow", "ai_edge_quantizer", "tqdm", "psutil"]
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({extra!r}))\n")
    convert = ["convert", str(tiny_onnx), "--calib", str(tmp_path), "--out", str(tmp_path)]
    for cmd in (convert, ["fetch", "resnet18-v1"]):
        proc = run_cli(*cmd, env={"PYTHONPATH": str(tmp_path)})
        _one_line_error(proc, ExitCode.DEPENDENCY, 'pip install "edge-resnet[convert]"')


def test_fetch_unknown_name() -> None:
    proc = run_cli("fetch", "resnet99-v3")
    _one_line_error(proc, ExitCode.INPUT, "resnet99-v3", "resnet50-v1-7")


def test_interpolation_choice_reaches_the_bundle_spec(tmp_path: Path, tiny_onnx: Path) -> None:
    """`--interpolation area` converts for devices older than area_fast; the default is area_fast."""
    from edge_resnet.cli import build_parser
    from edge_resnet.commands.convert import spec_from_args

    base = ["convert", str(tiny_onnx), "--calib", str(tmp_path), "--out", str(tmp_path)]
    args = build_parser(base).parse_args(base)
    assert spec_from_args(args).interpolation == "area_fast"
    args = build_parser(base).parse_args([*base, "--interpolation", "area"])
    assert spec_from_args(args).interpolation == "area"
    proc = run_cli(*base, "--interpolation", "bicubic")
    assert proc.returncode == int(ExitCode.USAGE) and "--interpolation" in proc.stderr
