"""`edge-resnet learn` as a user runs it, and the learned model through classify, info and run.

The backbone is the published MobileNet v2 with its pooled features as a second output
(tests/helpers/embedding_model.py: real weights, seconds to make); the examples are ImageNet
sample photos linked into class folders at test time (coarse categories: dogs, birds, food).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edge_resnet.bundle import BundleMeta, read_model, write_bundle
from edge_resnet.errors import InputError
from edge_resnet.learn.examples import check_class_name
from edge_resnet.prepspec import PRESETS

from .conftest import run_cli
from .helpers.embedding_model import mobilenet_with_embedding, with_output

pytestmark = pytest.mark.runtime

Learned = tuple[Path, str, dict[str, Any]]  # the learned model, learn's stderr, its --json report
GROUPS = {"dog": range(151, 269), "bird": [*range(7, 25), *range(80, 101)], "food": range(924, 970)}


@pytest.fixture(scope="module")
def backbone(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # LiteRT's flatbuffer tools make it (tflite-runtime 2.14 environments have none)
    pytest.importorskip("ai_edge_litert.tools.flatbuffer_utils", reason="needs LiteRT's flatbuffer tools")
    return mobilenet_with_embedding(models_dir, tmp_path_factory.mktemp("backbone") / "mnv2_emb.tflite")


def link_examples(samples_dir: Path, root: Path, per_class: int, offset: int = 0) -> dict[str, list[Path]]:
    """Class folders of symbolic links to the sample photos (never copies of the data)."""
    entries = json.loads((samples_dir / "labels.json").read_text())
    made: dict[str, list[Path]] = {}
    for name, idx in GROUPS.items():
        files = [e["file"] for e in entries if e["class_index"] in idx][offset : offset + per_class]
        (root / name).mkdir(parents=True, exist_ok=True)
        made[name] = []
        for f in files:
            (root / name / f).symlink_to(samples_dir / f)
            made[name].append(root / name / f)
    return made


@pytest.fixture(scope="module")
def learned(backbone: Path, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Learned:
    d = tmp_path_factory.mktemp("learn")
    link_examples(samples_dir, d / "examples", 12)
    (d / "examples" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = d / "mine.tflite"
    r = run_cli("learn", str(d / "examples"), "--model", str(backbone), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    return out, r.stderr, json.loads(r.stdout)


def test_learn_writes_a_model_and_reports_held_out_accuracy(learned: Learned) -> None:
    out, stderr, rep = learned
    print("\n" + stderr)
    assert out.is_file()
    assert rep["examples_per_class"] == {"bird": 12, "dog": 12, "food": 12}
    cv = rep["cross_validation"]
    assert cv["method"] == "stratified 5-fold" and cv["accuracy"] >= 0.8
    assert sum(map(sum, cv["confusion"]["matrix"])) == 36
    assert {c["name"].split()[0] for c in cv["candidates"]} == {"ncm", "ncm-looks", "logistic"}
    assert rep["head"]["chosen"] in [c["name"] for c in cv["candidates"]]
    assert rep["skipped"] and rep["skipped"][0]["file"].endswith("broken.jpg")
    assert any("1 files skipped" in w for w in rep["warnings"])
    lines = stderr.splitlines()
    assert any(ln.startswith("accuracy: ") and "held out" in ln for ln in lines), stderr
    assert sum("skipped" in ln and "broken.jpg" in ln for ln in lines) >= 1


def test_learned_model_is_a_bundle_with_the_same_flatbuffer(learned: Learned, backbone: Path) -> None:
    out, _, _ = learned
    mf, base = read_model(out), read_model(backbone)
    assert mf.flatbuffer == base.flatbuffer
    assert mf.meta is not None and mf.meta.head is not None and mf.meta.labels == ["bird", "dog", "food"]
    assert mf.meta.head["backbone_sha256"] == base.sha256 and "head.npz" in mf.files


def test_classify_info_and_run_take_the_learned_model(
    learned: Learned, samples_dir: Path, tmp_path: Path
) -> None:
    out, _, _ = learned
    test = link_examples(samples_dir, tmp_path / "test", 10, offset=12)
    r = run_cli("classify", str(tmp_path / "test"), "--model", str(out), "--json", "-k", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(rows) == sum(map(len, test.values()))
    right = sum(row["top_k"][0]["label"] == Path(row["path"]).parent.name for row in rows)
    assert all(p["label"] in ("bird", "dog", "food", "unknown") for row in rows for p in row["top_k"])
    assert right >= 0.7 * len(rows), right
    info = run_cli("info", str(out))
    assert info.returncode == 0 and "learned" in info.stdout.lower(), info.stdout
    run = run_cli("run", "--model", str(out), "--source", str(tmp_path / "test" / "dog"), "--max-frames", "5",
                  env={"STATE_DIRECTORY": str(tmp_path / "state")}, timeout=120)
    assert run.returncode == 0, run.stderr
    labels = {json.loads(ln)["label"] for ln in run.stdout.splitlines()}
    assert labels and labels <= {"bird", "dog", "food", "unknown"}, labels


def one_line(r: object) -> str:
    stderr = getattr(r, "stderr", "")
    lines = [ln for ln in stderr.splitlines() if ln.startswith("edge-resnet: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("one class", 5, "has one class (dog)"),
        ("empty class", 5, "has no images"),
        ("line break in a class name", 5, "control character"),
        ("unknown as a class", 5, "reserves"),
        ("only corrupt images in a class", 5, "no readable image"),
        ("no examples folder", 5, "not found"),
        ("out is a folder", 5, "is a folder"),
    ],
)
def test_bad_examples_get_one_line_and_no_model(
    case: str, code: int, message: str, backbone: Path, samples_dir: Path, tmp_path: Path
) -> None:
    ex = tmp_path / "examples"
    link_examples(samples_dir, ex, 3)
    out = tmp_path / "new.tflite"
    if case == "one class":
        for name in ("bird", "food"):
            for f in (ex / name).iterdir():
                f.unlink()
            (ex / name).rmdir()
    elif case == "empty class":
        (ex / "cat").mkdir()
    elif case == "line break in a class name":
        (ex / "door\nopen").mkdir()
        (ex / "door\nopen" / "a.jpg").symlink_to(next((ex / "dog").iterdir()).resolve())
    elif case == "unknown as a class":
        (ex / "dog").rename(ex / "Unknown")
    elif case == "only corrupt images in a class":
        (ex / "cat").mkdir()
        (ex / "cat" / "a.jpg").write_bytes(b"garbage")
    elif case == "no examples folder":
        ex = tmp_path / "nowhere"
    elif case == "out is a folder":
        out = tmp_path
    r = run_cli("learn", str(ex), "--model", str(backbone), "--out", str(out))
    assert r.returncode == code, r.stderr
    assert message in one_line(r)
    assert not (tmp_path / "new.tflite").exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tflite" or p.name.startswith(".tmp-")]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "..\\x", "", "x" * 65, ".hidden", "tab\there"])
def test_class_names_that_could_escape_or_break_labels_are_refused(name: str) -> None:
    with pytest.raises(InputError, match="rename it"):
        check_class_name(name, "examples")


def test_class_names_people_use_are_kept() -> None:
    for name in ("garage door open", "pallet-present", "Blaumeise", "space_3 taken", "été"):
        assert check_class_name(name, "examples") == name


def test_models_without_embeddings_say_how_to_get_one(
    models_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    ex = tmp_path / "examples"
    link_examples(samples_dir, ex, 3)
    foreign = models_dir / "mobilenet_v2_1.0_224_quant.tflite"
    old = tmp_path / "old_bundle.tflite"
    write_bundle(foreign.read_bytes(), BundleMeta(preprocess=PRESETS["inception"], label_offset=1), old)
    for model, what in ((foreign, "a foreign .tflite"), (old, "a bundle from an older edge-resnet")):
        r = run_cli("learn", str(ex), "--model", str(model), "--out", str(tmp_path / "new.tflite"))
        assert r.returncode == 4, r.stderr
        line = one_line(r)
        assert what in line and "edge-resnet convert" in line, line
        assert not (tmp_path / "new.tflite").exists()


def test_a_head_on_another_backbone_is_refused(
    learned: Learned, models_dir: Path, tmp_path: Path
) -> None:
    """The learned model's head and metadata copied onto another model's flatbuffer (what a hand-made
    bundle or a mixed-up import would give): refused by classify and by learn, one line each."""
    out, _, _ = learned
    mf = read_model(out)
    assert mf.meta is not None
    v1 = (models_dir / "mobilenet_v1_0.75_192_quant.tflite").read_bytes()
    other = with_output(v1, "MobilenetV1/Logits/AvgPool_1a/AvgPool")
    mixed = tmp_path / "mixed.tflite"
    write_bundle(other, mf.meta, mixed, mf.files)
    r = run_cli("classify", str(models_dir.parent / "images" / "parrot.jpg"), "--model", str(mixed))
    assert r.returncode == 4 and "trained on another model" in one_line(r)
    ex = tmp_path / "ex"
    (ex / "a").mkdir(parents=True)
    (ex / "b").mkdir()
    os.symlink(models_dir.parent / "images" / "parrot.jpg", ex / "a" / "p.jpg")
    os.symlink(models_dir.parent / "images" / "owl.jpg", ex / "b" / "o.jpg")
    r = run_cli("learn", str(ex), "--model", str(mixed), "--out", str(tmp_path / "new.tflite"))
    assert r.returncode == 4 and "trained on another model" in one_line(r)
    assert not (tmp_path / "new.tflite").exists()


def test_a_damaged_head_is_refused(learned: Learned, tmp_path: Path, models_dir: Path) -> None:
    out, _, _ = learned
    mf = read_model(out)
    assert mf.meta is not None
    files = dict(mf.files)
    npz = bytearray(files["head.npz"])
    npz[len(npz) // 2] ^= 0x10
    files["head.npz"] = bytes(npz)
    bad = tmp_path / "bad.tflite"
    write_bundle(mf.flatbuffer, mf.meta, bad, files)
    r = run_cli("classify", str(models_dir.parent / "images" / "parrot.jpg"), "--model", str(bad))
    assert r.returncode == 4 and "head is corrupt" in one_line(r)
