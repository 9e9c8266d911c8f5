"""Fitting a head, and choosing it honestly: every candidate is scored on examples it did not see.

Candidates: the nearest class mean (works from one example a class) and a multinomial logistic
regression at a few regularisation strengths (once every class has two or more examples).
Cross-validation (leave-one-out for up to `LOO_MAX` examples, else stratified k-fold) picks one by
held-out accuracy (ties: lower log-loss, then the simpler head); the final head is fitted on every
example. The `unknown` threshold comes from the same held-out predictions.

The logistic regression runs in the span of the examples (n <= D: an SVD gives n coordinates per
example, and an L2-regularised solution lies in that span), so each fit is a few hundred steps of
accelerated gradient descent on an n x n problem: milliseconds for 100 examples of 1,280 values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .features import Floats, centre_of, prepare
from .head import Head, HeadKind, class_logits

Ints = npt.NDArray[np.int64]

LOO_MAX = 20  # up to this many examples, leave-one-out; above, stratified k-fold
FOLDS = 5
LAMBDAS = (0.1, 0.01, 0.001)  # L2 strength per example (features have unit length)
NCM_SCALES = (5.0, 10.0, 20.0, 40.0)  # softmax temperature of the cosine scores, chosen by held-out log-loss
UNKNOWN_QUANTILE = 0.05  # `unknown` below the 5th percentile of correct held-out winners' probability ...
UNKNOWN_MARGIN = 0.8  # ... times this margin for conditions the examples did not show
MAX_ITERS = 500


@dataclass(frozen=True)
class Candidate:
    name: str  # "ncm" or "logistic l2=0.01"
    kind: HeadKind
    param: float  # NCM temperature or L2 strength
    accuracy: float  # held-out, 0..1
    log_loss: float


@dataclass
class CrossValidation:
    """Held-out predictions of the chosen candidate for every example, and how each candidate did."""

    method: str  # "leave-one-out (12 folds)" or "stratified 5-fold"
    candidates: list[Candidate]
    chosen: Candidate
    probs: Floats  # (n, C): held-out class probabilities of the chosen candidate
    folds: int

    @property
    def predicted(self) -> Ints:
        return np.asarray(self.probs.argmax(axis=1), dtype=np.int64)


@dataclass
class Trained:
    head: Head
    cv: CrossValidation | None  # None when a class has a single example: nothing can be held out
    why_no_cv: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)


def _onehot(y: Ints, c: int) -> Floats:
    out = np.zeros((y.size, c), np.float32)
    out[np.arange(y.size), y] = 1.0
    return out


def _softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def class_means(z: Floats, y: Ints, c: int) -> Floats:
    """Unit-length mean of each class's prepared embeddings, as columns (D x C)."""
    means = np.stack([z[y == k].mean(axis=0) for k in range(c)], axis=1)
    out: Floats = (means / np.maximum(np.linalg.norm(means, axis=0, keepdims=True), 1e-12)).astype(np.float32)
    return out


def fit_logistic(z: Floats, y: Ints, c: int, lam: float) -> tuple[Floats, Floats]:
    """Multinomial logistic regression without a bias, class-balanced mean cross-entropy + lam/2 |W|^2,
    by FISTA in the span of the rows of `z`. Returns W (D x C) and b (C,) = 0.

    No bias and balanced classes: the features are centred, and a learned prior would push down a
    class with fewer examples (under leave-one-out, every held-out example's own class), which
    measured 0 % held-out accuracy at two examples a class where the class means got 90 %."""
    n = z.shape[0]
    counts = np.bincount(y, minlength=c).astype(np.float64)
    sample_w = (n / (c * np.maximum(counts, 1.0)))[y][:, None]
    u, s, vt = np.linalg.svd(z.astype(np.float64), full_matrices=False)
    keep = s > 1e-6 * max(float(s[0]), 1e-12)
    p = u[:, keep] * s[keep]  # each example's coordinates in the span of the examples
    yy = _onehot(y, c).astype(np.float64)
    # 1/L: softmax curvature <= 1/2, |P|_2 = s_max, sample weights <= their max
    step = 1.0 / (0.5 * float(sample_w.max()) * float(s[0]) ** 2 / n + lam)
    theta = np.zeros((p.shape[1], c))
    mom, t = theta.copy(), 1.0
    for _ in range(MAX_ITERS):
        g = p.T @ ((_softmax(p @ mom) - yy) * sample_w) / n + lam * mom
        nxt = mom - step * g
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        mom = nxt + ((t - 1.0) / t_next) * (nxt - theta)
        done = float(np.abs(nxt - theta).max()) < 1e-6
        theta, t = nxt, t_next
        if done:
            break
    w = vt[keep].T @ theta
    return w.astype(np.float32), np.zeros(c, np.float32)


def _fit(kind: HeadKind, param: float, z: Floats, y: Ints, c: int, look: Ints) -> tuple[Floats, Floats, Ints]:
    """Weights, bias and each column's class. `look`: 0 for an example, 1.. for a kind of variant;
    `ncm-looks` gives each class one prototype per look it has (its day and its night mean)."""
    if kind == "logistic":
        w, b = fit_logistic(z, y, c, param)
        return w, b, np.arange(c, dtype=np.int64)
    if kind == "ncm":
        return (class_means(z, y, c) * np.float32(param)).astype(np.float32), np.zeros(c, np.float32), np.arange(c)
    protos, cols = [], []
    for k in range(c):
        for lk in np.unique(look[y == k]):
            m = z[(y == k) & (look == lk)].mean(axis=0)
            protos.append(m / max(float(np.linalg.norm(m)), 1e-12))
            cols.append(k)
    w = (np.stack(protos, axis=1) * np.float32(param)).astype(np.float32)
    return w, np.zeros(len(cols), np.float32), np.asarray(cols, np.int64)


def folds_for(y: Ints, seed: int) -> tuple[list[Ints], str]:
    """Held-out example sets: leave-one-out for small sets, else stratified k-fold (k <= the smallest class)."""
    n = y.size
    if n <= LOO_MAX:
        return [np.array([i]) for i in range(n)], f"leave-one-out ({n} folds)"
    k = int(min(FOLDS, np.bincount(y).min()))
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(k)]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        for j, i in enumerate(idx):
            parts[j % k].append(int(i))
    return [np.array(sorted(p), dtype=np.int64) for p in parts], f"stratified {k}-fold"


def _candidates(counts: Ints, looks: int) -> list[tuple[str, HeadKind, tuple[float, ...]]]:
    out: list[tuple[str, HeadKind, tuple[float, ...]]] = [("ncm", "ncm", NCM_SCALES)]
    if looks > 1:
        out.append(("ncm-looks", "ncm-looks", NCM_SCALES))
    if counts.min() >= 2:
        out += [(f"logistic l2={lam:g}", "logistic", (lam,)) for lam in LAMBDAS]
    return out


def _looks(n: int, of: Ints | None) -> Ints:
    """0 for each of the n examples, 1 for each variant after them."""
    return np.concatenate([np.zeros(n, np.int64), np.ones(0 if of is None else of.size, np.int64)])


def cross_validate(
    x: Floats, y: Ints, c: int, seed: int = 0, of: Ints | None = None
) -> CrossValidation:
    """Every candidate's held-out predictions on the same folds; the best is chosen.

    The first n = len(y) rows of `x` are the examples; rows after them are variants made from
    them (`of[j]`: the example row j was made from). A variant trains only when its example does:
    a held-out example's own variant in training would flatter every score."""
    n = y.size
    folds, method = folds_for(y, seed)
    origin = np.concatenate([np.arange(n), of if of is not None else np.zeros(0, np.int64)])
    y_all = y[origin]
    look = _looks(n, of)
    scored: list[tuple[Candidate, Floats]] = []
    for name, kind, params in _candidates(np.bincount(y, minlength=c), int(look.max()) + 1):
        logits = {prm: np.zeros((n, c), np.float32) for prm in params}
        for test in folds:
            train = np.flatnonzero(~np.isin(origin, test))
            if np.unique(y_all[train]).size < c:  # a class absent from training: nothing to learn it from
                for prm in params:
                    logits[prm][test] = 0.0
                continue
            centre = centre_of(x[train])
            zt, zs = prepare(x[train], centre), prepare(x[test], centre)
            base = params[0] if kind == "logistic" else 1.0
            w, b, cols = _fit(kind, base, zt, y_all[train], c, look[train])
            for prm in params:  # NCM: one fit, each temperature a rescale
                scale = prm / base if kind != "logistic" else 1.0
                logits[prm][test] = class_logits((zs @ w) * scale + b, cols, c)
        best: tuple[Candidate, Floats] | None = None
        for prm in params:
            probs = _softmax(logits[prm].astype(np.float64)).astype(np.float32)
            acc = float(np.mean(probs.argmax(axis=1) == y))
            loss = float(-np.mean(np.log(np.maximum(probs[np.arange(n), y], 1e-12))))
            cand = Candidate(name if kind == "logistic" else f"{name} t={prm:g}", kind, prm, acc, loss)
            if best is None or loss < best[0].log_loss:
                best = (cand, probs)
        assert best is not None
        scored.append(best)
    order = {"ncm": 0, "ncm-looks": 1, "logistic": 2}
    chosen, probs = max(scored, key=lambda cp: (cp[0].accuracy, -round(cp[0].log_loss, 3), -order[cp[0].kind]))
    return CrossValidation(method, [c for c, _ in scored], chosen, probs, len(folds))


def unknown_threshold(cv: CrossValidation, y: Ints, c: int) -> float:
    """Under the 5th percentile of the winning probability of correctly classified held-out examples,
    with a margin; never above what a confident two-way split gives, never below chance."""
    right = cv.predicted == y
    if not right.any():
        return 0.0
    winners = cv.probs.max(axis=1)[right]
    t = float(np.quantile(winners, UNKNOWN_QUANTILE)) * UNKNOWN_MARGIN
    return float(np.clip(t, 1.0 / c + 0.05 if c > 1 else 0.0, 0.9))


def train(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    classes: list[str],
    *,
    seed: int = 0,
    unknown_below: float | None = None,
    variants: npt.ArrayLike | None = None,
    variant_of: npt.ArrayLike | None = None,
) -> Trained:
    """Choose a head by cross-validation and fit it on every example. `x`: (n, D) dequantized
    embeddings; `y`: class indices into `classes`; `unknown_below`: None = from cross-validation;
    `variants` (m, D): embeddings of images made from examples (`augment.py`), `variant_of` (m,):
    which example each was made from. Variants train; only examples are scored."""
    import time

    xs = np.asarray(x, np.float32)
    xs = xs.reshape(xs.shape[0], -1)
    ys = np.asarray(y, np.int64)
    of = np.asarray(variant_of if variant_of is not None else [], np.int64)
    xv = np.asarray(variants, np.float32).reshape(of.size, -1) if of.size else np.zeros((0, xs.shape[1]), np.float32)
    c = len(classes)
    if c < 2:
        raise ValueError("a head needs at least two classes")
    counts = np.bincount(ys, minlength=c)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cv: CrossValidation | None = None
    why = ""
    x_all = np.concatenate([xs, xv])
    y_all = np.concatenate([ys, ys[of]])
    if counts.min() >= 2:
        cv = cross_validate(x_all, ys, c, seed, of)
        kind, param = cv.chosen.kind, cv.chosen.param
    else:
        lonely = [classes[i] for i in np.flatnonzero(counts < 2)]
        why = f"{', '.join(lonely[:3])} {'has' if len(lonely) == 1 else 'have'} a single example: nothing to hold out"
        kind, param = "ncm", 20.0
    timings["cross_validation"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    centre = centre_of(x_all)
    w, b, cols = _fit(kind, param, prepare(x_all, centre), y_all, c, _looks(ys.size, of))
    timings["final_fit"] = time.perf_counter() - t1
    if unknown_below is None:
        unknown_below = unknown_threshold(cv, ys, c) if cv is not None else 0.0
    head = Head(kind, tuple(classes), centre, w, b, float(unknown_below), cols)
    return Trained(head, cv, why, timings)
