"""Bundle format, digest check and engine loading on real models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_resnet.bundle import BundleMeta, read_model, write_bundle
from edge_resnet.classify import Classifier, read_labels, resolve_labels, to_probabilities
from edge_resnet.engine import Engine, usable_cores
from edge_resnet.errors import EdgeTpuUnavailable, LabelsError, ModelError
from edge_resnet.images import load_image
from edge_resnet.preprocess import PRESETS

pytestmark = pytest.mark.runtime  # every device environment runs these (tests/run.sh)


@pytest.fixture()
def bundle(tmp_path: Path, mobilenet_quant: Path, labels_1001: Path) -> Path:
    meta = BundleMeta(
        preprocess=PRESETS["inception"], labels=read_labels(labels_1001), label_offset=1, output_kind="probabilities"
    )
    return write_bundle(mobilenet_quant.read_bytes(), meta, tmp_path / "m.tflite")


def test_bundle_round_trip_and_is_a_zip(bundle: Path, mobilenet_quant: Path) -> None:
    mf = read_model(bundle)
    assert mf.flatbuffer == mobilenet_quant.read_bytes()
    assert mf.meta is not None and mf.meta.label_offset == 1 and len(mf.meta.labels) == 1001
    assert mf.meta.preprocess == PRESETS["inception"]
    assert set(zipfile.ZipFile(bundle).namelist()) == {"edge_resnet.json", "labels.txt"}


def test_bundle_classifies_without_labels_or_options(bundle: Path, data_dir: Path) -> None:
    clf = Classifier(Engine.load(bundle))
    res = clf.classify(load_image(data_dir / "images" / "parrot.jpg"))
    assert res.top.label == "macaw" and res.top.class_index == 88


def test_flipped_bit_is_refused(bundle: Path, tmp_path: Path) -> None:
    data = bytearray(bundle.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the flatbuffer: weights, still loadable
    bad = tmp_path / "flipped.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        read_model(bad)


def test_sidecar_digest_for_foreign_models(tmp_path: Path, mobilenet_quant: Path) -> None:
    m = tmp_path / "foreign.tflite"
    shutil.copy(mobilenet_quant, m)
    (tmp_path / "foreign.tflite.sha256").write_text("0" * 64 + "  foreign.tflite\n")
    with pytest.raises(ModelError, match=r"foreign.tflite.sha256"):
        read_model(m)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"hello, I am text\n" * 10, "not a TFLite model"), (None, "not found")],
)
def test_bad_model_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.tflite"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        read_model(p)


@pytest.mark.parametrize("size", [100_000, 1_000_000, 3_000_000])
def test_truncated_model(tmp_path: Path, mobilenet_quant: Path, size: int) -> None:
    """A clean error, never a crash (tflite-runtime 2.14 has no verifier: the engine probes in a child)."""
    p = tmp_path / "t.tflite"
    p.write_bytes(mobilenet_quant.read_bytes()[:size])
    with pytest.raises(ModelError, match="cannot be loaded"):
        Engine.load(p)


def test_invalid_invoke_fails_at_load(models_dir: Path) -> None:
    with pytest.raises(ModelError):
        Engine.load(models_dir / "invalid_invoke.tflite")


def test_xnnpack_is_applied(mobilenet_quant: Path) -> None:
    e = Engine.load(mobilenet_quant, threads=1)
    # tflite-runtime 2.14 does not apply XNNPACK to quantized models by default; ai-edge-litert does.
    assert e.delegate == ("xnnpack" if e.runtime.name == "ai_edge_litert" else "none")
    assert e.input.dtype == np.uint8 and e.input.hw == (224, 224)


class FakeEdgeTpu:
    """Stands in for libedgetpu, which cannot exist here: records calls, then fails or 'succeeds'."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[tuple[str, dict[str, str]]] = []

    def __call__(self, lib: str, options: dict[str, str]) -> Any:
        self.calls.append((lib, options))
        if self.fail:
            raise ValueError(f"Failed to load delegate from {lib}")
        raise AssertionError("a real delegate object cannot be faked; only the failure path is testable here")


def test_edgetpu_model_on_cpu_names_the_edge_tpu(models_dir: Path) -> None:
    with pytest.raises(EdgeTpuUnavailable, match="Edge TPU"):
        Engine.load(models_dir / "mobilenet_v1_0.75_192_quant_edgetpu.tflite", device="cpu")


def test_edgetpu_device_without_runtime(models_dir: Path) -> None:
    fake = FakeEdgeTpu(fail=True)
    with pytest.raises(EdgeTpuUnavailable, match="Edge TPU runtime"):
        Engine.load(
            models_dir / "mobilenet_v1_0.75_192_quant_edgetpu.tflite",
            device="edgetpu",
            delegate_loader=fake,
            edgetpu_device="usb",
        )
    assert fake.calls == [("libedgetpu.so.1", {"device": "usb"})]


def test_auto_falls_back_to_cpu_twin(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    e = Engine.load(
        models_dir / "mobilenet_v1_0.75_192_quant_edgetpu.tflite", device="auto", delegate_loader=FakeEdgeTpu(fail=True)
    )
    assert e.device == "cpu" and e.model.path.name == "mobilenet_v1_0.75_192_quant.tflite"
    assert any("falling back" in r.message for r in caplog.records)


def test_auto_with_cpu_model_prefers_edgetpu_twin_then_falls_back(models_dir: Path) -> None:
    fake = FakeEdgeTpu(fail=True)
    e = Engine.load(models_dir / "mobilenet_v1_0.75_192_quant.tflite", device="auto", delegate_loader=fake)
    assert len(fake.calls) == 1 and e.device == "cpu"


def test_label_resolution() -> None:
    labels, off = resolve_labels(["background"] + [f"c{i}" for i in range(1000)], 1001, None)
    assert off == 1 and labels[1] == "c0"
    labels, off = resolve_labels([f"c{i}" for i in range(1000)], 1001, None)
    assert off == 1 and labels[1] == "c0" and len(labels) == 1001
    assert resolve_labels([f"c{i}" for i in range(10)], 10, None) == ([f"c{i}" for i in range(10)], 0)
    with pytest.raises(LabelsError, match="has 5 labels but the model has 10 outputs"):
        resolve_labels(["a"] * 5, 10, None)


def test_coral_style_labels(tmp_path: Path) -> None:
    p = tmp_path / "l.txt"
    p.write_text("0  background\n2 cat\n1 dog\n")
    assert read_labels(p) == ["background", "dog", "cat"]


def test_quantized_softmax_output_is_never_softmaxed_again(mobilenet_quant: Path) -> None:
    """An unsure frame's uint8 probabilities can round to almost all zeros; they are still probabilities."""
    clf = Classifier(Engine.load(mobilenet_quant))
    assert clf.output_kind == "probabilities"
    raw = np.zeros(1001, np.uint8)
    raw[[5, 9]] = (30, 20)  # sums to 50/256: a per-frame guess would call this logits
    probs = to_probabilities(raw, clf.engine.output, clf.output_kind)
    assert probs[5] == pytest.approx(30 / 256) and probs[0] == 0.0


def test_top_k_ties_do_not_depend_on_k() -> None:
    from edge_resnet.classify import top_k

    probs = np.zeros(1001, np.float32)
    probs[[700, 40, 3]] = (0.4, 0.4, 0.2)
    labels = [str(i) for i in range(1001)]
    assert top_k(probs, 1, labels, 0)[0].class_index == top_k(probs, 5, labels, 0)[0].class_index == 40


def test_default_threads_are_the_usable_cores(mobilenet_quant: Path) -> None:
    """Unset, the runtime would run one thread; the engine asks for every core it may use."""
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == cores
    e = Engine.load(mobilenet_quant)
    assert e.threads == cores and f"threads={cores}" in e.describe()
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from edge_resnet.engine import usable_cores; print(usable_cores())"
    )
    one = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert one.stdout.strip() == "1"  # taskset / CPUAffinity= narrow it


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_bundle_gets_the_umask_mode(tmp_path: Path, mobilenet_quant: Path, umask: int, mode: int) -> None:
    """A model copied with `sudo cp` keeps its mode: 0600 would hide it from the service user."""
    old = os.umask(umask)
    try:
        meta = BundleMeta(preprocess=PRESETS["inception"])
        out = write_bundle(mobilenet_quant.read_bytes(), meta, tmp_path / "m.tflite")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temp file left behind
