"""Teaching from the overlay page: a click labels a region's crop, a background retrain swaps the head in.

The pipeline thread hands every region's classification to `Teacher.seen` (the engine still holds
that crop's embedding): every few frames the crop is kept as a small JPEG with its embedding in a
short ring (what the page shows and a click labels, by frame number), now and then among the
starter candidates (the most distinct of them are proposed first, by embedding), and when the head
was unsure (a small margin between its two best classes, or a label change) in the review queue.
A labelled crop goes to the region's example store (`learn/store.py`: capped, atomic); one
retraining thread fits a head on the store (`learn/fit.py`, about a second) and hands the new
classifier (same engine: no reload, no restart) to the pipeline. The writing routes reach this
through the overlay's guarded POST (auth, same origin, loopback without a password).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .bundle import ModelFile
from .classify import Classifier, Result
from .errors import EdgeResnetError, InputError
from .fleet.headrecord import HeadRecords
from .learn.fit import train
from .learn.head import UNKNOWN
from .learn.learned import learned_model, write_learned
from .learn.store import ExampleStore
from .observation import Frame, Prediction
from .pipeline import Pipeline
from .preprocess import Box

log = logging.getLogger(__name__)

KEEP_EVERY = 5  # frames: one crop in five is kept for the page (2 a second at 10 fps)
RECENT = 16  # crops a region keeps for clicks (the page shows one; a click names its frame)
STARTER_EVERY_S = 2.0
STARTERS = 120  # candidate crops for starter examples
STARTERS_SHOWN = 8
REVIEW = 20  # unsure frames waiting for the user
REVIEW_MARGIN = 0.25  # top-1 minus top-2 probability under this: unsure
REVIEW_EVERY_S = 3.0  # at most one unsure frame a region this often
JPEG_QUALITY = 90

Reply = tuple[int, str, bytes]


@dataclass
class Crop:
    seq: int
    jpeg: bytes
    embedding: npt.NDArray[np.float32]
    label: str
    margin: float
    at: float
    reason: str = ""
    id: int = 0


@dataclass
class _Region:
    store: ExampleStore
    recent: collections.deque[Crop] = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    starters: collections.deque[Crop] = field(default_factory=lambda: collections.deque(maxlen=STARTERS))
    review: collections.deque[Crop] = field(default_factory=lambda: collections.deque(maxlen=REVIEW))
    frames: int = 0
    last_starter: float = 0.0
    last_review: float = 0.0
    message: str = ""
    trained: dict[str, Any] = field(default_factory=dict)


def _json(code: int, doc: dict[str, Any]) -> Reply:
    return code, "application/json", json.dumps(doc).encode()


def _error(code: int, message: str) -> Reply:
    return _json(code, {"ok": False, "message": message})


def most_distinct(emb: npt.NDArray[np.float32], n: int) -> list[int]:
    """Farthest-point sampling on normalised embeddings: the first is the most typical-far one, each
    next the farthest from those picked, so a user labels a varied set first."""
    if len(emb) == 0:
        return []
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    centre = z.mean(axis=0)
    picked = [int(np.argmin(z @ centre))]
    dist = 1.0 - z @ z[picked[0]]
    while len(picked) < min(n, len(z)):
        i = int(np.argmax(dist))
        if dist[i] <= 1e-6:
            break
        picked.append(i)
        dist = np.minimum(dist, 1.0 - z @ z[i])
    return picked


class Teacher:
    """The overlay's writing routes for regions (the HTTP sink's `Writer`) and the pipeline's `RegionTap`."""

    def __init__(self, pipeline: Pipeline, state_dir: Path, *, max_examples: int = 500, max_bytes: int = 20 * 2**20):
        self.pipeline = pipeline
        self.models_dir = state_dir / "models"
        self.heads = HeadRecords(state_dir)  # what it writes on a signed backbone runs under require_signature
        self._lock = threading.Lock()
        self._regions = {
            r.name: _Region(ExampleStore(state_dir / "examples", r.name, max_examples=max_examples,
                                         max_bytes=max_bytes))
            for r in pipeline.regions
        }  # fmt: skip
        self._ids = itertools.count(1)
        self._todo: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """The retraining thread; regions whose store already holds two classes are trained at once."""
        self._thread = threading.Thread(target=self._run, name="teach", daemon=True)
        self._thread.start()
        self.retrain_all()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def retrain_all(self) -> None:
        with self._lock:
            self._todo |= set(self._regions)
        self._wake.set()

    # -- the pipeline thread -----------------------------------------------------------------------
    def seen(self, region: str, frame: Frame, roi: Box, clf: Classifier, res: Result, label: Prediction) -> None:
        r = self._regions.get(region)
        if r is None or clf.engine.embedding is None:
            return
        r.frames += 1
        probs = np.sort(res.probs[: len(clf.labels)])[::-1]
        margin = float(probs[0] - probs[1]) if probs.size > 1 else 1.0
        now = time.monotonic()
        unsure = clf.head is not None and (margin < REVIEW_MARGIN or res.top.label == UNKNOWN)
        keep = r.frames % KEEP_EVERY == 1
        starter = now - r.last_starter >= STARTER_EVERY_S
        review = unsure and now - r.last_review >= REVIEW_EVERY_S
        if not (keep or starter or review):
            return
        x0, y0, x1, y1 = roi
        ok, jpg = cv2.imencode(".jpg", frame.image[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        crop = Crop(frame.seq, jpg.tobytes(), clf.embedding_of_last(), res.top.label, margin, time.time())
        with self._lock:
            if keep:
                r.recent.append(crop)
            if starter:
                r.last_starter = now
                r.starters.append(dataclasses.replace(crop, id=next(self._ids)))
            if review:
                r.last_review = now
                why = "unknown" if res.top.label == UNKNOWN else f"margin {margin:.2f}"
                r.review.append(dataclasses.replace(crop, id=next(self._ids), reason=why))

    # -- routes (HTTP worker threads) --------------------------------------------------------------
    def get(self, path: str, query: dict[str, str]) -> Reply | None:
        parts = path.strip("/").split("/")  # api regions NAME what...
        if parts[:2] != ["api", "regions"]:
            return None
        if len(parts) == 2:
            return _json(200, {"regions": [self._summary(n) for n in self._regions]})
        r = self._regions.get(parts[2])
        if r is None:
            return _error(404, f"no region {parts[2]!r}")
        what = parts[3:]
        with self._lock:
            if what == ["crop.jpg"]:
                return (200, "image/jpeg", r.recent[-1].jpeg) if r.recent else _error(404, "no frame yet")
            if what == ["crop"]:
                if not r.recent:
                    return _error(404, "no frame yet")
                c = r.recent[-1]
                return _json(200, {"seq": c.seq, "label": c.label, "margin": round(c.margin, 3), "image": _data(c)})
            if what == ["review"]:
                return _json(200, {"items": [_item(c) for c in reversed(r.review)]})
            if what == ["starters"]:
                cands = list(r.starters)
        if what == ["starters"]:
            picks = most_distinct(np.stack([c.embedding for c in cands]), STARTERS_SHOWN) if cands else []
            return _json(200, {"items": [_item(cands[i]) for i in picks], "from": len(cands)})
        if what == ["export.zip"]:
            model = self.models_dir / f"{parts[2]}.tflite"
            engine = self._engine(parts[2])
            data = r.store.export_zip(model.read_bytes() if model.is_file() else None,
                                      backbone_sha256=engine.model.sha256 if engine is not None else None)
            return 200, "application/zip", data
        return _error(404, f"unknown route {path}")

    def post(self, path: str, query: dict[str, str], body: bytes, content_type: str) -> Reply:
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "regions"] or len(parts) < 4:
            return _error(404, f"unknown route {path}")
        name, what = parts[2], parts[3:]
        r = self._regions.get(name)
        if r is None:
            return _error(404, f"no region {name!r}")
        try:
            if what == ["examples"]:
                return self._label(name, r, _body_json(body))
            if len(what) == 3 and what[0] == "review" and what[2] == "discard":
                with self._lock:
                    r.review = collections.deque((c for c in r.review if str(c.id) != what[1]), maxlen=REVIEW)
                return _json(200, {"ok": True, "message": "discarded"})
            if what == ["import"]:
                return self._import(name, r, body)
        except EdgeResnetError as e:
            r.message = str(e)
            return _error(400 if isinstance(e, InputError) else 507, str(e))
        return _error(404, f"unknown route {path}")

    def _label(self, name: str, r: _Region, doc: dict[str, Any]) -> Reply:
        cls = str(doc.get("class", ""))
        with self._lock:
            if "review" in doc:
                pool, key = list(r.review), ("id", str(doc["review"]))
            elif "starter" in doc:
                pool, key = list(r.starters), ("id", str(doc["starter"]))
            else:
                pool, key = list(r.recent), ("seq", str(doc.get("seq", r.recent[-1].seq if r.recent else "")))
        crop = next((c for c in reversed(pool) if str(getattr(c, key[0])) == key[1]), None)
        if crop is None:
            return _error(409, "that frame is no longer kept; label the current crop")
        added = r.store.add(cls, crop.jpeg, crop.embedding, None)
        with self._lock:
            if "review" in doc:
                r.review = collections.deque((c for c in r.review if c.id != crop.id), maxlen=REVIEW)
        said = f"frame {crop.seq} stored as {cls!r}"
        if added.note:
            said += f"; {added.note}"
        r.message = said
        self._schedule(name)
        return _json(200, {"ok": True, "message": said, "counts": r.store.counts()})

    def _import(self, name: str, r: _Region, body: bytes) -> Reply:
        engine = self._engine(name)
        imported = r.store.import_zip(body, engine.model.sha256 if engine is not None else None)
        r.message = f"imported {len(imported.ids)} examples ({imported.duplicates} already here)"
        self._schedule(name)
        return _json(200, {"ok": True, "message": r.message, "counts": r.store.counts()})

    def _summary(self, name: str) -> dict[str, Any]:
        r = self._regions[name]
        clf = next((x.classifier for x in self.pipeline.regions if x.name == name), None)
        return {
            "name": name,
            "classes": sorted(set(r.store.classes()) | set(clf.head.classes if clf and clf.head else ())),
            "examples": r.store.counts(),
            "teachable": clf is not None and clf.engine.embedding is not None,
            "head": r.trained,
            "message": r.message,
            "review": len(r.review),
            "training": name in self._todo,
        }

    # -- retraining thread -------------------------------------------------------------------------
    def _schedule(self, name: str) -> None:
        with self._lock:
            self._todo.add(name)
        self._wake.set()

    def _engine(self, name: str) -> Any:
        return next((x.classifier.engine for x in self.pipeline.regions if x.name == name), None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                todo, self._todo = sorted(self._todo), set()
            for name in todo:
                try:
                    self._retrain(name)
                except Exception as e:  # a bad store or a bug: said on the page, classification goes on
                    log.warning("teaching: retraining region %s failed: %s", name, e)
                    self._regions[name].message = f"retraining failed: {e}"

    def _retrain(self, name: str) -> None:
        r = self._regions[name]
        for _ in range(50):  # a reload not yet swapped in: train on the engine that will run
            if self.pipeline.settled or self._stop.is_set():
                break
            time.sleep(0.1)
        region = next((x for x in self.pipeline.regions if x.name == name), None)
        if region is None or region.classifier.engine.embedding is None:
            return
        loaded = r.store.load()
        if len(loaded.classes) < 2:
            r.message = f"{len(loaded.classes)} class so far: label examples of at least two to teach this region"
            return
        t0 = time.perf_counter()
        trained = train(loaded.embeddings, loaded.labels, loaded.classes, variants=loaded.variants,
                        variant_of=loaded.variant_of)  # fmt: skip
        engine = region.classifier.engine
        cv = trained.cv
        counts = np.bincount(loaded.labels, minlength=len(loaded.classes))
        held_out = {"method": "none"} if cv is None else {
            "method": cv.method, "accuracy": round(float(np.mean(cv.predicted == loaded.labels)), 4)}
        report = {
            "examples_per_class": {c: int(n) for c, n in zip(loaded.classes, counts, strict=True)},
            "cross_validation": held_out,
        }  # fmt: skip
        out = self.models_dir / f"{name}.tflite"
        mf: ModelFile = learned_model(engine.model, trained.head, report, out)
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            write_learned(engine.model, trained.head, report, out)
        except OSError as e:  # a full disk: the head still runs, from memory
            log.warning("teaching: cannot write %s (%s); the new head runs but is not saved", out, e.strerror)
        else:
            try:  # on a signed backbone: the saved file may be loaded under require_signature
                self.heads.record(out, engine.model)
            except (OSError, EdgeResnetError) as e:
                log.warning("teaching: %s is saved but not recorded as learned here (%s); under "
                            "require_signature it is refused", out, e)
        clf = Classifier(engine, preprocess=region.classifier.preprocess, bundle=mf)
        self.pipeline.swap_region(name, clf)
        secs = time.perf_counter() - t0
        r.trained = {"kind": trained.head.kind, "classes": list(loaded.classes), **report["cross_validation"],
                     "seconds": round(secs, 3), "examples": int(loaded.labels.size)}  # fmt: skip
        r.message = f"retrained on {loaded.labels.size} examples in {secs:.2f} s ({trained.head.kind})"
        log.info("teaching: region %s %s", name, r.message)


def _data(c: Crop) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(c.jpeg).decode()


def _item(c: Crop) -> dict[str, Any]:
    return {"id": c.id, "seq": c.seq, "label": c.label, "margin": round(c.margin, 3), "reason": c.reason,
            "at": round(c.at, 3), "image": _data(c)}  # fmt: skip


def _body_json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError('the request body must be JSON like {"class": "open", "seq": 123}') from None
    if not isinstance(doc, dict):
        raise InputError('the request body must be a JSON object like {"class": "open", "seq": 123}')
    return doc
