"""Fast tests of the conversion's pure parts: no TensorFlow conversion runs here."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edge_resnet.convert import bias_correction, calibration, edgetpu, onnx_model, ranges, verify
from edge_resnet.convert.offline import NetworkAccessError, offline
from edge_resnet.convert.quantize import sqnr_db
from edge_resnet.errors import InputError, ModelError, VerificationError
from edge_resnet.preprocess import PRESETS
from tests.helpers.resnet_onnx import make_resnet


def _write_images(folder: Path, n: int, prefix: str = "img", size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(prefix) + n)
    out = []
    for i in range(n):
        p = folder / f"{prefix}{i:03d}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))
        out.append(p)
    return out


# --- ONNX inspection and the folded pixel input ------------------------------------------------


def test_inspect_zoo_and_torchvision_shapes(tmp_path: Path) -> None:
    m = make_resnet(18, 1, input_size=64, num_classes=10)
    info = onnx_model.inspect(m, tmp_path / "r18.onnx")
    assert (info.layout, info.hw, info.num_classes, info.dynamic_batch) == ("NCHW", (64, 64), 10, False)
    tv = make_resnet(18, 1, input_size=64, num_classes=10, style="torchvision")
    assert onnx_model.inspect(tv, tmp_path / "tv.onnx").dynamic_batch is True


def test_non_onnx_and_non_classifier_are_one_line_model_errors(tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x89PNG not a model at all" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        onnx_model.load_classifier(junk)
    with pytest.raises(ModelError, match="not found"):
        onnx_model.load_classifier(tmp_path / "missing.onnx")
    # a 2-D input model (tabular), and an image model with an image-shaped output (segmentation)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    tab = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t", [x], [y]))
    with pytest.raises(ModelError, match="4-D"):
        onnx_model.inspect(tab, "tab.onnx")
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    yi = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    seg = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "s", [xi], [yi]))
    with pytest.raises(ModelError, match=r"\[N, classes\]") as e:
        onnx_model.inspect(seg, "seg.onnx")
    assert "\n" not in str(e.value)


def test_pixel_input_matches_normalised_original(tmp_path: Path) -> None:
    """Folding mean/std into the graph must not change a single output (up to float rounding)."""
    m = make_resnet(18, 2, input_size=32, num_classes=10, style="zoo")
    info = onnx_model.inspect(m, tmp_path / "m.onnx")
    spec = PRESETS["imagenet"]
    folded = onnx_model.with_pixel_input(m, info, spec)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (1, 3, 32, 32)).astype(np.float32)
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    a = ort.InferenceSession(m.SerializeToString()).run(None, {info.input_name: (pixels - mean) / std})[0]
    b = ort.InferenceSession(folded.SerializeToString()).run(None, {onnx_model.PIXEL_INPUT: pixels})[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_dynamic_batch_becomes_one(tmp_path: Path) -> None:
    tv = make_resnet(18, 1, input_size=32, num_classes=10, style="torchvision")
    info = onnx_model.inspect(tv, tmp_path / "tv.onnx")
    folded = onnx_model.with_pixel_input(tv, info, PRESETS["imagenet"])
    dims = folded.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1
    onnx.checker.check_model(folded)


# --- calibration folders ------------------------------------------------------------------------


def test_balanced_order_round_robins_classes() -> None:
    pool = [calibration.Item(Path(f"{g}/{i}.jpg"), g) for g in "abcd" for i in range(10 if g == "a" else 2)]
    order = calibration.balanced_order(pool, seed=3)
    assert sorted(map(str, order)) == sorted(map(str, pool))
    assert {it.group for it in order[:4]} == set("abcd")  # first round: one of each class
    assert calibration.balanced_order(pool, seed=3) == order  # seeded
    assert calibration.balanced_order(pool, seed=4) != order


def test_synset_folders_and_flat_files_give_classes(tmp_path: Path) -> None:
    _write_images(tmp_path / "n01440764", 3)
    _write_images(tmp_path / "n01443537", 2)
    (tmp_path / "notes.txt").write_text("not an image")
    items = calibration.items(tmp_path)
    assert len(items) == 5
    assert {i.group for i in items} == {"n01440764", "n01443537"}


def test_corrupt_images_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_images(tmp_path, 6)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "empty.png").write_bytes(b"")
    pool = calibration.items(tmp_path)
    loaded = calibration.load(pool, 200, (32, 32), PRESETS["imagenet"])
    assert loaded.images.shape == (6, 32, 32, 3)
    assert len(loaded.corrupt) == 2 and loaded.found == 8
    assert "skipped 2 unreadable" in caplog.text
    assert "only 6 usable calibration images" in caplog.text


def test_missing_empty_and_all_corrupt_folders_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        calibration.items(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable calibration images"):
        calibration.load(calibration.items(empty), 10, (32, 32), PRESETS["raw"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"1 found, 1 unreadable"):
        calibration.load(calibration.items(bad), 10, (32, 32), PRESETS["raw"])


def test_labels_json_split_is_disjoint(tmp_path: Path) -> None:
    files = _write_images(tmp_path, 10)
    entries = [{"file": p.name, "class_index": i, "synset": f"n{i:08d}"} for i, p in enumerate(files)]
    (tmp_path / "labels.json").write_text(json.dumps(entries))
    cal = calibration.items(tmp_path, "calib")
    ev = calibration.items(tmp_path, "eval")
    assert [i.class_index for i in cal] == [0, 5]
    assert len(ev) == 8 and not {i.path for i in cal} & {i.path for i in ev}
    assert calibration.resolve_splits(tmp_path, tmp_path, "auto", "auto") == ("calib", "eval")
    assert calibration.resolve_splits(tmp_path, tmp_path / "other", "auto", "auto") == ("all", "all")


def test_shared_samples_split(samples_dir: Path) -> None:
    cal = calibration.items(samples_dir, "calib")
    ev = calibration.items(samples_dir, "eval")
    assert (len(cal), len(ev)) == (200, 800)
    assert all(i.class_index is not None for i in ev)


# --- ranges, bias correction, verification maths ------------------------------------------------


def test_mse_range_clips_outliers_but_not_clean_data() -> None:
    rng = np.random.default_rng(0)
    x = np.abs(rng.laplace(0, 1, 100_000)).astype(np.float32)  # heavy tail, like post-ReLU activations
    lo, hi = ranges.mse_range(x, 0.0, float(x.max()))
    assert lo == 0.0 and hi < 0.99 * x.max()
    assert ranges.quant_mse(x, lo, hi) < ranges.quant_mse(x, 0.0, float(x.max()))
    u = rng.uniform(-1, 1, 50_000).astype(np.float32)
    assert ranges.mse_range(u, float(u.min()), float(u.max())) == (float(u.min()), float(u.max()))


def test_weight_shift_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 3, 3, 5))
    w_q = np.round(w * 10) / 10
    mu = rng.uniform(0, 2, 5)
    x = np.broadcast_to(mu, (3, 3, 5))  # a constant input patch equal to the channel means
    direct = np.array([np.sum((w_q[o] - w[o]) * x) for o in range(4)])
    np.testing.assert_allclose(bias_correction.weight_shift("CONV_2D", w_q, w, mu), direct)
    dw = rng.normal(0, 1, (1, 3, 3, 5))
    dq = np.round(dw * 10) / 10
    np.testing.assert_allclose(
        bias_correction.weight_shift("DEPTHWISE_CONV_2D", dq, dw, mu), ((dq - dw)[0] * x).sum(axis=(0, 1))
    )


def test_sqnr_db() -> None:
    ref = np.ones(1000)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0, abs=1e-6)


def test_top1_gate() -> None:
    gate = verify.Gate(max_top1_drop=1.0, min_agreement=97.0)
    ev = {"images": 100, "top1_agreement_pct": 99.0}
    rep = verify.Report({"evaluation": ev, "gate": gate.judge({**ev, "top1_drop_pts": 1.5})})
    with pytest.raises(VerificationError, match=r"dropped 1\.50 points \(limit 1\.00\)"):
        verify.check(rep)
    verify.check(verify.Report({"gate": gate.judge({**ev, "top1_drop_pts": 0.5})}))
    # ground truth decides, whatever the agreement
    assert gate.judge({"top1_agreement_pct": 50.0, "top1_drop_pts": 0.5})["passed"] is True


def test_agreement_gate_without_ground_truth() -> None:
    """No labels: the gate is INT8's top-1 agreement with FP32, not nothing (issue 22)."""
    gate = verify.Gate(max_top1_drop=1.0, min_agreement=97.0)
    ev = {"images": 100, "top1_agreement_pct": 94.0}
    judged = gate.judge(ev)
    assert judged == {"rule": "top-1 agreement with FP32 (no ground truth)", "top1_agreement_pct": 94.0,
                      "min_agreement_pct": 97.0, "passed": False}  # fmt: skip
    with pytest.raises(VerificationError, match=r"agreement with FP32 is 94\.00 % on 100 images .*--min-agreement"):
        verify.check(verify.Report({"evaluation": ev, "gate": judged}))
    assert gate.judge({"top1_agreement_pct": 97.0})["passed"] is True
    off = verify.Gate(max_top1_drop=None, min_agreement=None)
    assert off.judge(ev)["passed"] is True and None not in off.judge(ev).values()
    from edge_resnet.commands.convert import DEFAULT_MIN_AGREEMENT  # the CLI's copy (it loads without the extra)

    assert DEFAULT_MIN_AGREEMENT == verify.DEFAULT_MIN_AGREEMENT == verify.Gate().min_agreement
    # no evaluation at all (--no-eval) is never a pass
    assert not verify.passes(verify.Report({"gate": verify.unverified_gate("no evaluation set; --no-eval")}))


# --- Edge TPU log parsing, offline guard ----------------------------------------------------------

COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1893 ms.

Input model: r18_int8.tflite
Input size: 11.34MiB
Output model: r18_int8_edgetpu.tflite
Output size: 11.52MiB
On-chip memory used for caching model parameters: 6.91MiB
On-chip memory remaining for caching model parameters: 768.00B
Off-chip memory used for streaming uncached model parameters: 4.33MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 33
Operation log: r18_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU.
Number of operations that will run on Edge TPU: 31
Number of operations that will run on CPU: 2

Operator                       Count      Status

ADD                            8          Mapped to Edge TPU
CONV_2D                        20         Mapped to Edge TPU
QUANTIZE  1  Operation is otherwise supported, but not mapped due to some unspecified limitation
MEAN                           1          Mapped to Edge TPU
"""


def test_parse_compiler_log() -> None:
    r = edgetpu.parse_compiler_log(COMPILER_LOG)
    assert (r["ops_on_tpu"], r["ops_on_cpu"], r["total_ops"]) == (31, 2, 33)
    assert r["on_chip_mib"] == pytest.approx(6.91) and r["off_chip_mib"] == pytest.approx(4.33)
    assert {row["op"]: row["count"] for row in r["op_mapping"]}["CONV_2D"] == 20
    assert "unspecified limitation" in r["op_mapping"][2]["status"]


def test_offline_guard_blocks_inet_but_not_local_sockets() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    acceptor = threading.Thread(target=lambda: srv.accept()[0].close(), daemon=True)
    acceptor.start()
    with offline():
        with pytest.raises(NetworkAccessError, match="offline"):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        with pytest.raises(NetworkAccessError):
            socket.getaddrinfo("github.com", 443)
        a, b = socket.socketpair()  # AF_UNIX still works
        a.close()
        b.close()
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # restored afterwards
    acceptor.join(timeout=5)
    srv.close()
