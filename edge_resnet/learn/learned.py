"""A learned model is a bundle: the backbone's flatbuffer unchanged, the user's labels, and the head.

`head.npz` sits in the bundle's ZIP beside `edge_resnet.json`, whose `head` entry records the
head's own SHA-256 and the backbone's: a head is only ever run on the flatbuffer it was trained
on (a head copied onto another model's file is refused in one line), and a damaged head is
refused like a damaged model. The bundle format is v2, so an older edge-resnet refuses it
rather than publish the user's labels for ImageNet outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..bundle import HEAD_NAME, BundleMeta, ModelFile, write_bundle
from ..errors import ModelError
from .head import Head

REPORT_NAME = "learn_report.json"


def write_learned(base: ModelFile, head: Head, report: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """The backbone `base` with `head` and the user's classes, written atomically to `out`."""
    mf = learned_model(base, head, report, Path(out))
    assert mf.meta is not None
    return write_bundle(mf.flatbuffer, mf.meta, out, mf.files)


def learned_model(base: ModelFile, head: Head, report: dict[str, Any], path: Path) -> ModelFile:
    """The learned bundle in memory (what `write_learned` writes; the daemon swaps it in even when
    the disk is full)."""
    if base.meta is None or base.meta.embedding is None:
        raise ModelError(f"{base.path} has no embedding output to learn on; convert it again with edge-resnet")
    npz = head.to_npz()
    cv = report.get("cross_validation", {})
    meta = dataclasses.replace(
        base.meta,
        labels=list(head.classes),
        label_offset=0,
        output_kind="probabilities",
        head={
            "kind": head.kind,
            "classes": list(head.classes),
            "unknown_below": head.unknown_below,
            "embedding_size": head.size,
            "backbone_sha256": base.sha256,
            "head_sha256": hashlib.sha256(npz).hexdigest(),
            "examples": report.get("examples_per_class", {}),
            "cross_validation": {k: cv[k] for k in ("method", "accuracy") if k in cv},
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    files = {HEAD_NAME: npz, REPORT_NAME: json.dumps(report, indent=1).encode()}
    meta.model_sha256, meta.model_size = base.sha256, len(base.flatbuffer)
    return ModelFile(path, base.flatbuffer, meta, files)


def read_head(mf: ModelFile, embedding_size: int | None) -> Head | None:
    """The head a model carries (None: a plain bundle or a foreign model), checked against its backbone."""
    meta: BundleMeta | None = mf.meta
    if meta is None or meta.head is None:
        return None
    h = meta.head
    data = mf.files.get(HEAD_NAME)
    where = str(mf.path)
    if data is None:
        raise ModelError(f"{where} names a learned head but holds no {HEAD_NAME}; run `edge-resnet learn` again")
    if hashlib.sha256(data).hexdigest() != h.get("head_sha256"):
        raise ModelError(f"{where}: the learned head is corrupt (its SHA-256 does not match); copy the model again")
    if h.get("backbone_sha256") != mf.sha256:
        raise ModelError(
            f"{where}: its head was trained on another model (backbone {str(h.get('backbone_sha256'))[:12]}, this one "
            f"{mf.sha256[:12]}); run `edge-resnet learn` with this model"
        )
    head = Head.from_npz(data, h.get("kind", "logistic"), list(h.get("classes", [])), float(h.get("unknown_below", 0)),
                         where)
    if embedding_size is None:
        raise ModelError(f"{where}: the model has no embedding output for its head; run `edge-resnet learn` again")
    if head.size != embedding_size:
        raise ModelError(
            f"{where}: its head takes {head.size} values but the model's embedding has {embedding_size}; "
            "run `edge-resnet learn` with this model"
        )
    return head
