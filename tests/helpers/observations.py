"""Observations for driving sinks directly: synthetic ones (no model, no data: most sink tests) or
real ImageNet photos classified by the real MobileNet v2 (one test per sink keeps those)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_resnet.classify import Classifier, read_labels
from edge_resnet.engine import Engine
from edge_resnet.images import load_image
from edge_resnet.observation import Frame, Observation, Prediction


@dataclass(frozen=True)
class Classified:
    """A sample photo and what the model says about it."""

    file: str
    truth: str
    image: npt.NDArray[np.uint8]
    top_k: list[Prediction]
    invoke_ms: float


def classify_samples(model: Path, labels: Path, samples_dir: Path, n: int, stride: int = 37) -> list[Classified]:
    """`n` sample photos (every `stride`-th in labels.json) whose top-1 is right and whose labels differ."""
    clf = Classifier(Engine.load(model), read_labels(labels))
    entries = json.loads((samples_dir / "labels.json").read_text())
    out: list[Classified] = []
    seen: set[str] = set()
    for e in entries[::stride] + entries:
        if len(out) == n:
            break
        if e["file"] in {c.file for c in out}:
            continue
        img = load_image(samples_dir / e["file"])
        r = clf.classify(img, k=5)
        if r.top.class_index == e["class_index"] and r.top.label not in seen:
            seen.add(r.top.label)
            out.append(Classified(e["file"], e["name"], img, r.predictions, r.latency_ms))
    return out


SYNTHETIC_LABELS = [
    "tench, Tinca tinca",
    "goldfinch, Carduelis carduelis",
    "king penguin, Aptenodytes patagonica",
    "golden retriever",
    "tabby, tabby cat",
    "zebra",
    "African elephant, Loxodonta africana",
    "airliner",
    "castle",
    "sports car, sport car",
    "banana",
    "pizza, pizza pie",
]


def synthetic_samples(n: int, size: tuple[int, int] = (480, 640)) -> list[Classified]:
    """`n` frames (a coloured scene each, photo-sized) with distinct top-1 labels and made-up top-5s."""
    h, w = size
    out: list[Classified] = []
    for i in range(n):
        label = SYNTHETIC_LABELS[i % len(SYNTHETIC_LABELS)]
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = ((37 * i) % 256, (91 * i + 60) % 256, (53 * i + 120) % 256)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (255 - 20 * i % 256, 200, 40 * i % 256), -1)
        cv2.putText(img, str(i), (20, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 3)
        scores = [0.8 - 0.01 * i, 0.1, 0.05, 0.03, 0.02]
        ks = [(i + j) % len(SYNTHETIC_LABELS) for j in range(5)]
        top_k = [Prediction(SYNTHETIC_LABELS[k], 100 + k, s) for k, s in zip(ks, scores, strict=True)]
        out.append(Classified(f"synthetic-{i}.png", label, img, top_k, 5.0 + i))
    return out


def observation(
    c: Classified, seq: int, changed: bool, model: str = "mobilenet_v2_1.0_224_quant.tflite"
) -> Observation:
    now = time.time()
    frame = Frame(image=c.image, seq=seq, captured_at=now, captured_mono=time.monotonic())
    return Observation(frame, list(c.top_k), c.top_k[0], changed, c.invoke_ms, model, now)


def to_json(cs: list[Classified]) -> str:
    """For handing classifications to a child process (image paths, not pixels)."""
    return json.dumps(
        [{"file": c.file, "truth": c.truth, "top_k": [list(p) for p in c.top_k], "invoke_ms": c.invoke_ms} for c in cs]
    )


def from_json(text: str, samples_dir: Path) -> list[Classified]:
    return [
        Classified(
            d["file"],
            d["truth"],
            load_image(samples_dir / d["file"]),
            [Prediction(str(p[0]), int(p[1]), float(p[2])) for p in d["top_k"]],
            float(d["invoke_ms"]),
        )
        for d in json.loads(text)
    ]
