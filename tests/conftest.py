"""Shared fixtures: the test data folder (../shared/data, or $EDGE_RESNET_DATA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the device lab (root filesystems, qemu, systemd-nspawn) runs only through tests/lab/run.sh
collect_ignore = [] if os.environ.get("EDGE_RESNET_LAB_RUN") == "1" else ["lab"]


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


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `edge-resnet ARGS` in a fresh interpreter, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edge_resnet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )
