"""The `learn` job as one importable function: examples folder + backbone bundle in, learned bundle out.

It sits above `classify` (it embeds through the Classifier), while `edge_resnet/learn/` stays
below it: the head and the learned bundle that `classify` reads, pure numpy.

Nothing is written until every check passed and the head is fitted; the bundle is written
atomically, so a failure at any step leaves no model and an interrupted write no half one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .classify import Classifier
from .devices import Device
from .engine import NO_EMBEDDING_HINT, Engine
from .errors import InputError, ModelError
from .fleet.headrecord import record_learned
from .learn import examples as examples_mod
from .learn import report as report_mod
from .learn.augment import VARIANTS
from .learn.fit import train
from .learn.learned import write_learned

log = logging.getLogger(__name__)


@dataclass
class Learned:
    out: Path
    report: dict[str, Any]


def embed_all(clf: Classifier, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
    """Each example's embedding through the model's own preprocessing (as the daemon will see frames)."""
    return np.stack([clf.embed(img) for img in images]).astype(np.float32)


def check_out(out: Path) -> None:
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the file name of the new model, e.g. {out}/my_classes.tflite")
    if out.suffix != ".tflite":
        raise InputError(f"--out {out} must end in .tflite (the learned model is a TFLite bundle)")
    if not out.parent.exists():
        raise InputError(f"--out {out}: folder {out.parent} does not exist; create it first")


def learn(
    examples_dir: Path,
    model: Path,
    out: Path,
    *,
    device: Device = "cpu",
    threads: int | None = None,
    seed: int = 0,
    unknown_below: float | None = None,
    variants: bool = True,
    state_dir: Path | None = None,
) -> Learned:
    """`variants`: also train on a night (grey, dark) copy of every example (augment.py). `state_dir`: the
    daemon's, where the record that lets `out` run under [trust] require_signature goes (headrecord.py)."""
    check_out(out)
    if unknown_below is not None and not 0.0 <= unknown_below < 1.0:
        raise InputError(f"--unknown-below {unknown_below} must be in 0..1 (0 turns `unknown` off)")
    engine = Engine.load(model, device=device, threads=threads)
    clf = Classifier(engine)  # a learned model as the backbone: its head must belong to it
    if engine.model.meta is None or engine.embedding is None:
        what = "a foreign .tflite" if engine.model.meta is None else "a bundle from an older edge-resnet"
        raise ModelError(f"{model} has no embedding output ({what}); {NO_EMBEDDING_HINT}")
    ex = examples_mod.load(examples_dir)
    for p, why in ex.skipped:
        log.warning("skipped %s: %s", p, why)
    t0 = time.perf_counter()
    emb = embed_all(clf, ex.images)
    made = [fn(img) for img in ex.images for fn in VARIANTS.values()] if variants else []
    var = embed_all(clf, made) if made else None
    of = np.repeat(np.arange(len(ex.images)), len(VARIANTS)) if made else None
    t_embed = time.perf_counter() - t0
    ex.images.clear()
    log.info("embeddings: %d images%s in %.1f s (%s)", len(emb),
             f" and {len(made)} night variants" if made else "", t_embed, engine.describe())
    trained = train(emb, ex.labels, ex.classes, seed=seed, unknown_below=unknown_below, variants=var, variant_of=of)
    rep = report_mod.build(ex, emb, trained, {"embeddings": t_embed})
    rep["model"] = {"backbone": str(model), "backbone_sha256": engine.model.sha256, "out": str(out)}
    write_learned(engine.model, trained.head, rep, out)
    record_learned(out, engine.model, state_dir)  # on a signed backbone: runs under [trust] require_signature here
    return Learned(out, rep)
