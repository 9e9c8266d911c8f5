"""Must-show 3 of issue 15: the `unit` layer runs in well under 60 s with no test data, and never
imports an interpreter (so it runs on any machine, before anything else)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys, pytest
rc = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "unit", "--ignore", "tests/test_layers.py"])
loaded = [m for m in ("ai_edge_litert", "tflite_runtime", "tensorflow") if m in sys.modules]
print("INTERPRETERS", loaded)
sys.exit(rc)
"""


def test_unit_layer_is_fast_needs_no_data_and_no_interpreter(tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_RESNET_DATA": str(tmp_path / "no-data"), "CI": ""}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "INTERPRETERS []" in r.stdout, r.stdout[-2000:]
    assert took < 60, f"pytest -m unit took {took:.0f} s"
