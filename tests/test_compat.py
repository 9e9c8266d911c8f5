"""Bundles converted on the workstation load and agree on the device runtimes.

tests/run.sh converts on the workstation (.venv, TensorFlow 2.19), which exports bundles and the
predictions made there into $EDGE_RESNET_ARTIFACTS (see `export_for_device_runtimes`); this module
then runs in the device environments (.venv-device: newest ai-edge-litert + numpy 2; .venv-old:
tflite-runtime 2.14 + numpy < 2) and checks the same bundles give the same answers there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from edge_resnet.classify import Classifier
from edge_resnet.engine import Engine
from edge_resnet.images import load_image

pytestmark = pytest.mark.runtime  # every device environment runs these (tests/run.sh)

EXPECTED = "expected.json"


def export_for_device_runtimes(bundle: Path, images: list[Path]) -> None:
    """Called by the conversion tests: copy a bundle and record this runtime's top-1 for `images`."""
    out = os.environ.get("EDGE_RESNET_ARTIFACTS")
    if not out:
        return
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle, dest / bundle.name)
    clf = Classifier(Engine.load(dest / bundle.name))
    table = json.loads((dest / EXPECTED).read_text()) if (dest / EXPECTED).exists() else {}
    table[bundle.name] = {str(p): clf.classify(load_image(p), k=1).top.class_index for p in images}
    (dest / EXPECTED).write_text(json.dumps(table, indent=1))


def _bundles() -> tuple[Path, dict[str, dict[str, int]]]:
    out = os.environ.get("EDGE_RESNET_ARTIFACTS")
    if importlib.util.find_spec("onnx2tf") is not None:
        pytest.skip("workstation environment: this check runs in the device environments of tests/run.sh")
    if not out or not (Path(out) / EXPECTED).exists():
        msg = "no converted bundles in $EDGE_RESNET_ARTIFACTS; run through tests/run.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(out), json.loads((Path(out) / EXPECTED).read_text())


def test_converted_bundles_load_and_agree_on_this_runtime() -> None:
    root, table = _bundles()
    assert table, "the workstation run exported no bundles"
    for name, expected in table.items():
        engine = Engine.load(root / name)
        clf = Classifier(engine)
        same = sum(clf.classify(load_image(p), k=1).top.class_index == c for p, c in expected.items())
        print(
            f"\n{name} on {engine.runtime.name} {engine.runtime.version} ({engine.delegate}): "
            f"{same}/{len(expected)} top-1 as on the workstation"
        )
        assert same >= 0.9 * len(expected), (name, same, len(expected))
