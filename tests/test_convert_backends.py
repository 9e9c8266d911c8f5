"""Issue 16: which conversion path a workstation gets, from pyproject's extras to `convert --backend`.

The TensorFlow-free path itself is exercised on Python 3.13 by the device lab
(tests/lab/test_convert_py313.py); here, on the workstation venv, the Python 3.11 story the README
tells: `pip install "edge-resnet[convert]"` on 3.11 brings the TensorFlow path, `auto` picks it, and
asking for the TensorFlow-free one says what to do.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from edge_resnet.convert import backend_litert, backends
from edge_resnet.errors import DependencyError, ExitCode
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def _extra(name: str, python: str) -> dict[str, str]:
    """The `name` extra's requirements that apply on `python` (e.g. "3.11"): {dist: specifier}."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    out: dict[str, str] = {}
    env = {"python_version": python, "python_full_version": f"{python}.0", "extra": name}
    for line in data["project"]["optional-dependencies"][name]:
        req = Requirement(line)
        if req.marker is None or Marker(str(req.marker)).evaluate(env):
            out[req.name.lower()] = str(req.specifier)
    return out


@pytest.mark.parametrize("python", ["3.12", "3.13", "3.14"])
def test_convert_extra_has_no_tensorflow_from_312(python: str) -> None:
    reqs = _extra("convert", python)
    assert not {"tensorflow", "tf-keras", "keras", "tensorflow-cpu"} & set(reqs), reqs
    assert reqs["onnx2tf"].startswith("==2."), reqs
    assert "ai-edge-quantizer" in reqs, reqs


def test_convert_extra_on_311_is_the_tensorflow_path() -> None:
    on_311, tf = _extra("convert", "3.11"), _extra("convert-tf", "3.11")
    assert on_311["tensorflow"] == tf["tensorflow"] == "==2.19.0"
    assert on_311["onnx2tf"] == tf["onnx2tf"] == "==1.29.24"
    assert "ai-edge-quantizer" not in on_311


def test_quantizer_and_onnx2tf_agree_on_ai_edge_litert() -> None:
    """onnx2tf 2.6.9 pins ai-edge-litert==2.1.2; a quantizer pinning another release makes the extra uninstallable."""
    assert _extra("convert", "3.13")["ai-edge-litert"] == "==2.1.2"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the workstation venv of this suite is Python 3.11")
def test_python_311_gets_the_tensorflow_path_and_auto_picks_it() -> None:
    """What this venv (`pip install -e ".[convert,dev]"` on 3.11) actually holds and runs."""
    assert re.match(r"1\.29\.", version("onnx2tf")), version("onnx2tf")
    assert version("tensorflow") == "2.19.0"
    with pytest.raises(PackageNotFoundError):
        version("ai-edge-quantizer")
    assert backend_litert.available() is not None
    assert backends.choose("auto") == "tf"
    assert backends.choose("tf") == "tf"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the workstation venv of this suite is Python 3.11")
def test_asking_for_the_litert_path_on_311_names_the_fix() -> None:
    with pytest.raises(DependencyError) as e:
        backends.choose("litert")
    msg = str(e.value)
    assert "--backend litert" in msg and "3.12" in msg and "\n" not in msg, msg


def test_int8_input_on_the_tensorflow_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "choose", lambda backend: "tf")
    with pytest.raises(DependencyError, match="--backend litert"):
        backends.quantize("tf", None, None, None, Path("."), "auto", True, "int8")  # type: ignore[arg-type]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the workstation venv of this suite is Python 3.11")
def test_cli_backend_litert_on_311_fails_at_once_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "calib").mkdir()
    proc = run_cli("convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib"), "--out",
                   str(tmp_path / "out"), "--backend", "litert")  # fmt: skip
    assert proc.returncode == int(ExitCode.DEPENDENCY), proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--backend litert" in lines[0] and "3.12" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
