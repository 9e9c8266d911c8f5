"""The learned head on embeddings built in the test: fit, cross-validation, unknown, serialisation.

Pure numpy (no model, no files): the same functions `learn`, `classify` and the daemon run.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from edge_resnet.errors import ModelError
from edge_resnet.learn.fit import LOO_MAX, cross_validate, fit_logistic, folds_for, train
from edge_resnet.learn.head import UNKNOWN, Head

pytestmark = pytest.mark.runtime

D = 256


def clusters(
    k: int, c: int = 4, signal: float = 1.0, noise: float = 1.0, seed: int = 0, dims: int = 20
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Non-negative "pooled features": a shared base, a few class-specific dims, per-example noise.
    Returns k training and 40 test examples a class."""
    rng = np.random.default_rng(seed)
    base = np.abs(rng.normal(0, 1, D)) * 3
    sig = np.zeros((c, D))
    for i in range(c):
        sig[i, rng.choice(D, dims, replace=False)] = signal

    def make(n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        y = np.repeat(np.arange(c), n)
        x = np.maximum(base + sig[y] + rng.normal(0, noise, (y.size, D)), 0)
        return x.astype(np.float32), y.astype(np.int64)

    return (*make(k), *make(40))


def names(c: int) -> list[str]:
    return [f"class {i}" for i in range(c)]


def test_one_example_a_class_gives_class_means_and_says_accuracy_cannot_be_measured() -> None:
    x, y, xt, yt = clusters(1, signal=2.0)
    t = train(x, y, names(4))
    assert t.head.kind == "ncm" and t.cv is None
    assert "single example" in t.why_no_cv
    assert t.head.unknown_below == 0.0
    assert np.mean(t.head.predict(xt) == yt) > 0.9


@pytest.mark.parametrize("k", [2, 5, 20])
def test_cross_validated_accuracy_tracks_accuracy_on_new_examples(k: int) -> None:
    x, y, xt, yt = clusters(k, signal=1.5, seed=k)
    t = train(x, y, names(4))
    assert t.cv is not None
    held_out = float(np.mean(t.cv.predicted == y))
    new = float(np.mean(t.head.predict(xt) == yt))
    assert new > 0.8
    assert abs(held_out - new) < 0.25, (held_out, new)


def test_leave_one_out_does_not_push_the_held_out_class_down() -> None:
    """Two examples a class under leave-one-out: the held-out class has one training example left.
    A logistic head with a learned prior scored 0% here while class means scored 90%."""
    x, y, _, _ = clusters(2, signal=1.0, seed=3)
    cv = cross_validate(x, y, 4)
    assert cv.method.startswith("leave-one-out")
    logistic = [c for c in cv.candidates if c.kind == "logistic"]
    ncm = next(c for c in cv.candidates if c.kind == "ncm")
    assert logistic and all(c.accuracy >= ncm.accuracy - 0.25 for c in logistic), cv.candidates


def test_logistic_wins_where_a_nuisance_direction_fools_class_means() -> None:
    """Class means on cosine see every dimension alike; when a large nuisance (lighting, a passing
    car) varies more than the class signal, the logistic head learns to ignore it."""
    rng = np.random.default_rng(1)
    n = 30
    y = np.repeat(np.arange(2), n).astype(np.int64)
    base = np.abs(rng.normal(0, 1, D)) * 2
    cls_dir = np.zeros(D)
    cls_dir[:5] = 0.8
    nuisance = np.zeros(D)
    nuisance[5:105] = 1.0

    def make(yy: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        amp = rng.uniform(0, 3, (yy.size, 1))
        x = base + yy[:, None] * cls_dir + amp * nuisance + rng.normal(0, 0.3, (yy.size, D))
        out: npt.NDArray[np.float32] = np.maximum(x, 0).astype(np.float32)
        return out

    x = make(y)
    t = train(x, y, names(2))
    assert t.cv is not None and t.head.kind == "logistic", t.cv.candidates if t.cv else None
    yt = np.repeat(np.arange(2), 200).astype(np.int64)
    assert np.mean(t.head.predict(make(yt)) == yt) > 0.9


def test_logistic_fit_separates_its_training_examples() -> None:
    x, y, _, _ = clusters(10, signal=1.5)
    from edge_resnet.learn.features import centre_of, prepare

    z = prepare(x, centre_of(x))
    w, b = fit_logistic(z, y, 4, 0.01)
    assert w.shape == (D, 4) and not b.any()
    assert np.mean((z @ w).argmax(axis=1) == y) == 1.0


def test_folds_are_stratified_and_cover_every_example_once() -> None:
    y = np.repeat(np.arange(3), [10, 7, 12]).astype(np.int64)
    folds, method = folds_for(y, seed=0)
    assert y.size > LOO_MAX and method == "stratified 5-fold"
    joined = np.sort(np.concatenate(folds))
    assert np.array_equal(joined, np.arange(y.size))
    for f in folds:
        assert set(np.unique(y[f])) == {0, 1, 2}
    small = np.repeat(np.arange(2), 3).astype(np.int64)
    assert folds_for(small, 0)[1] == "leave-one-out (6 folds)"


def test_every_example_is_used_by_the_final_head() -> None:
    """The final fit uses every example: the class mean head equals the means of all of them."""
    x, y, _, _ = clusters(1, c=3, signal=2.0)
    t = train(x, y, names(3))
    from edge_resnet.learn.features import centre_of

    assert np.allclose(t.head.centre, centre_of(x), atol=1e-6)


def test_unknown_wins_exactly_when_no_class_reaches_the_threshold() -> None:
    w = np.eye(4, 3, dtype=np.float32) * 10
    head = Head("logistic", ("a", "b", "c"), np.zeros(4, np.float32), w, np.zeros(3, np.float32), 0.6)
    assert head.labels == ["a", "b", "c", UNKNOWN]
    sure = head.scores(np.array([1.0, 0, 0, 0]))
    assert int(sure.argmax()) == 0 and sure[3] == np.float32(0.6)
    unsure = head.scores(np.array([1.0, 1.0, 1.0, 0]))  # equal evidence for all three
    assert int(unsure.argmax()) == 3
    off = Head("logistic", ("a", "b", "c"), np.zeros(4, np.float32), w, np.zeros(3, np.float32), 0.0)
    assert int(off.scores(np.array([1.0, 1.0, 1.0, 0])).argmax()) < 3


def test_threshold_from_cross_validation_sits_between_chance_and_certainty() -> None:
    x, y, _, _ = clusters(10, signal=0.6, seed=5)
    t = train(x, y, names(4))
    assert 0.25 + 0.05 - 1e-6 <= t.head.unknown_below <= 0.9
    forced = train(x, y, names(4), unknown_below=0.0)
    assert forced.head.unknown_below == 0.0


def test_head_round_trips_through_its_npz_and_refuses_a_mismatch() -> None:
    x, y, xt, _ = clusters(5)
    head = train(x, y, names(4)).head
    back = Head.from_npz(head.to_npz(), head.kind, list(head.classes), head.unknown_below, "m.tflite")
    assert np.array_equal(back.probabilities(xt), head.probabilities(xt))
    with pytest.raises(ModelError, match="do not match its 3 classes"):
        Head.from_npz(head.to_npz(), head.kind, names(3), 0.0, "m.tflite")
    with pytest.raises(ModelError, match="unreadable"):
        Head.from_npz(b"not an npz", head.kind, names(4), 0.0, "m.tflite")


def test_head_time_per_frame_is_one_small_matrix_product() -> None:
    """Not a timing assertion (bench/own_classes.py prints the time): the work is D x C per frame."""
    x, y, _, _ = clusters(5)
    head = train(x, y, names(4)).head
    assert head.weights.shape == (D, 4) and head.weights.dtype == np.float32
