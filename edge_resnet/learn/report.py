"""What `learn` tells the user every time: how much to trust the head, and what to fix first.

Accuracy is held-out only (cross-validation: no example is scored by a head that trained on it).
Warnings name what usually explains a bad head: too few examples, unbalanced classes, crops too
small for the backbone to see the object, near-duplicates (which also flatter cross-validation),
and examples that a head trained without them gets confidently wrong (likely mislabelled).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .examples import ExampleSet
from .features import normalise
from .fit import Trained

FEW = 5
UNBALANCED = 3.0
SMALL_PX = 80
DUPLICATE_COSINE = 0.995  # embeddings this close are the same picture for the head
CONFIDENTLY_WRONG = 0.6  # held-out probability of the wrong class


def near_duplicates(emb: npt.NDArray[np.float32], limit: int = 20) -> tuple[int, list[tuple[int, int, float]]]:
    """Pairs of examples whose embeddings are nearly identical: how many, and the closest `limit`."""
    z = normalise(emb)
    sims = z @ z.T
    iu = np.triu_indices(len(z), k=1)
    close = np.flatnonzero(sims[iu] >= DUPLICATE_COSINE)
    order = close[np.argsort(-sims[iu][close])][:limit]
    return int(close.size), [(int(iu[0][k]), int(iu[1][k]), float(sims[iu][k])) for k in order]


def build(
    ex: ExampleSet, emb: npt.NDArray[np.float32], trained: Trained, timings_s: dict[str, float]
) -> dict[str, Any]:
    """The whole report as JSON-ready data (`learn --json`; a summary lives in the bundle)."""
    y = ex.labels
    c = len(ex.classes)
    counts = np.bincount(y, minlength=c)
    head = trained.head
    rep: dict[str, Any] = {
        "examples_folder": str(ex.folder),
        "classes": ex.classes,
        "examples_per_class": {n: int(k) for n, k in zip(ex.classes, counts, strict=True)},
        "examples": int(y.size),
        "skipped": [{"file": str(p), "why": why} for p, why in ex.skipped],
        "embedding_size": int(emb.shape[1]),
        "head": {"kind": head.kind, "unknown_below": round(head.unknown_below, 4)},
        "timings_s": {k: round(v, 4) for k, v in {**timings_s, **trained.timings_s}.items()},
    }
    cv = trained.cv
    if cv is None:
        rep["cross_validation"] = {"method": "none", "why": trained.why_no_cv}
    else:
        pred = cv.predicted
        conf = np.zeros((c, c), np.int64)
        np.add.at(conf, (y, pred), 1)
        per_class = {n: round(float(conf[i, i] / max(1, counts[i])), 4) for i, n in enumerate(ex.classes)}
        wrong = np.flatnonzero(pred != y)
        p_wrong = cv.probs[wrong, pred[wrong]]
        sure = wrong[p_wrong >= CONFIDENTLY_WRONG][np.argsort(-p_wrong[p_wrong >= CONFIDENTLY_WRONG])]
        rep["head"]["chosen"] = cv.chosen.name
        rep["cross_validation"] = {
            "method": cv.method,
            "accuracy": round(float(np.mean(pred == y)), 4),
            "per_class_accuracy": per_class,
            "confusion": {"rows_labelled_columns_predicted": ex.classes, "matrix": conf.tolist()},
            "candidates": [
                {"name": k.name, "accuracy": round(k.accuracy, 4), "log_loss": round(k.log_loss, 4)}
                for k in cv.candidates
            ],
        }
        rep["likely_mislabelled"] = [
            {"file": str(ex.examples[i].path), "labelled": ex.classes[y[i]], "predicted": ex.classes[pred[i]],
             "probability": round(float(cv.probs[i, pred[i]]), 3)}
            for i in sure
        ]
    rep["warnings"] = warnings(ex, emb, counts)
    return rep


def warnings(ex: ExampleSet, emb: npt.NDArray[np.float32], counts: npt.NDArray[np.int64]) -> list[str]:
    out: list[str] = []
    few = [f"{n} ({k})" for n, k in zip(ex.classes, counts, strict=True) if k < FEW]
    if few:
        out.append(f"fewer than {FEW} examples in {', '.join(few)}: add more, from different times of day")
    if counts.min() > 0 and counts.max() / counts.min() > UNBALANCED:
        big, small = ex.classes[int(counts.argmax())], ex.classes[int(counts.argmin())]
        out.append(
            f"classes are unbalanced: {big} has {counts.max()} examples, {small} {counts.min()} "
            f"(more than {UNBALANCED:g}x); add examples of the smaller classes"
        )
    small_crops = [e for e in ex.examples if min(e.height, e.width) < SMALL_PX]
    if small_crops:
        out.append(
            f"{len(small_crops)} examples are under {SMALL_PX} px on the short side (e.g. {small_crops[0].path.name}, "
            f"{small_crops[0].width}x{small_crops[0].height}): the model sees them upscaled; crop less tightly "
            "or use a higher camera resolution"
        )
    grey = np.bincount([e.label for e in ex.examples if e.grey], minlength=len(ex.classes))
    if grey.any() and not grey.all():
        without = [n for n, g in zip(ex.classes, grey, strict=True) if not g]
        out.append(
            f"no grey (night-mode) example in {', '.join(without)} while other classes have some: night frames "
            "tend to go to the classes that have them; add a few night frames of every class"
        )
    n_dup, pairs = near_duplicates(emb)
    if n_dup:
        a, b, _ = pairs[0]
        out.append(
            f"{n_dup} pairs of near-duplicate examples (e.g. {ex.examples[a].path.name} and "
            f"{ex.examples[b].path.name}): they add nothing and flatter the accuracy; keep varied ones"
        )
    if ex.skipped:
        out.append(f"{len(ex.skipped)} files skipped ({ex.skipped[0][0].name}: {ex.skipped[0][1]})")
    return out


def summary_lines(rep: dict[str, Any]) -> list[str]:
    """The stderr summary: a few lines a person reads after every `learn`."""
    counts = ", ".join(f"{n} {k}" for n, k in rep["examples_per_class"].items())
    lines = [f"examples: {rep['examples']} in {len(rep['classes'])} classes ({counts})"]
    cv = rep["cross_validation"]
    head = rep["head"]
    if cv["method"] == "none":
        lines.append(f"accuracy: not measured ({cv['why']}); head: nearest class mean")
    else:
        worst = min(cv["per_class_accuracy"].items(), key=lambda kv: kv[1])
        lines.append(
            f"accuracy: {cv['accuracy'] * 100:.1f}% held out ({cv['method']}); weakest class {worst[0]} "
            f"{worst[1] * 100:.0f}%; head: {head['chosen']} (candidates: "
            + ", ".join(f"{k['name']} {k['accuracy'] * 100:.1f}%" for k in cv["candidates"]) + ")"
        )
        conf = cv["confusion"]["matrix"]
        names = cv["confusion"]["rows_labelled_columns_predicted"]
        mixed = [
            f"{names[i]} as {names[j]} {conf[i][j]}x" for i in range(len(names)) for j in range(len(names))
            if i != j and conf[i][j]
        ]
        if mixed:
            lines.append("confusions: " + ", ".join(mixed[:6]))
    if head["unknown_below"] > 0:
        lines.append(f"unknown: when no class reaches {head['unknown_below']:.2f}")
    for m in rep.get("likely_mislabelled", [])[:5]:
        lines.append(f"check label: {m['file']} is labelled {m['labelled']} but looks like {m['predicted']} "
                     f"({m['probability']:.2f})")
    lines += [f"warning: {w}" for w in rep["warnings"]]
    return lines
