"""Shared fixtures: the test data folder (../shared/data, or $EDGE_RESNET_DATA); and the test layers.

Every test is in one layer, a marker registered in pyproject.toml (`pytest -m unit`, ...):
- `e2e`: through the CLI or a real child process (`run_cli`, `RunChild`, subprocess);
- `component`: real files, test data, a model, a broker, a server or a temporary folder;
- `unit`: pure functions on values built in the test (fast; no files, no data, no interpreter).
A test may say its layer with the marker; otherwise it follows from what the test uses (below),
so a new test needs no list. `runtime` marks the tests every device environment runs (tests/run.sh).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the device lab (root filesystems, qemu, systemd-nspawn) runs only through tests/lab/run.sh
collect_ignore = [] if os.environ.get("EDGE_RESNET_LAB_RUN") == "1" else ["lab"]
# the device environments (pip install . only) have no convert extra: the converter's tests stay out
collect_ignore_glob = [] if importlib.util.find_spec("onnx") else ["test_convert_*.py", "test_stem.py"]

LAYERS = ("unit", "component", "e2e")
_PURE_FIXTURES = {"request", "capsys", "caplog", "recwarn"}  # pytest's own, touching nothing outside
_CHILD = ("run_cli(", "RunChild(", "subprocess.", "Popen(", "sys.executable")


def _layer(item: pytest.Item) -> str:
    """The layer a test's own code and fixtures put it in (see the module docstring)."""
    fn = getattr(item, "function", None)
    try:
        src = inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        src = ""
    if any(c in src for c in _CHILD):
        return "e2e"
    if item.get_closest_marker("hw"):
        return "component"  # real hardware is never a unit
    params = set(getattr(getattr(item, "callspec", None), "params", {}))
    fixtures = set(getattr(item, "fixturenames", ())) - params - _PURE_FIXTURES
    return "component" if fixtures else "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(layer) for layer in LAYERS):
            item.add_marker(_layer(item))


def _data_dir() -> Path:
    return Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared test data. Under CI a missing folder fails the run; locally it skips."""
    d = _data_dir()
    if not (d / "README.md").exists():
        msg = f"test data not found at {d}; set EDGE_RESNET_DATA"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


@pytest.fixture(scope="session")
def samples_dir(data_dir: Path) -> Path:
    return data_dir / "imagenet-samples"


@pytest.fixture(scope="session")
def mobilenet_quant(models_dir: Path) -> Path:
    return models_dir / "mobilenet_v2_1.0_224_quant.tflite"


@pytest.fixture(scope="session")
def labels_1001(models_dir: Path) -> Path:
    return models_dir / "imagenet_labels_1001.txt"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run `edge-resnet ARGS` in a fresh interpreter, as a user would: our environment without the
    variables named in `unset`, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edge_resnet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )
