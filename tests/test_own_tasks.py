"""The "your own classes" tasks (tests/helpers/own_tasks.py, issue 20) and one accuracy check of the head.

The generator tests need only the shared photos. The accuracy test embeds the states task with the
float ONNX MobileNet v2 (onnxruntime, its pooled tensor as an extra output: the converter's own
`find_embedding`) and trains `edge_resnet.learn.fit.train` on 5 examples a state; bench/own_classes.py
measures the whole grid (k = 1..20, 10 splits, INT8 beside float).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers.own_tasks import (
    COARSE,
    STATES,
    coarse_task,
    fingerprint,
    splits,
    states_task,
    write_folders,
)

# what the head must keep on the states task with large objects at k = 5 (a regression fails): with
# night variants (grey, dark, noisy), as `learn` trains, measured 0.996 on these 3 splits (1.0, 0.988,
# 1.0; grey and dark without noise 0.966; no variant 0.935); the 97 % over 10 splits (INT8 and
# float) is bench/own_classes.py's figure, reported in the closing note
STATES_LARGE_K5_FLOOR = 0.975
COARSE_COUNTS = {"dogs": 118, "birds": 59, "reptiles": 35, "insects_spiders": 37, "food": 44}


def test_states_deterministic_for_a_seed(data_dir: Path) -> None:
    a = states_task(data_dir, "small", 3, seed=7)
    b = states_task(data_dir, "small", 3, seed=7)
    c = states_task(data_dir, "small", 3, seed=8)
    assert fingerprint(a) == fingerprint(b)
    assert a.params == b.params
    assert fingerprint(a) != fingerprint(c)


def test_states_shapes_and_balance(data_dir: Path) -> None:
    t = states_task(data_dir, "large", 6, seed=0)
    assert t.classes == list(STATES)
    assert len(t) == 18 == t.labels.size == t.areas.size == len(t.params)
    assert np.bincount(t.labels).tolist() == [6, 6, 6]
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for img in t.images)
    # a class's examples are different realisations, not one image repeated
    empty = [img.astype(np.int16) for img, y in zip(t.images, t.labels, strict=True) if y == 0]
    assert min(float(np.abs(empty[0] - e).mean()) for e in empty[1:]) > 2.0


def test_states_examples_per_class_do_not_depend_on_the_others(data_dir: Path) -> None:
    """One random stream per class: asking for more examples keeps the first ones (the lab can grow a task)."""
    few = states_task(data_dir, "small", 2, seed=3)
    more = states_task(data_dir, "small", 4, seed=3)
    for c in range(len(STATES)):
        first = [img for img, y in zip(more.images, more.labels, strict=True) if y == c][:2]
        mine = [img for img, y in zip(few.images, few.labels, strict=True) if y == c]
        assert all(np.array_equal(a, b) for a, b in zip(first, mine, strict=True))


def test_small_objects_are_really_smaller(data_dir: Path) -> None:
    large = states_task(data_dir, "large", 12, seed=1)
    small = states_task(data_dir, "small", 12, seed=1)
    parcel = STATES.index("parcel")
    big, little = large.areas[large.labels == parcel], small.areas[small.labels == parcel]
    assert big.min() >= 0.38 and big.max() <= 0.70, big  # 40-70 % of the region (less where it overhangs)
    assert little.min() >= 0.075 and little.max() <= 0.15, little  # 8-15 %
    assert little.max() < big.min() / 2
    door_large = large.areas[large.labels != parcel]
    door_small = small.areas[small.labels != parcel]
    assert np.allclose(door_large, door_large[0]) and 0.40 <= door_large[0] <= 0.70
    assert np.allclose(door_small, door_small[0]) and 0.08 <= door_small[0] <= 0.15


def test_states_vary_like_a_camera(data_dir: Path) -> None:
    t = states_task(data_dir, "small", 30, seed=0)
    p = t.params
    assert 0.05 < np.mean([q["grey"] for q in p]) < 0.4  # some grey low-light frames, in every class
    assert all(any(q["grey"] for q, y in zip(p, t.labels, strict=True) if y == c) for c in range(3))

    def colourfulness(img: npt.NDArray[np.uint8]) -> float:  # mean |B - R|: about 0 for a grey frame after JPEG
        return float(np.abs(img[:, :, 0].astype(np.int16) - img[:, :, 2]).mean())

    grey = [colourfulness(img) for img, q in zip(t.images, p, strict=True) if q["grey"]]
    colour = [colourfulness(img) for img, q in zip(t.images, p, strict=True) if not q["grey"]]
    assert max(grey) < 2.0 < min(colour)
    assert min(q["quality"] for q in p) < 50 < max(q["quality"] for q in p)
    assert {s for q in p for s in q["shift"]} <= set(range(-4, 5)) and len({q["shift"] for q in p}) > 5


def test_coarse_counts(samples_dir: Path) -> None:
    t = coarse_task(samples_dir)
    assert t.classes == list(COARSE)
    counts = dict(zip(t.classes, np.bincount(t.labels).tolist(), strict=True))
    assert counts == COARSE_COUNTS
    assert min(counts.values()) > 20 + 10  # k = 20 leaves a test remainder in every category
    assert len(set(t.files)) == len(t) == 293
    assert all(img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 for img in t.images)


def test_splits() -> None:
    y = np.repeat(np.arange(3), [5, 7, 9])
    got = list(splits(y, 2, 4, seed=1))
    assert len(got) == 4
    for tr, te in got:
        assert np.bincount(y[tr]).tolist() == [2, 2, 2]
        assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == y.size
        assert np.all(np.diff(tr) > 0)
    assert len({tuple(tr) for tr, _ in got}) > 1  # random, not one split repeated
    again = list(splits(y, 2, 4, seed=1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, again, strict=True))
    with pytest.raises(ValueError, match="nothing left to test"):
        next(splits(y, 5, 1, seed=0))


def test_write_folders(data_dir: Path, tmp_path: Path) -> None:
    t = states_task(data_dir, "small", 4, seed=2)
    truth = write_folders(t, tmp_path / "examples", tmp_path / "test", k=1, seed=5)
    for c in STATES:
        files = sorted((tmp_path / "examples" / c).iterdir())
        assert len(files) == 1 and files[0].suffix == ".jpg"
    assert len(truth) == 9 == len(list((tmp_path / "test").iterdir()))
    assert sorted(label for _, label in truth) == sorted(list(STATES) * 3)
    for path, label in truth:  # PNG: the pixels read back are exactly the task's
        i = int(path.stem)
        assert t.classes[int(t.labels[i])] == label
        assert np.array_equal(cv2.imread(str(path)), t.images[i])
    again = write_folders(t, tmp_path / "e2", tmp_path / "t2", k=1, seed=5)
    assert [p.name for p, _ in again] == [p.name for p, _ in truth]


def test_head_on_states_large_k5_float(models_dir: Path, data_dir: Path) -> None:
    """CI's guard on the head: float MobileNet v2 embeddings, states with large objects, 5 examples a
    state (and their night variants, as `learn` trains), 3 random splits, mean accuracy on the rest. The bar
    is the floor measured today (the issue's 97 % over 10 splits is bench/own_classes.py's figure)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from edge_resnet.convert import onnx_model
    from edge_resnet.learn.augment import night
    from edge_resnet.learn.fit import train
    from edge_resnet.preprocess import PRESETS, TensorInfo, prepare

    base = onnx.load(str(models_dir / "mobilenet_v2_1.0_224.onnx"))
    emb = onnx_model.find_embedding(base)
    assert emb is not None, onnx_model.trace_embedding(base)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(
        onnx_model.with_embedding_output(base, emb).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    tensor = TensorInfo(name, (1, 3, 224, 224), np.dtype(np.float32))
    task = states_task(data_dir, "large", 60, seed=0)
    def embed(images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = np.stack(
            [
                np.asarray(sess.run([emb.name], {name: prepare(img, PRESETS["inception"], tensor)})[0]).reshape(-1)
                for img in images
            ]
        ).astype(np.float32)
        return out

    x = embed(task.images)
    xv = embed([night(img) for img in task.images])
    accs, kinds = [], []
    for r, (tr, te) in enumerate(splits(task.labels, 5, 3, seed=0)):
        trained = train(x[tr], task.labels[tr], task.classes, seed=r, variants=xv[tr], variant_of=np.arange(tr.size))
        accs.append(float(np.mean(trained.head.predict(x[te]) == task.labels[te])))
        kinds.append(trained.head.kind)
    mean = float(np.mean(accs))
    said = f"accuracy {mean:.3f} over splits {np.round(accs, 3).tolist()} (heads {kinds})"
    print(f"\n[states large, k=5, float] {said}")
    assert mean >= STATES_LARGE_K5_FLOOR, f"the head regressed: {said}"
