"""Issue 22: nothing unverified looks deployable, and a conversion's failures read as one line.

- no evaluation set: exit 8 before any work, unless `--no-eval`, which writes `<name>_int8.unverified.tflite`
  and says why in the summary and the report;
- no ground truth: the gate is top-1 agreement with FP32 (`--min-agreement`), not silently nothing;
- the report never shows None, null or nan; the FP32 TFLite model stays only with `--keep-float`;
- a model-zoo name instead of a file points at `edge-resnet fetch`; an OpenCV that cannot load its
  shared library (libxcb on minimal systems) is one line with README's fix, not a traceback.

The conversions run on a 32x32 ResNet-18 (10 classes) with 14 calibration photos: about 20 s each.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import onnx
import pytest

from edge_resnet.errors import ExitCode
from tests.conftest import run_cli
from tests.helpers.resnet_onnx import make_resnet

NO_FIGURE = re.compile(r"\bNone\b|\bnull\b|\bnan\b|\bNaN\b")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def tiny_onnx(work: Path) -> Path:
    p = work / "tiny.onnx"
    onnx.save(make_resnet(18, 1, input_size=32, num_classes=10), str(p))
    return p


def _photos(work: Path, samples_dir: Path, name: str, start: int, n: int) -> Path:
    """`n` sample photos from position `start` (symlinked), with no labels.json: no ground truth."""
    d = work / name
    d.mkdir()
    for e in json.loads((samples_dir / "labels.json").read_text())[start : start + n]:
        (d / e["file"]).symlink_to(samples_dir / e["file"])
    return d


@pytest.fixture(scope="module")
def calib14(work: Path, samples_dir: Path) -> Path:
    """The issue's case: 14 calibration images, too few to hold any out for evaluation."""
    return _photos(work, samples_dir, "calib14", 0, 14)


def _error_line(proc: subprocess.CompletedProcess[str], code: ExitCode) -> str:
    assert proc.returncode == int(code), proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-resnet: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def _no_none_or_nan(*reports: Path) -> None:
    for report in reports:
        text = report.read_text()
        assert not NO_FIGURE.findall(text), f"{report.name}: {NO_FIGURE.findall(text)}\n{text}"


def test_no_evaluation_set_fails_before_the_work(work: Path, tiny_onnx: Path, calib14: Path) -> None:
    """14 images and no --eval: exit 8 before the conversion, the line naming both ways out; no file."""
    out = work / "out_none"
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(calib14), "--out", str(out))
    line = _error_line(proc, ExitCode.VERIFY)
    assert "no evaluation set" in line and "14 images" in line, line
    assert "--eval DIR" in line and "--no-eval" in line and "tiny_int8.unverified.tflite" in line, line
    assert "converting" not in proc.stderr  # refused before the float model was built
    assert _files(out) == []


def test_no_eval_writes_an_unverified_model_and_says_why(work: Path, tiny_onnx: Path, calib14: Path) -> None:
    """--no-eval: `tiny_int8.unverified.tflite`, no `tiny_int8.tflite`; the summary and the report each say
    why in one line; the report shows no None/null/nan. --keep-float keeps the FP32 model, named in the summary."""
    out = work / "out_no_eval"
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(calib14), "--out", str(out), "--no-eval",
                   "--keep-float")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(out) == ["tiny_float32.tflite", "tiny_int8.report.json", "tiny_int8.report.md",
                           "tiny_int8.unverified.tflite"]  # fmt: skip
    said = [ln for ln in proc.stdout.splitlines() if ln.startswith("unverified:")]
    assert len(said) == 1 and "--no-eval" in said[0] and "--eval DIR" in said[0], proc.stdout
    assert f"model:  {out / 'tiny_int8.unverified.tflite'}" in proc.stdout
    floats = [ln for ln in proc.stdout.splitlines() if ln.startswith("float:")]
    assert len(floats) == 1 and str(out / "tiny_float32.tflite") in floats[0] and "FP32" in floats[0], proc.stdout
    md = (out / "tiny_int8.report.md").read_text()
    assert len([ln for ln in md.splitlines() if "unverified" in ln and "--no-eval" in ln]) == 1, md
    assert "not measured (no evaluation set)" in md, md
    rep = json.loads((out / "tiny_int8.report.json").read_text())
    assert rep["model"] == "tiny_int8.unverified.tflite" and rep["gate"]["verified"] is False
    assert "evaluation" not in rep
    _no_none_or_nan(out / "tiny_int8.report.md", out / "tiny_int8.report.json")
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert not NO_FIGURE.findall(json.dumps(summary)), summary


def test_without_ground_truth_the_gate_is_agreement(
    work: Path, samples_dir: Path, tiny_onnx: Path, calib14: Path
) -> None:
    """60 unlabelled evaluation images: the gate compares INT8's top-1 with FP32's. Forced to fail with
    --min-agreement 100 (the tiny model flips at least one of the 60): exit 8 naming the agreement, the
    model kept as rejected, a report with no None/null/nan, and no FP32 model left (no --keep-float)."""
    evals = _photos(work, samples_dir, "eval60", 500, 60)
    out = work / "out_agree"
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(calib14), "--eval", str(evals), "--out", str(out),
                   "--min-agreement", "100")  # fmt: skip
    line = _error_line(proc, ExitCode.VERIFY)
    assert "agreement" in line and "--min-agreement" in line and "60 images without ground truth" in line, line
    assert str(out / "tiny_int8.rejected.tflite") in line, line
    assert _files(out) == ["tiny_int8.rejected.tflite", "tiny_int8.report.json", "tiny_int8.report.md"]
    rep = json.loads((out / "tiny_int8.report.json").read_text())
    gate = rep["gate"]
    assert gate["passed"] is False and gate["min_agreement_pct"] == 100.0
    assert gate["top1_agreement_pct"] == rep["evaluation"]["top1_agreement_pct"] < 100.0
    md = (out / "tiny_int8.report.md").read_text()
    assert "top-1 drop: not measured (no ground truth)" in md and "minimum 100.00 %: FAILED" in md, md
    _no_none_or_nan(out / "tiny_int8.report.md", out / "tiny_int8.report.json")
    # the bundle carries the latency verification measured (the fleet's health window reads it)
    from edge_resnet.bundle import read_model

    meta = read_model(out / "tiny_int8.rejected.tflite").meta
    assert meta is not None and meta.source["runtime"]["invoke_ms_median"] == rep["runtime"]["invoke_ms_median"]


def test_a_model_zoo_name_points_at_fetch(
    tmp_path: Path, calib14: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`convert resnet50-v1` (a name, not a file): the line gives the fetch command and the file it saves
    (in the current folder); once fetched there, it names that file to convert."""
    line = _error_line(run_cli("convert", "resnet50-v1", "--calib", str(calib14), "--out", str(tmp_path)),
                       ExitCode.MODEL)  # fmt: skip
    assert "`edge-resnet fetch resnet50-v1`" in line and "current folder as resnet50-v1-7.onnx" in line, line
    from edge_resnet.commands.convert import zoo_hint
    from edge_resnet.errors import ModelError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet50-v1-7.onnx").write_bytes(b"not read here")
    with pytest.raises(ModelError, match=r"fetched already into this folder as resnet50-v1-7\.onnx") as e:
        zoo_hint(Path("resnet50-v1"))
    assert "edge-resnet fetch" not in str(e.value)
    zoo_hint(Path("models/resnet50-v1"))  # a path, not a name: the loader's own "not found" follows
    zoo_hint(Path("mymodel"))


NO_LIBXCB = '''
import sys


class NoLibxcb:
    """cv2 as on a minimal system with onnx2tf's GUI OpenCV: its extension cannot load libxcb."""

    def find_spec(self, name, path=None, target=None):
        if name == "cv2" or name.startswith("cv2."):
            raise ImportError("libxcb.so.1: cannot open shared object file: No such file or directory", name="cv2")
        return None


sys.meta_path.insert(0, NoLibxcb())
'''


def test_an_opencv_without_libxcb_is_one_line_with_the_fix(tmp_path: Path, tiny_onnx: Path, calib14: Path) -> None:
    """`import cv2` fails as it does without libxcb: --help still works, and a conversion ends in one line
    (exit 7) naming the library and README's command, not a traceback."""
    (tmp_path / "sitecustomize.py").write_text(NO_LIBXCB)
    env = {"PYTHONPATH": str(tmp_path)}
    helped = run_cli("convert", "--help", env=env)
    assert helped.returncode == 0 and "--no-eval" in helped.stdout, helped.stderr
    proc = run_cli("convert", str(tiny_onnx), "--calib", str(calib14), "--out", str(tmp_path / "out"), env=env)
    line = _error_line(proc, ExitCode.DEPENDENCY)
    assert "libxcb.so.1" in line, line
    assert re.search(r'pip install --force-reinstall --no-deps "opencv-python-headless(==[\d.]+)?"', line), line
