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
F64 = npt.NDArray[np.float64]

LOO_MAX = 20  # up to this many examples, leave-one-out; above, stratified k-fold
FOLDS = 5
LAMBDAS = (0.1, 0.01, 0.001)  # L2 strength per example (features have unit length)
NCM_SCALES = (5.0, 10.0, 20.0, 40.0)  # softmax temperature of the cosine scores, chosen by held-out log-loss
UNKNOWN_QUANTILE = 0.05  # `unknown` below the 5th percentile of correct held-out winners' probability ...
UNKNOWN_MARGIN = 0.8  # ... times this margin for conditions the examples did not show
MAX_ITERS = 500
TOLERANCE = 1e-5  # FISTA stops when no weight moves by more than this share of the largest
SPAN_ENERGY = 0.999  # the logistic head's basis keeps the directions holding this share of the examples' energy
SPAN_MAX = 256


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
    return fit_logistic_path(z, y, c, (lam,))[0], np.zeros(c, np.float32)


def _span(z: F64) -> tuple[F64, F64, F64]:
    """The examples' coordinates P (n x r) in the top-r right singular directions Vt (r x D) of `z`,
    and the singular values, from an eigendecomposition of the smaller Gram matrix (an SVD of
    800 x 1,280 took 0.6 s on 2 cores; this a tenth of that)."""
    n, d = z.shape
    gram = z @ z.T if n <= d else z.T @ z
    ev, vec = np.linalg.eigh(gram)
    ev, vec = np.maximum(ev[::-1], 0.0), np.ascontiguousarray(vec[:, ::-1])
    s = np.sqrt(ev)
    energy = np.cumsum(ev) / max(float(ev.sum()), 1e-12)
    r = min(SPAN_MAX, int(np.searchsorted(energy, SPAN_ENERGY)) + 1, int(np.count_nonzero(s > 1e-6 * max(s[0], 1e-12))))
    r = max(r, 1)
    if n <= d:
        u = vec[:, :r]
        vt = (z.T @ u / np.maximum(s[:r], 1e-12)).T
        return u * s[:r], vt, s
    v = vec[:, :r]
    return z @ v, v.T, s


def fit_logistic_path(z: Floats, y: Ints, c: int, lams: tuple[float, ...]) -> list[Floats]:
    """`fit_logistic`'s W for each L2 strength in `lams` (strongest first), on one basis: the span of
    the examples from one SVD, cut to the directions holding SPAN_ENERGY of it (at most SPAN_MAX),
    each fit warm-started from the previous one. Hundreds of examples then cost what tens did."""
    n = z.shape[0]
    counts = np.bincount(y, minlength=c).astype(np.float64)
    sample_w = (n / (c * np.maximum(counts, 1.0)))[y][:, None]
    p, vt, s = _span(z.astype(np.float64))
    r = p.shape[1]
    yy = _onehot(y, c).astype(np.float64)
    theta = np.zeros((r, c))
    out: list[Floats] = []
    for lam in sorted(lams, reverse=True):
        # 1/L: softmax curvature <= 1/2, |P|_2 = s_max, sample weights <= their max
        step = 1.0 / (0.5 * float(sample_w.max()) * float(s[0]) ** 2 / n + lam)
        mom, t = theta.copy(), 1.0
        for _ in range(MAX_ITERS):
            g = p.T @ ((_softmax(p @ mom) - yy) * sample_w) / n + lam * mom
            nxt = mom - step * g
            t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            mom = nxt + ((t - 1.0) / t_next) * (nxt - theta)
            done = float(np.abs(nxt - theta).max()) < TOLERANCE * max(1.0, float(np.abs(nxt).max()))
            theta, t = nxt, t_next
            if done:
                break
        out.append((vt.T @ theta).astype(np.float32))
    order = sorted(range(len(lams)), key=lambda i: -lams[i])
    return [out[order.index(i)] for i in range(len(lams))]


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
        out.append(("logistic", "logistic", LAMBDAS))
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
            if kind == "logistic":  # one basis, the strengths warm-started along the path
                for prm, w in zip(params, fit_logistic_path(zt, y_all[train], c, params), strict=True):
                    logits[prm][test] = zs @ w
                continue
            w, b, cols = _fit(kind, 1.0, zt, y_all[train], c, look[train])
            for prm in params:  # NCM: one fit, each temperature a rescale
                logits[prm][test] = class_logits((zs @ w) * prm + b, cols, c)
        best: tuple[Candidate, Floats] | None = None
        for prm in params:
            probs = _softmax(logits[prm].astype(np.float64)).astype(np.float32)
            acc = float(np.mean(probs.argmax(axis=1) == y))
            loss = float(-np.mean(np.log(np.maximum(probs[np.arange(n), y], 1e-12))))
            cand = Candidate(f"{name} l2={prm:g}" if kind == "logistic" else f"{name} t={prm:g}", kind, prm, acc, loss)
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
